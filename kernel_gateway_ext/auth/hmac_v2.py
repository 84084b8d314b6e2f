"""Backend.AI API v2 request signatures (HMAC-SHA256), for both the BackendAI and Sorna schemes.

    string to sign = METHOD \\n PATH?QUERY \\n DATE-HEADER \\n host:HOST \\n content-type:MIME
                     \\n x-backendai-version:VER (x-sorna-version for Sorna) \\n hex(sha256(body))
    key = HMAC(HMAC(secret, YYYYMMDD of the date), host); signature = HMAC(key, string).hex

A signature is accepted once: within the clock window a captured request cannot be sent again
(the real clients date each request to the microsecond, so no two of theirs sign alike). What the
clients leave unsigned stays unsigned: multipart bodies (uploads) hash as empty.
"""
from __future__ import annotations

import hashlib
import hmac
import re
import time
from collections import OrderedDict
from datetime import datetime, timedelta, timezone
from email.utils import parsedate_to_datetime

from tornado.httputil import HTTPServerRequest

from ..errors import Unauthorized
from .identity import Identity
from .keypairs import KeyPairs

AUTH_RE = re.compile(
    r"^(?P<scheme>BackendAI|Sorna)\s+signMethod=HMAC-(?P<hash>[A-Za-z0-9]+),\s*"
    r"credential=(?P<ak>[A-Za-z0-9_-]{1,64}):(?P<sig>[0-9a-fA-F]{1,256})$"
)
MAX_SKEW = timedelta(minutes=15)


class SeenSignatures:
    """Signatures accepted within the clock window, to refuse a replay. Bounded: past `limit`
    entries the oldest go (a flood of valid requests weakens only the oldest entries)."""

    def __init__(self, limit: int = 200_000) -> None:
        self.limit = limit
        self._until: OrderedDict[str, float] = OrderedDict()  # signature -> when its date leaves the window

    def first_time(self, sig: str, date: datetime) -> bool:
        now = time.time()
        while self._until and (next(iter(self._until.values())) < now or len(self._until) >= self.limit):
            self._until.popitem(last=False)
        if sig in self._until:
            return False
        self._until[sig] = (date + MAX_SKEW).timestamp()
        return True


def parse_date(value: str) -> datetime:
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        try:
            dt = parsedate_to_datetime(value)
        except (TypeError, ValueError) as e:
            raise Unauthorized("the Date header is not a date") from e
    if dt.tzinfo is None:
        raise Unauthorized("the Date header needs a time zone")
    return dt


def signature(secret: str, method: str, path: str, date_header: str, date: datetime, host: str,
              content_type: str, version_label: str, version: str, body: bytes) -> str:
    body_hash = hashlib.sha256(b"" if content_type.startswith("multipart/") else body).hexdigest()
    text = (f"{method.upper()}\n{path}\n{date_header}\nhost:{host}\ncontent-type:{content_type}\n"
            f"{version_label}:{version}\n{body_hash}")
    key = hmac.new(secret.encode(), date.strftime("%Y%m%d").encode(), hashlib.sha256).digest()
    key = hmac.new(key, host.encode(), hashlib.sha256).digest()
    return hmac.new(key, text.encode(), hashlib.sha256).hexdigest()


async def verify(request: HTTPServerRequest, keypairs: KeyPairs, seen: SeenSignatures | None = None,
                 now: datetime | None = None) -> Identity:
    """The identity of a signed request, or Unauthorized (never saying which part was wrong)."""
    m = AUTH_RE.match(request.headers.get("Authorization", "").strip())
    if not m or m["hash"].lower() != "sha256":
        raise Unauthorized("missing or malformed BackendAI signature")
    if "X-Sorna-Version" in request.headers and "X-BackendAI-Version" not in request.headers:
        label, version = "x-sorna-version", request.headers["X-Sorna-Version"]
    else:
        label, version = "x-backendai-version", request.headers.get("X-BackendAI-Version", "")
    date_header = request.headers.get("Date") or request.headers.get("X-BackendAI-Date", "")
    date = parse_date(date_header)
    if abs((now or datetime.now(timezone.utc)) - date) > MAX_SKEW:
        raise Unauthorized("the request date is too far from the server's clock")
    found = await keypairs.lookup(m["ak"])
    if found is None:
        raise Unauthorized("invalid credentials")
    keypair, secret = found
    content_type = request.headers.get("Content-Type", "application/octet-stream").split(";")[0].strip().lower()
    expected = signature(secret, request.method or "GET", request.uri or "/", date_header, date,
                         request.headers.get("Host", ""), content_type, label, version, request.body or b"")
    if not hmac.compare_digest(expected, m["sig"].lower()):
        raise Unauthorized("invalid credentials")
    if seen is not None and not seen.first_time(expected, date):
        raise Unauthorized("this signed request was already used: sign each request anew")
    return Identity(keypair.user, admin=keypair.admin, access_key=keypair.access_key)
