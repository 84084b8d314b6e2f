"""The machines containers run on, as capacity checks need them: the memory all of them offer
(the budget's base) and the largest one (what a single container can be given at most).

One engine: this host. A cluster: its active nodes, read from the backend when the gateway starts
and again before a start when the last reading is older than `max_age` (nodes join and leave;
one manager call every few seconds at most, and none while nothing starts)."""
from __future__ import annotations

import os
import time

from .backend import ContainerBackend, Node
from .limits import host_memory


class Fleet:
    max_age = 10.0

    def __init__(self) -> None:
        self.nodes: list[Node] = [Node("", host_memory(), float(os.cpu_count() or 1))]
        self._read_at = 0.0

    async def refresh(self, backend: ContainerBackend, force: bool = False) -> None:
        if not force and time.monotonic() - self._read_at < self.max_age:
            return
        nodes = [n for n in await backend.nodes() if n.ready]
        if nodes:
            self.nodes = nodes
        self._read_at = time.monotonic()

    def total_memory(self) -> int:
        return sum(n.memory for n in self.nodes)

    def largest(self) -> Node:
        return max(self.nodes, key=lambda n: (n.memory, n.cpus))

    def fits_one(self, memory: int, cpus: float) -> str:
        """'' when some node can hold a container of this size; else why not."""
        if any(memory <= n.memory and cpus <= n.cpus for n in self.nodes):
            return ""
        big = self.largest()
        return (f"no node can hold {memory / 2**30:.1f} GiB and {cpus:g} CPUs (the largest of {len(self.nodes)} "
                f"has {big.memory / 2**30:.1f} GiB and {big.cpus:g} CPUs)")


FLEET = Fleet()  # the process's: one gateway, one set of machines
