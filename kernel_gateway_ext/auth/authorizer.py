"""Who may see and act on what: the one place ownership is decided.

Every owned thing (kernels, Skaha jobs, folders) is looked up by the stores without regard to the
caller; the dialects then ask the authorizer. A thing the caller may not see is reported missing
(404 in the dialect's format), never forbidden: its existence is not revealed to other users.
Replace the class (`Gateway.authorizer_class`) for other rules (groups, shared kernels)."""
from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Protocol, TypeVar

from traitlets.config import LoggingConfigurable

from ..errors import GatewayError
from .identity import Identity


class Owned(Protocol):
    @property
    def owner(self) -> str: ...


T = TypeVar("T", bound=Owned)

ACTIONS = ("read", "write", "execute")  # what a caller does to a thing: see it, change or stop it, run in it


class Authorizer(LoggingConfigurable):
    """The default rule: an operator (the gateway token, or an admin key pair) may do anything to
    anything; everyone else only to what they own."""

    def is_authorized(self, identity: Identity, action: str, owner: str) -> bool:
        """May `identity` do `action` to a thing of `owner`?"""
        return identity.admin or identity.user == owner

    def scope(self, identity: Identity) -> str | None:
        """The owner whose things a lookup by name may return (None: anyone's). For stores whose
        names are only unique per owner (folders): the name alone cannot be looked up first."""
        return None if identity.admin else identity.user

    def check(self, identity: Identity, thing: T | None, missing: Callable[[], GatewayError],
              action: str = "read") -> T:
        """`thing` if the caller may do `action` to it; else (or when there is none) `missing()` is raised."""
        if thing is None or not self.is_authorized(identity, action, thing.owner):
            raise missing()
        return thing

    def visible(self, identity: Identity, things: Iterable[T]) -> list[T]:
        """The things the caller may see, in their order."""
        return [t for t in things if self.is_authorized(identity, "read", t.owner)]
