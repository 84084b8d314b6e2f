"""What this process may do to files that are not its own: root, or the capabilities a service
manager left it (the systemd unit runs the gateway as its own user with a few ambient ones)."""
from __future__ import annotations

CAPABILITIES = {"CAP_CHOWN": 0, "CAP_DAC_OVERRIDE": 1, "CAP_DAC_READ_SEARCH": 2, "CAP_FOWNER": 3,
                "CAP_NET_ADMIN": 12, "CAP_SYS_ADMIN": 21}


def effective_capabilities() -> int:
    """The effective capability set, as a bit mask (0 where /proc does not say)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return int(line.split()[1], 16)
    except (OSError, ValueError):
        pass
    return 0


def missing(*names: str) -> list[str]:
    """Those of `names` (CAP_…) this process does not have in effect."""
    have = effective_capabilities()
    return [n for n in names if not have >> CAPABILITIES[n] & 1]
