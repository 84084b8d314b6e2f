import pytest

from kernel_gateway_ext.errors import BadRequest
from kernel_gateway_ext.containers.limits import KernelLimits, parse_memory


@pytest.mark.parametrize("text,value", [("512m", 512 * 2**20), ("2g", 2 * 2**30), ("1.5G", int(1.5 * 2**30)),
                                        ("1024", 1024), ("64KiB", 64 * 1024), (" 3 mb ", 3 * 2**20)])
def test_parse_memory(text, value):
    assert parse_memory(text) == value


@pytest.mark.parametrize("text", ["", "lots", "-1g", "1x"])
def test_parse_memory_rejects(text):
    with pytest.raises(BadRequest):
        parse_memory(text)


def test_unset_limits_take_defaults():
    r = KernelLimits().resolve(mem_default=1, cpu_default=0.5, pids_default=7)
    assert (r.memory_bytes, r.cpus, r.pids) == (1, 0.5, 7)
    r = KernelLimits(memory_bytes=5, cpus=2.0, pids=9).resolve(mem_default=1, cpu_default=0.5, pids_default=7)
    assert (r.memory_bytes, r.cpus, r.pids) == (5, 2.0, 9)


def test_parse_memory_is_linear_on_hostile_sizes():
    """An unstripped pattern backtracked quadratically over runs of spaces (minutes at 80 KiB)."""
    import time

    for text in ["1" + " " * 80_000 + "x", " " * 80_000 + "1x", "9" * 80_000 + "q"]:
        began = time.perf_counter()
        with pytest.raises(BadRequest):
            parse_memory(text)
        assert time.perf_counter() - began < 0.05
