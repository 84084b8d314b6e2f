"""Token authentication shared by the dialects."""
from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import Any

from tornado.httputil import HTTPServerRequest
from traitlets import Float, Instance, List, Unicode, default

from ..config import EnvConfigurable, env
from .identity import ADMIN_USER, Identity
from .keypairs import USER_RE
from .page import PageCookies

DN = tuple  # a distinguished name as ssl decodes it: ((("commonName", "x"),), …)


def common_name(dn: DN) -> str | None:
    for rdn in dn or ():
        for key, value in rdn:
            if key == "commonName" and value:
                return str(value)
    return None



def extract_token(request: HTTPServerRequest) -> str | None:
    """`Authorization: token T`, `Authorization: Bearer T` or `?token=T`."""
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() in ("token", "bearer") and value.strip():
        return value.strip()
    values = request.query_arguments.get("token")
    if values:
        return values[-1].decode(errors="replace")
    return None


class Authenticator(EnvConfigurable):
    """Maps a token to an identity: the gateway's own token is the admin identity; a key pair's
    "ACCESS_KEY:SECRET_KEY" is that key pair's user (the same owner as its v2 requests)."""

    keypairs = Instance("kernel_gateway_ext.auth.keypairs.KeyPairs", allow_none=True)

    auth_token = env(
        Unicode(help="Token clients must present. Empty: one is generated at start and printed."),
        "KGE_AUTH_TOKEN",
    )

    @default("auth_token")
    def _generate_token(self) -> str:
        return ""

    client_cert_issuers = env(
        List(Unicode(), help="Common names of the CAs whose client certificates name users (by their CN). "
                             "Default: the one CA of the client CA bundle; a bundle of several CAs must name "
                             "them, or one CA's user could be another's namesake."),
        "KGE_CLIENT_CERT_ISSUERS",
    )

    page_session_hours = env(
        Float(12.0, help="Hours a sign-in on the web page lasts (its cookie); revoking the key pair ends it sooner."),
        "KGE_PAGE_SESSION_HOURS",
    )

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.generated_token = False
        if not self.auth_token:
            self.auth_token = secrets.token_urlsafe(32)
            self.generated_token = True
        self.trusted_issuers: set[DN] = set()
        self.page = PageCookies(self)  # the web page's sign-in cookies

    def token_binding(self) -> str:
        """A hash that ties a browser's cookie to the gateway token of the day: a new token ends it."""
        return hmac.new(self.auth_token.encode(), b"kge-proxy-cookie", hashlib.sha256).hexdigest()[:32]

    def token_identity(self) -> Identity:
        return Identity(ADMIN_USER, admin=True)

    def binding_of(self, identity: Identity) -> str:
        """What a browser's cookie names for `identity` so that it can be checked again: its key
        pair, or the gateway token of the day ('' for neither: no cookie can stand for it)."""
        return identity.access_key or (self.token_binding() if identity.admin else "")

    async def identify_binding(self, binding: str, user: str, admin: bool) -> Identity | None:
        """Who a cookie's binding still names: the gateway token's user while the token is the
        same, a key pair's user while it is active and still that user's; else None."""
        if admin and hmac.compare_digest(binding, self.token_binding()):
            return self.token_identity()
        found = await self.keypairs.lookup(binding) if self.keypairs is not None and binding else None
        if found is None or found[0].user != user:
            return None
        kp = found[0]
        return Identity(kp.user, admin=kp.admin, access_key=kp.access_key)

    def derived_key(self, purpose: str) -> bytes:
        """A key for `purpose` from the master key (or, without key pairs, the gateway token)."""
        if self.keypairs is not None:
            return self.keypairs.derive(purpose, "kge").encode()
        return hmac.new(self.auth_token.encode(), purpose.encode(), hashlib.sha256).digest()

    def trust_issuers(self, ca_subjects: list[DN]) -> None:
        """Which of the verified chain's CAs may issue identities (from the loaded CA bundle)."""
        wanted = set(self.client_cert_issuers)
        if not wanted:
            if len(ca_subjects) != 1:
                names = ", ".join(common_name(s) or "?" for s in ca_subjects)
                raise SystemExit(f"the client CA bundle holds {len(ca_subjects)} CAs ({names}): name the ones whose "
                                 "certificates identify users with --Authenticator.client_cert_issuers NAME (once per CA) "
                                 "(KGE_CLIENT_CERT_ISSUERS)")
            wanted = {common_name(ca_subjects[0]) or ""}
        self.trusted_issuers = {s for s in ca_subjects if common_name(s) in wanted}
        missing = wanted - {common_name(s) for s in self.trusted_issuers}
        if missing:
            raise SystemExit(f"client_cert_issuers names CAs that are not in the client CA bundle: {sorted(missing)}")

    def identify_certificate(self, cert: dict[str, Any] | None) -> Identity | None:
        """A verified X.509 client certificate issued directly by a trusted issuer: its subject's
        CN is the user, if it is a valid user name."""
        if not cert or tuple(cert.get("issuer", ())) not in self.trusted_issuers:
            return None
        user = common_name(tuple(cert.get("subject", ())))
        # The gateway token's user name is reserved: a certificate naming it would own the
        # operator's kernels.
        if user is None or user == ADMIN_USER or not USER_RE.match(user):
            return None
        return Identity(user)

    async def identify(self, token: str | None) -> Identity | None:
        if not token:
            return None
        if hmac.compare_digest(token.encode(), self.auth_token.encode()):
            return self.token_identity()
        if self.keypairs is not None:
            return await self.keypairs.identify_token(token)
        return None
