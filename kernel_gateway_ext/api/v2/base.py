"""What every v2 handler shares: HMAC auth, problem+json errors, 204s that keep their headers."""
from __future__ import annotations

import json
from typing import Any

from ...auth import Identity, hmac_v2
from ...errors import BadRequest
from ..base import BODY_FIRST, CERTIFICATE, PAGE, SIGNATURE, TOKEN, BaseHandler, BodyFirst

API_VERSION = "v2.20170315"
PROBLEM_BASE = "https://api.backend.ai/probs/"


class V2Handler(BaseHandler):
    auth_schemes = (TOKEN, CERTIFICATE, SIGNATURE)

    def schemes(self) -> tuple[str, ...]:
        # `Authorization: token|Bearer` (a key pair's AK:SK or the gateway's token, as the other dialects
        # accept) or else Backend.AI's own signature, as its clients send.
        # No Authorization at all: the web page's cookie.
        header = self.request.headers.get("Authorization", "").strip().split(" ", 1)[0].lower()
        if header in ("token", "bearer"):
            return (TOKEN, CERTIFICATE)
        return (PAGE, SIGNATURE) if not header else (SIGNATURE,)

    async def identify(self, scheme: str) -> Identity | BodyFirst | None:
        if scheme != SIGNATURE:
            return await super().identify(scheme)
        if getattr(self, "streams_body", False) and not self.request.headers.get(
                "Content-Type", "").lower().startswith("multipart/"):
            return BODY_FIRST  # the signature covers a body still to come: checked by take_body()
        return await hmac_v2.verify(self.request, self.gateway.keypairs, self.gateway.signatures_seen)

    async def authenticate_with_body(self) -> None:
        self.identity = await hmac_v2.verify(self.request, self.gateway.keypairs, self.gateway.signatures_seen)

    def error_response(self, status: int, message: str, kind: str) -> tuple[str, bytes]:
        return "application/problem+json", json.dumps({"type": PROBLEM_BASE + kind, "title": message}).encode()

    def no_content(self) -> None:
        """204 with Content-Type and Content-Length: 0 (the 1.1.x clients read both always)."""
        self.set_status(204)
        self.set_header("Content-Length", "0")
        self.finish()

    def _clear_representation_headers(self) -> None:
        # Tornado drops Content-Type from a 204; these clients need it (see no_content).
        if self.get_status() != 204:
            super()._clear_representation_headers()

    def body_object(self) -> dict[str, Any]:
        ctype = self.request.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if self.request.body and ctype not in ("application/json", "text/json", ""):
            raise BadRequest(f"expected a JSON body, got {ctype}")
        return self.json_body()

    def write_json(self, obj: Any, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(obj))


class RootHandler(V2Handler):
    """GET /v2: the API version, no auth."""

    auth_required = False

    def get(self) -> None:
        self.write_json({"version": API_VERSION})
