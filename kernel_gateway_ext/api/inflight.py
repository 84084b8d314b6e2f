"""The HTTP requests being served, so that a stop lets them finish (within a grace) before it
closes their connections. A request refused with 503 before its answer began is one a balancer
or a client sends again; an answer cut after its headers is lost."""
from __future__ import annotations

import asyncio


class InFlight:
    """A count of the requests between their `prepare` and their `finish` (or their client's
    leaving), and an event for none at all: a stop waits on it, nothing polls."""

    def __init__(self) -> None:
        self.count = 0
        self._none = asyncio.Event()
        self._none.set()

    def begin(self) -> None:
        self.count += 1
        self._none.clear()

    def end(self) -> None:
        self.count -= 1
        if self.count == 0:
            self._none.set()

    async def finished(self, grace: float) -> int:
        """Wait until none is being served, `grace` seconds at most; how many still are."""
        try:
            await asyncio.wait_for(self._none.wait(), grace)
        except asyncio.TimeoutError:
            pass
        return self.count
