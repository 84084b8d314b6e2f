"""The pool's size from the recent start rate, within the configured bounds (no Docker)."""
from __future__ import annotations

from kernel_gateway_ext.kernels.pool_sizing import LONG_WINDOW, PoolSizer


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_fixed_bounds_and_no_demand_keep_the_floor() -> None:
    sizer = PoolSizer(Clock())
    assert sizer.target("python3", 2, 2) == 2  # no ceiling above the floor: a fixed size
    assert sizer.target("python3", 1, 10) == 1  # no starts yet


def test_the_rate_raises_the_target_within_the_ceiling_and_decays() -> None:
    clock = Clock()
    sizer = PoolSizer(clock)
    sizer.note_launch("python3", 2.0)
    for _ in range(10):  # one start a second for 10 s
        sizer.note_start("python3")
        clock.now += 1.0
    # ~1 start/s arrives during a 2 s refill, twice over, plus one
    assert sizer.target("python3", 1, 20) == 5
    assert sizer.target("python3", 1, 3) == 3  # the ceiling holds
    assert sizer.target("python3", 8, 20) == 8  # and so does the floor
    clock.now += 60  # the burst leaves the short window; the long one remembers it, less
    assert sizer.target("python3", 1, 20) == 2
    clock.now += LONG_WINDOW
    assert sizer.target("python3", 1, 20) == 1


def test_slower_refills_mean_a_bigger_pool() -> None:
    clock = Clock()
    sizer = PoolSizer(clock)
    for _ in range(5):
        sizer.note_start("bash")
        clock.now += 2.0
    sizer.note_launch("bash", 1.0)
    fast = sizer.target("bash", 0, 50)
    for _ in range(10):
        sizer.note_launch("bash", 6.0)
    assert sizer.target("bash", 0, 50) > fast
