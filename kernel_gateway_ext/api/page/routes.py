"""The web page's routes: the page at the base URL, its assets, its small API and live socket."""
from __future__ import annotations

from typing import Any

from . import handlers as ph, live


def default_handlers(b: str) -> list[tuple[str, type[Any], dict[str, Any]] | tuple[str, type[Any]]]:
    return [
        (rf"{b}", ph.PageHandler),
        (rf"{b}ui/?", ph.PageHandler),
        (rf"{b}ui/static/(.*)", ph.AssetHandler, {"path": ph.STATIC}),
        (rf"{b}ui/api/signin", ph.SignInHandler),
        (rf"{b}ui/api/signout", ph.SignOutHandler),
        (rf"{b}ui/api/me", ph.MeHandler),
        (rf"{b}ui/api/items", ph.ItemsHandler),
        (rf"{b}ui/api/live", live.LiveSocket),
        (rf"{b}ui/api/admin/capacity", ph.CapacityHandler),
        (rf"{b}ui/api/admin/keypairs", ph.KeyPairsHandler),
        (rf"{b}ui/api/admin/keypairs/(?P<access_key>[A-Za-z0-9]{{1,64}})", ph.KeyPairHandler),
    ]
