"""A Skaha job request, parsed and checked once from the form the clients send (repeated keys: the
last wins; env as NAME=VALUE items), before anything is created."""
from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from ..errors import BadRequest
from .records import ENV_NAME_RE, KINDS, NAME_RE


@dataclass(frozen=True)
class Offer:
    """What this gateway offers a job: cores, RAM (GB) and GPUs it may ask for, and the defaults."""

    cores: Sequence[int]
    ram: Sequence[int]
    max_gpus: int = 0
    default_cores: int = 1
    default_ram: int = 4


@dataclass(frozen=True)
class JobRequest:
    kind: str
    name: str
    image: str
    cores: int
    ram: int  # GB
    gpus: int = 0
    cmd: str | None = None
    args: str | None = None
    env: dict[str, str] = field(default_factory=dict)


def _int(raw: str | None, what: str, allowed: Sequence[int], default: int) -> int:
    allowed = list(allowed)
    if raw is None or raw == "":
        return default if default in allowed or what == "gpus" else allowed[0]
    try:
        value = int(raw)
    except ValueError as e:
        raise BadRequest(f"{what} must be an integer; allowed: {allowed}") from e
    if value not in allowed and not (what == "gpus" and value == 0):
        raise BadRequest(f"{what}={value} is not offered; allowed: {allowed}")
    return value


def parse_job_request(params: Mapping[str, Sequence[str]], offer: Offer) -> JobRequest:
    def one(key: str, default: str | None = None) -> str | None:
        values = params.get(key)
        return values[-1] if values else default

    kind = (one("type") or "headless").lower()
    if kind not in KINDS:
        raise BadRequest(f"unknown session type {kind!r}; one of {', '.join(KINDS)}")
    if kind not in ("headless", "notebook"):
        raise BadRequest(f"{kind} sessions are not offered by this gateway (no image with a {kind} server); "
                         "headless and notebook sessions are")
    name = one("name") or ""
    if not NAME_RE.match(name):
        raise BadRequest("'name' is required: 1-64 letters, digits, - and _")
    image = one("image") or ""
    if not image:
        raise BadRequest("'image' is required")
    cores = _int(one("cores"), "cores", offer.cores, offer.default_cores)
    ram = _int(one("ram"), "ram", offer.ram, offer.default_ram)
    gpus = _int(one("gpus"), "gpus", list(range(0, offer.max_gpus + 1)), 0)
    env: dict[str, str] = {}
    for item in params.get("env", []):
        key, sep, value = item.partition("=")
        if not sep or not ENV_NAME_RE.match(key):
            raise BadRequest(f"malformed env {item!r}: expected NAME=VALUE")
        env[key] = value
    cmd, args = one("cmd"), one("args")
    if args is not None:
        try:
            shlex.split(args)
        except ValueError as e:
            raise BadRequest(f"malformed args: {e}") from e
    return JobRequest(kind=kind, name=name, image=image, cores=cores, ram=ram, gpus=gpus, cmd=cmd, args=args, env=env)
