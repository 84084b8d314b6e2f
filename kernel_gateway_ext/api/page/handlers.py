"""The web page's own routes: the page and its assets, signing in and out, who I am, and the
operator's view (capacity, pools, key pairs).

Everything else the page does (start, restart, interrupt, delete, renew, logs, folders) goes
through the dialects' own routes with the sign-in cookie: the same pipeline and authorizer as
every client, with the cookie's CSRF header on each change.
"""
from __future__ import annotations

import functools
import html
import os
from typing import Any

from tornado import web

from ...auth.page import CSRF_HEADER, PAGE_COOKIE
from ...errors import BadRequest, Forbidden, Unauthorized
from ..base import CERTIFICATE, PAGE, TOKEN, BaseHandler
from .overview import capacity, items_for

STATIC = os.path.join(os.path.dirname(__file__), "static")
# No inline script or style, nothing from elsewhere, never in a frame.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "font-src 'self'; manifest-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")


@functools.lru_cache(maxsize=4)
def page_html(base_url: str) -> bytes:
    """index.html with the base URL put in (read once: it is part of the package)."""
    with open(os.path.join(STATIC, "index.html"), encoding="utf-8") as f:
        return f.read().replace("__BASE__", html.escape(base_url, quote=True)).encode()


def security_headers(handler: web.RequestHandler) -> None:
    handler.set_header("Content-Security-Policy", CSP)
    handler.set_header("X-Content-Type-Options", "nosniff")
    handler.set_header("Referrer-Policy", "same-origin")
    handler.set_header("X-Frame-Options", "DENY")


class PageHandler(web.RequestHandler):
    """GET / : the page (it signs in, or shows what is mine). It holds nothing of anyone's: its
    script asks the API, with the cookie, once it runs."""

    def get(self) -> None:
        security_headers(self)
        self.set_header("Cache-Control", "no-store")
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.finish(page_html(self.settings["gateway"].base_url))


class AssetHandler(web.StaticFileHandler):
    """The page's script, style and icons: shipped in the package, never from a CDN."""

    def set_extra_headers(self, path: str) -> None:
        security_headers(self)
        self.set_header("Cache-Control", "no-cache")  # revalidated (ETag): an upgrade shows at once


class PageApiHandler(BaseHandler):
    """The page's API: the cookie first (a script's token works too)."""

    auth_schemes = (PAGE, TOKEN, CERTIFICATE)

    def me(self, cookie: str | None = None) -> dict[str, Any]:
        """Who the caller is; with the page's cookie (this request's, or `cookie` just set), its CSRF token."""
        identity, gw = self.identity, self.gateway
        cookie = cookie or (self.page_cookie() if self.auth_scheme == PAGE else None)
        return {
            "user": identity.user, "admin": identity.admin, "access_key": identity.access_key,
            "signed_in_by": PAGE if cookie else self.auth_scheme,
            "csrf": gw.authenticator.page.csrf(cookie) if cookie else None,
            "csrf_header": CSRF_HEADER, "base_url": gw.base_url, "docker": gw.docker_available,
            "cull_idle_timeout": gw.kernel_manager.cull_idle_timeout,
        }


class SignInHandler(PageApiHandler):
    """POST /ui/api/signin {"access_key", "secret_key"} (the gateway token as the secret key with
    no access key), or {"certificate": true} over TLS with a client certificate: sets the cookie."""

    auth_required = False

    async def post(self) -> None:
        self.refuse_cross_site()  # no signing a browser in from another site
        body = self.json_body()
        authenticator = self.gateway.authenticator
        if body.get("certificate"):
            identity = authenticator.identify_certificate(self.peer_certificate())
            if identity is None:
                raise Unauthorized("no client certificate this gateway trusts came with the request")
            value = authenticator.page.value(identity, by_certificate=True)
        else:
            access_key, secret = body.get("access_key") or "", body.get("secret_key") or ""
            if not isinstance(access_key, str) or not isinstance(secret, str) or not secret.strip():
                raise BadRequest("give an access key and its secret key (or the gateway token as the secret key)")
            token = f"{access_key.strip()}:{secret.strip()}" if access_key.strip() else secret.strip()
            found = await authenticator.identify(token)
            if found is None:
                self.gateway.log.warning("page sign-in refused for access key %r", access_key.strip()[:64])
                raise Unauthorized("wrong access key or secret key (or the key pair was revoked)")
            identity, value = found, authenticator.page.value(found)
        self.set_signed_cookie(PAGE_COOKIE, value, expires_days=None, httponly=True, samesite="Strict",
                               secure=self.request.protocol == "https", path=self.gateway.base_url)
        self.gateway.log.info("page sign-in: %s%s", identity.user, " (admin)" if identity.admin else "")
        self.identity = identity
        self.write_json(self.me(value))


class SignOutHandler(PageApiHandler):
    auth_required = False

    def post(self) -> None:
        self.refuse_cross_site()
        self.clear_cookie(PAGE_COOKIE, path=self.gateway.base_url)
        self.set_status(204)
        self.finish()


class MeHandler(PageApiHandler):
    def get(self) -> None:
        self.write_json(self.me())


class ItemsHandler(PageApiHandler):
    """GET /ui/api/items: the list the live socket pushes, once (scripts, and a page without websockets)."""

    async def get(self) -> None:
        others = await self.from_peers(lambda body: body["items"])  # with replicas: theirs too
        items = items_for(self.gateway, self.identity, self.settings["page_hub"].book, series=True)
        self.write_json({"items": items + others})


class AdminHandler(PageApiHandler):
    def prepare_admin(self) -> None:
        if not self.identity.admin:
            raise Forbidden("operators only (an admin key pair or the gateway token)")


class CapacityHandler(AdminHandler):
    async def get(self) -> None:
        self.prepare_admin()
        self.write_json(await capacity(self.gateway))


class KeyPairsHandler(AdminHandler):
    async def get(self) -> None:
        self.prepare_admin()
        self.write_json({"keypairs": [kp.public() for kp in await self.gateway.keypairs.all()]})

    async def post(self) -> None:
        self.prepare_admin()
        body = self.json_body()
        user, admin = body.get("user"), body.get("admin", False)
        if not isinstance(user, str) or not isinstance(admin, bool):
            raise BadRequest("'user' (a string) is required; 'admin' is true or false")
        access_key, secret = await self.gateway.keypairs.add(user.strip(), admin)
        self.gateway.log.info("key pair %s made for %s by %s", access_key, user, self.identity.user)
        self.write_json({"access_key": access_key, "secret_key": secret, "user": user.strip(), "admin": admin}, 201)


class KeyPairHandler(AdminHandler):
    async def delete(self, access_key: str) -> None:
        self.prepare_admin()
        await self.gateway.keypairs.withdraw(access_key)
        self.gateway.log.info("key pair %s revoked by %s", access_key, self.identity.user)
        await self.settings["page_hub"].recheck_all()  # its pages here sign out now
        self.set_status(204)
        self.finish()
