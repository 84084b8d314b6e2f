"""The host is not the containers' to reach.

Inter-container traffic off stops a kernel reaching another kernel, not the host: every service
the host runs on all interfaces (this gateway's API, a database, an engine on TCP) answers a
container that connects to the bridge's gateway address, or to any other address of the host.
Docker's own rules (FORWARD, DOCKER-USER) see only traffic that leaves the host; traffic to it
goes through INPUT. So one rule per containers' bridge, in INPUT (IPv4 and IPv6): new connections
that come in from the bridge are refused. Replies to what the gateway opens (the kernels' ports)
are not new, and pass. A cloud's metadata service (169.254.169.254) is not the host's address but
answers for the host (its credentials), so a second rule, in DOCKER-USER, refuses what the bridge
sends to link-local addresses.

The rule is the network's, as long as it exists (a gateway stopped with its kernels kept must not
open the host to them); rules of bridges that are gone are pruned whenever a gateway ensures one.
It needs the engine's host's network namespace and root: a remote engine, a gateway in a container
or one without the right gets a warning with the rule to add by hand.
"""
from __future__ import annotations

import os
import shutil
import subprocess

COMMENT = "kge-host-guard"  # marks our rules, to find (and prune) them
TOOLS = ("iptables", "ip6tables")
TIMEOUT = 30.0  # s; -w waits for the xtables lock another program (dockerd) holds


def bridge_of(network: dict[str, object]) -> str | None:
    """The host interface of a Docker bridge network (None for other drivers)."""
    if network.get("Driver") != "bridge":
        return None
    options = network.get("Options") or {}
    named = options.get("com.docker.network.bridge.name") if isinstance(options, dict) else None
    return str(named) if named else f"br-{str(network['Id'])[:12]}"


LINK_LOCAL = "169.254.0.0/16"  # cloud metadata services (169.254.169.254: the host's credentials)


def rule(bridge: str) -> list[str]:
    return ["INPUT", "-i", bridge, "-m", "conntrack", "--ctstate", "NEW",
            "-m", "comment", "--comment", COMMENT, "-j", "REJECT"]


def link_local_rule(bridge: str) -> list[str]:
    """Forwarded to a link-local address (not the host's own, so not INPUT): a cloud's metadata
    service, which hands out the host's credentials to whoever asks from the host."""
    return ["DOCKER-USER", "-i", bridge, "-d", LINK_LOCAL, "-m", "comment", "--comment", COMMENT, "-j", "REJECT"]


def _rules(tool: str, bridge: str) -> list[list[str]]:
    return [rule(bridge), link_local_rule(bridge)] if tool == "iptables" else [rule(bridge)]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=TIMEOUT, check=False)


def _exists(interface: str) -> bool:
    return os.path.exists(f"/sys/class/net/{interface}")


def guard(bridge: str) -> list[str]:
    """Refuse new connections from `bridge` to the host (idempotent); prune the rules of bridges
    that are gone. Blocking (runs programs): call it off the event loop. Returns warnings."""
    by_hand = f"add it on the engine's host: iptables -I {' '.join(rule(bridge))} (and ip6tables)"
    if not _exists(bridge):
        return [f"containers can reach the host's services: their bridge {bridge} is not in this gateway's "
                f"network namespace (a remote engine, or a gateway in a container), so it cannot add the rule; "
                + by_hand]
    warnings = []
    for tool in TOOLS:
        if shutil.which(tool) is None:
            warnings.append(f"containers can reach the host's services: no {tool} here; " + by_hand)
            continue
        for wanted in _rules(tool, bridge):
            if _run(tool, "-w", "-C", *wanted).returncode == 0:
                continue
            added = _run(tool, "-w", "-I", *wanted)
            if added.returncode:
                reason = (added.stderr.strip().splitlines() or ["failed"])[-1]
                warnings.append(f"containers can reach the host's services: {tool} refused the rule ({reason}); "
                                f"add it on the engine's host: {tool} -I {' '.join(wanted)}")
    prune()
    return warnings


def prune() -> list[str]:
    """Delete our rules whose bridge no longer exists (its network was removed), and the second of
    two gateways that added the same rule at once; the bridges left."""
    kept = set()
    for tool, chain in ((t, c) for t in TOOLS for c in ("INPUT", "DOCKER-USER")):
        if shutil.which(tool) is None:
            continue
        listed = _run(tool, "-w", "-S", chain)
        seen = set()
        for line in listed.stdout.splitlines():
            words = line.split()
            if COMMENT not in words or "-i" not in words or words[:1] != ["-A"]:
                continue
            bridge = words[words.index("-i") + 1]
            if _exists(bridge) and line not in seen:
                kept.add(bridge)
                seen.add(line)
            else:
                _run(tool, "-w", "-D", *words[1:])  # deletes one of the same rules
    return sorted(kept)
