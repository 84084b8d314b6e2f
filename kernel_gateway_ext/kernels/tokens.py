"""REST (v2) callers name their kernel by a client token of their own and a language: the same token
gets the same kernel (get-or-create), serialized per token so two concurrent creates make one kernel."""
from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from ..errors import BadRequest, KernelSpecNotFound
from .kernel import GatewayKernel


class TokenHost(Protocol):
    """What client tokens need of the kernel store."""

    kernel_spec_manager: Any
    lang_aliases: dict[str, str]

    def with_token(self, client_token: str) -> list[GatewayKernel]: ...

    @property
    def start(self) -> Callable[..., Awaitable[GatewayKernel]]: ...  # GatewayKernelManager.start


class ClientTokens:
    def __init__(self, host: TokenHost) -> None:
        self.host = host
        # (owner, token) -> [lock, users]: get-or-create is serialized per token, and an entry is
        # dropped when nobody holds or awaits it (tokens are often random: unbounded otherwise).
        self.locks: dict[tuple[str, str], list[Any]] = {}

    def resolve_lang(self, lang: str) -> str:
        """A REST caller's language or image name -> a runnable kernelspec name."""
        runnable = self.host.kernel_spec_manager.runnable_specs()
        if lang in runnable:
            return lang
        target = self.host.lang_aliases.get(lang)
        if target in runnable:
            return str(target)
        raise KernelSpecNotFound(f"unknown language or image {lang!r}; known: {', '.join(sorted(runnable))}")

    async def get_or_start(self, *, owner: str, client_token: str, lang: str, **start_kw: Any) -> tuple[GatewayKernel, bool]:
        """The owner's kernel for `client_token` (created False), or a new one (created True)."""
        key = (owner, client_token)
        entry = self.locks.setdefault(key, [asyncio.Lock(), 0])
        entry[1] += 1
        try:
            async with entry[0]:
                for km in self.host.with_token(client_token):
                    if km.owner == owner:
                        if km.lang != lang:
                            raise BadRequest(f"session token {client_token!r} is in use with another language ({km.lang})")
                        return km, False
                kernel_name = self.resolve_lang(lang)
                km = await self.host.start(owner=owner, kernel_name=kernel_name, lang=lang, client_token=client_token,
                                           **start_kw)
                return km, True
        finally:
            entry[1] -= 1
            if entry[1] == 0:
                self.locks.pop(key, None)
