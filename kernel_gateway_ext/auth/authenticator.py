"""Token authentication shared by the dialects."""
from __future__ import annotations

import hmac
import secrets
from typing import Any

from tornado.httputil import HTTPServerRequest
from traitlets import Instance, Unicode, default

from ..config import EnvConfigurable, env
from .identity import ADMIN_USER, Identity



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

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.generated_token = False
        if not self.auth_token:
            self.auth_token = secrets.token_urlsafe(32)
            self.generated_token = True

    def identify_certificate(self, cert: dict[str, Any] | None) -> Identity | None:
        """A verified X.509 client certificate: its subject's CN is the user."""
        if not cert:
            return None
        for rdn in cert.get("subject", ()):
            for key, value in rdn:
                if key == "commonName" and value:
                    # The gateway token's user name is reserved: a certificate naming it would own
                    # the operator's kernels.
                    return Identity(str(value)) if value != ADMIN_USER else None
        return None

    async def identify(self, token: str | None) -> Identity | None:
        if not token:
            return None
        if hmac.compare_digest(token.encode(), self.auth_token.encode()):
            return Identity(ADMIN_USER, admin=True)
        if self.keypairs is not None:
            return await self.keypairs.identify_token(token)
        return None
