"""A kernel start's request, typed: built and checked once by the kernel store (for every dialect)
and carried to the provisioner as one keyword of jupyter_client's start_kernel (kept for restarts).

The environment is filtered here, once: only KERNEL_* names and the operator's allow-list pass from
a request; what a REST caller explicitly set for its kernel (v2 `envs`) is kept apart, as given. The
gateway's own environment never reaches a kernel: the provisioner uses nothing else.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..containers.limits import KernelLimits
from ..containers.spec import BindMount

LAUNCH_REQUEST = "kge_launch"  # the start_kernel keyword that carries it


def filter_env(requested: Mapping[str, Any] | None, allowlist: Iterable[str]) -> dict[str, str]:
    """The names a request may pass into its kernel: KERNEL_* and the allow-list."""
    allowed = set(allowlist)
    return {k: str(v) for k, v in (requested or {}).items() if k.startswith("KERNEL_") or k in allowed}


@dataclass(frozen=True)
class LaunchRequest:
    owner: str
    kernel_name: str
    env: dict[str, str] = field(default_factory=dict)  # from the request, filtered
    user_env: dict[str, str] = field(default_factory=dict)  # a REST caller's own, as given
    limits: KernelLimits = field(default_factory=KernelLimits)
    mounts: tuple[BindMount, ...] = ()
    labels: dict[str, str] = field(default_factory=dict)

    @classmethod
    def build(cls, *, owner: str, kernel_name: str, requested_env: Mapping[str, Any] | None = None,
              user_env: Mapping[str, str] | None = None, allowlist: Iterable[str] = (),
              limits: KernelLimits | None = None, mounts: Iterable[BindMount] | None = None,
              labels: Mapping[str, str] | None = None) -> "LaunchRequest":
        return cls(owner=owner, kernel_name=kernel_name, env=filter_env(requested_env, allowlist),
                   user_env={str(k): str(v) for k, v in (user_env or {}).items()}, limits=limits or KernelLimits(),
                   mounts=tuple(mounts or ()), labels=dict(labels or {}))

    @property
    def all_env(self) -> dict[str, str]:
        return {**self.env, **self.user_env}

    @property
    def is_plain(self) -> bool:
        """Default limits, no mounts, no labels: what a pooled kernel already is."""
        return not self.mounts and not self.labels and self.limits == KernelLimits()
