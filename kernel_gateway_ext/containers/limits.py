"""Resource limits of a kernel or job container."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, replace

from ..errors import BadRequest

_SIZE = re.compile(r"(\d{1,15}(?:\.\d{1,6})?)\s{0,4}([bkmgt]?)(?:i?b)?")
_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


def host_memory() -> int:
    """The host's physical memory in bytes (0 when the platform does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return 0


def parse_memory(value: str | int | float) -> int:
    """'512m', '2g', '1.5G', '1024' (bytes) -> bytes."""
    if isinstance(value, (int, float)):
        return int(value)
    # Stripped and capped first: the pattern then runs on a short string, never backtracking over
    # a long run of spaces (an unstripped 80 KiB value took minutes).
    text = value.strip().lower() if len(value) <= 64 else ""
    m = _SIZE.fullmatch(text)
    if not m:
        raise BadRequest(f"invalid memory size {value[:32]!r}")
    return int(float(m.group(1)) * _UNITS[m.group(2)])


@dataclass(frozen=True)
class KernelLimits:
    """Limits a request asks for; None means the configured default."""

    memory_bytes: int | None = None
    cpus: float | None = None
    pids: int | None = None
    gpus: int = 0

    def resolve(self, *, mem_default: int, cpu_default: float, pids_default: int) -> "KernelLimits":
        """Fill every unset limit from the defaults: a container is never unbounded."""
        return replace(
            self,
            memory_bytes=self.memory_bytes or mem_default,
            cpus=self.cpus or cpu_default,
            pids=self.pids or pids_default,
        )
