from __future__ import annotations

from dataclasses import dataclass


ADMIN_USER = "admin"  # the gateway token's user: reserved, no key pair or certificate may name it


@dataclass(frozen=True)
class Identity:
    """An authenticated caller. Kernels, sessions and folders belong to `user`."""

    user: str
    admin: bool = False
    access_key: str | None = None  # the key pair that authenticated, if any
