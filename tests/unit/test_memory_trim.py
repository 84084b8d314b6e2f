"""MemoryTrim: one trim per burst of changes, after its delay, off the loop; and the trim really
gives a fragmented heap's free pages back (glibc's malloc_trim, measured in this process's RSS)."""
from __future__ import annotations

import asyncio
import logging
import threading

import pytest

from kernel_gateway_ext.memtrim import MemoryTrim, _libc_trim

LOG = logging.getLogger("test")
needs_glibc = pytest.mark.skipif(_libc_trim() is None, reason="no glibc malloc_trim on this system")


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        import os
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@needs_glibc
async def test_changes_in_a_burst_make_one_trim_after_the_delay() -> None:
    trim = MemoryTrim(0.05, LOG)
    for _ in range(100):
        trim.soon()
    assert trim.count == 0  # not at once: the burst may go on
    await asyncio.sleep(0.3)
    assert trim.count == 1
    trim.soon()
    await asyncio.sleep(0.3)
    assert trim.count == 2  # a later change, a later trim
    await asyncio.sleep(0.2)
    assert trim.count == 2  # and nothing without one: it never runs on a clock


async def test_delay_zero_turns_it_off() -> None:
    trim = MemoryTrim(0, LOG)
    assert not trim.enabled
    trim.soon()
    await asyncio.sleep(0.05)
    assert trim.count == 0


@needs_glibc
async def test_it_waits_for_a_quiet_moment_but_not_forever() -> None:
    trim = MemoryTrim(0.1, LOG)
    for _ in range(6):  # a change every 50 ms for 0.3 s: no trim in the middle of it
        trim.soon()
        await asyncio.sleep(0.05)
    assert trim.count == 0
    await asyncio.sleep(0.2)
    assert trim.count == 1  # 0.1 s after the last change
    for _ in range(16):  # steady churn for 0.8 s: trimmed by its first change + 6 delays
        trim.soon()
        await asyncio.sleep(0.05)
    assert trim.count == 2


@needs_glibc
async def test_stop_cancels_a_pending_trim() -> None:
    trim = MemoryTrim(0.05, LOG)
    trim.soon()
    trim.stop()
    await asyncio.sleep(0.2)
    assert trim.count == 0


def test_soon_outside_a_loop_does_nothing() -> None:
    MemoryTrim(0.05, LOG).soon()  # no running loop: no error, no timer


@needs_glibc
async def test_a_fragmented_heap_gives_its_free_pages_back() -> None:
    """A thread (as a Docker call does) fills its heap with 2 KiB blocks and frees all but one in
    64: glibc keeps the free pages between the survivors until the trim."""
    kept: list[bytes] = []

    def fragment() -> None:
        blocks = [bytes(2048) for _ in range(100_000)]  # ~200 MiB, malloc'd (over pymalloc's 512 B)
        kept.extend(blocks[::64])
        blocks.clear()

    t = threading.Thread(target=fragment)
    t.start()
    t.join()
    before = rss_bytes()
    trim = MemoryTrim(0.01, LOG)
    trim.soon()
    await asyncio.sleep(0.5)
    assert trim.count == 1
    freed = before - rss_bytes()
    assert freed > 100 * 2**20, f"only {freed / 2**20:.0f} MiB given back"
    assert len(kept) == 1563
