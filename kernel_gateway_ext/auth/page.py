"""The web page's sign-in: a key pair, the gateway token or a verified client certificate,
exchanged for a signed cookie.

The cookie holds no secret: "binding|user|admin", signed with Tornado's cookie secret (derived
from the master key) and dated by its signature. It is checked again on every request, so that
taking the credential away ends the page's session too:
- a key pair's cookie names its access key, which must still be active (revocation ends it);
- the gateway token's names a hash of the token of the day (a new token ends it);
- a certificate's must come with a certificate that still names the same user.
Changes also need the cookie's CSRF token (an HMAC of its value) in a header, which only the
gateway's own page can read (GET /ui/api/me, same origin).
"""
from __future__ import annotations

import hashlib
import hmac
from typing import Protocol

from .identity import Identity

PAGE_COOKIE = "kge_page"
CSRF_HEADER = "X-KGE-CSRF"
CERTIFICATE_BINDING = "x509"


class TokenHolder(Protocol):
    """What the cookies need of the authenticator."""

    def binding_of(self, identity: Identity) -> str: ...

    async def identify_binding(self, binding: str, user: str, admin: bool) -> Identity | None: ...

    def derived_key(self, purpose: str) -> bytes: ...


class PageCookies:
    def __init__(self, authenticator: TokenHolder) -> None:
        self.authenticator = authenticator

    def value(self, identity: Identity, by_certificate: bool = False) -> str:
        """What the cookie holds for this caller."""
        binding = CERTIFICATE_BINDING if by_certificate else self.authenticator.binding_of(identity)
        return "|".join((binding, identity.user, "1" if identity.admin else "0"))

    async def identify(self, value: str, certificate: Identity | None) -> Identity | None:
        """The caller a cookie still names, or None (revoked, a new gateway token, no certificate)."""
        parts = value.split("|")
        if len(parts) != 3 or not all(parts):
            return None
        binding, user, admin = parts
        if binding == CERTIFICATE_BINDING:
            return certificate if certificate is not None and certificate.user == user else None
        return await self.authenticator.identify_binding(binding, user, admin == "1")

    def csrf(self, value: str) -> str:
        key = self.authenticator.derived_key("page-csrf")
        return hmac.new(key, value.encode(), hashlib.sha256).hexdigest()[:40]
