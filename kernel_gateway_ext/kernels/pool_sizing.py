"""How many ready kernels a pool keeps: from the recent start rate and how long a refill takes,
within the operator's bounds (pool_sizes is the floor, pool_max_sizes the ceiling).

A start served warm must find a kernel there: while refills are under way, starts keep arriving at
the recent rate, so the pool holds what arrives during one refill, twice over for bursts, plus one.
When the starts stop, the rate falls out of its windows and the pool shrinks back to its floor
(the pool trims a while after it is over its target). Pure arithmetic: unit-tested without Docker.
"""
from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable

SHORT_WINDOW = 10.0  # s: a burst shows at once ...
LONG_WINDOW = 120.0  # s: ... and a steady rate is remembered for a while
HEADROOM = 2.0  # starts arriving during one refill, times this
FIRST_LAUNCH_GUESS = 2.0  # s a refill takes before one has been measured
MAX_REMEMBERED = 1024  # starts remembered per kernelspec (bounded)


class PoolSizer:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._starts: dict[str, deque[float]] = {}
        self._launch_s: dict[str, float] = {}

    def note_start(self, name: str) -> None:
        """A start asked for a kernel of `name` (served warm or not: it is demand either way)."""
        self._starts.setdefault(name, deque(maxlen=MAX_REMEMBERED)).append(self.clock())

    def note_launch(self, name: str, seconds: float) -> None:
        """A pooled kernel of `name` took `seconds` to be ready (a moving average)."""
        old = self._launch_s.get(name)
        self._launch_s[name] = seconds if old is None else 0.7 * old + 0.3 * seconds

    def launch_seconds(self, name: str) -> float:
        return self._launch_s.get(name, FIRST_LAUNCH_GUESS)

    def rate(self, name: str) -> float:
        """Starts per second lately: the higher of the short and the long window's."""
        starts = self._starts.get(name)
        if not starts:
            return 0.0
        now = self.clock()
        while starts and starts[0] < now - LONG_WINDOW:
            starts.popleft()
        short = sum(1 for t in starts if t >= now - SHORT_WINDOW)
        return max(short / SHORT_WINDOW, len(starts) / LONG_WINDOW)

    def target(self, name: str, floor: int, ceiling: int) -> int:
        """Ready kernels to keep for `name`, between `floor` and `ceiling`."""
        if ceiling <= floor:
            return floor
        rate = self.rate(name)
        if rate <= 0:
            return floor
        want = math.ceil(rate * self.launch_seconds(name) * HEADROOM) + 1
        return max(floor, min(ceiling, want))
