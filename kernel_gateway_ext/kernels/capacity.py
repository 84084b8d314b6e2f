"""What may be started: hard limits per kernel (406), kernel counts in total and per owner (403),
and the host's memory budget shared with Skaha jobs (429).

The defaults are derived from the host, so that a fresh gateway shared by users who do not trust
each other cannot be exhausted by one of them: one kernel per 128 MiB of memory in all, a quarter
of that per owner, and container limits promised up to 250% of the memory (limits are caps, not
reservations: kernels rarely use theirs, so a budget of exactly the host refuses what would run).

`Capacity` is a collaborator of the kernel store: it reads the store only through `CapacityHost`.
Other claimants on the budget (Skaha jobs) register a reading of what they promise."""
from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from traitlets import Float, HasTraits, Int, Unicode, default

from ..config import env
from ..containers.fleet import FLEET
from ..containers.limits import KernelLimits, host_memory, parse_memory
from ..errors import BadRequest, LimitExceeded, OverCapacity, TooManyKernels
from ..provisioners.docker import DockerProvisioner
from .kernel import GatewayKernel

DOCKER_PROVISIONER = "kge-docker-provisioner"
MIN_MEMORY = 6 * 2**20  # Docker refuses a smaller memory limit
MIN_CPUS = 0.01  # below it Docker's nano_cpus rounds to 0, which means no CPU limit at all
GIB = 2**30


class CapacitySettings(HasTraits):
    """The capacity options (traits of the kernel store: GatewayKernelManager.max_kernels, …)."""

    max_kernels = env(Int(help="Most kernels at once, pooled ones included (0: no limit). "
                               "Default: one per 128 MiB of host memory, 16 to 1024."), "KGE_MAX_KERNELS")
    max_kernels_per_owner = env(Int(help="Most kernels one owner may have at once (0: no limit). "
                                         "Default: a quarter of max_kernels, at least 8."),
                                "KGE_MAX_KERNELS_PER_OWNER")
    memory_budget = env(
        Unicode("250%", help="Memory all kernels and Skaha sessions together may be promised (their container "
                             "limits), e.g. '48g' or '90%' of the host; a start beyond it answers 429. Over 100% "
                             "by default: limits are caps and callers such as the CANFAR clients ask generously. "
                             "Empty: no budget."),
        "KGE_MEMORY_BUDGET",
    )
    hard_mem_limit = env(Unicode("8g", help="Most memory one kernel may ask for (more: 406)."), "KGE_HARD_MEM_LIMIT")
    hard_cpu_limit = env(Float(float(os.cpu_count() or 1), help="Most CPUs one kernel may ask for."), "KGE_HARD_CPU_LIMIT")
    hard_gpu_limit = env(Int(0, help="Most GPUs one kernel may ask for (0: this host offers none)."), "KGE_HARD_GPU_LIMIT")
    hard_exec_timeout = env(
        Float(3600.0, help="Longest execTimeout (s) a caller may set; also the default when none is set."),
        "KGE_HARD_EXEC_TIMEOUT",
    )

    @default("max_kernels")
    def _max_kernels_default(self) -> int:
        return min(1024, max(16, host_memory() // (128 * 2**20)))

    @default("max_kernels_per_owner")
    def _max_kernels_per_owner_default(self) -> int:
        return max(8, self.max_kernels // 4) if self.max_kernels else 0


class CapacityHost(Protocol):
    """What capacity needs of the kernel store."""

    kernel_spec_manager: Any
    max_kernels: int
    max_kernels_per_owner: int
    memory_budget: str
    hard_mem_limit: str
    hard_cpu_limit: float
    hard_gpu_limit: int
    hard_exec_timeout: float

    def every_kernel(self) -> Iterable[GatewayKernel]: ...  # in the store, starting and pooled

    def kernels_of(self, owner: str) -> int: ...  # in the store and starting


class Capacity:
    def __init__(self, host: CapacityHost, provisioner_defaults: Callable[[], DockerProvisioner]) -> None:
        self.host = host
        self._provisioner_defaults = provisioner_defaults
        self._default_mem_limit: str | None = None
        self._claimants: list[Callable[[], int]] = []

    def add_claimant(self, promised: Callable[[], int]) -> None:
        """Something else drawing on the same budget (Skaha jobs): `promised()` is its memory."""
        self._claimants.append(promised)

    def budget_bytes(self) -> int:
        """The memory budget in bytes (0: none)."""
        text = self.host.memory_budget.strip()
        if not text:
            return 0
        if text.endswith("%"):
            return int(FLEET.total_memory() * float(text[:-1]) / 100)  # the host's, or a cluster's nodes'
        return parse_memory(text)

    def memory_of(self, name: str, limits: KernelLimits | None) -> int:
        """The memory a kernel of `name` with `limits` is promised (its container's limit)."""
        if limits is not None and limits.memory_bytes:
            return limits.memory_bytes
        try:
            spec = self.host.kernel_spec_manager.get_kernel_spec(name)
        except Exception:  # noqa: BLE001 - an unknown spec fails later with its own error
            return 0
        prov = (spec.metadata.get("kernel_provisioner") or {})
        if prov.get("provisioner_name") != DOCKER_PROVISIONER:
            return 0
        configured = (prov.get("config") or {}).get("mem_limit")
        if not configured:
            if self._default_mem_limit is None:  # the provisioners' configured default (traits, env)
                self._default_mem_limit = self._provisioner_defaults().mem_limit
            configured = self._default_mem_limit
        return parse_memory(configured)

    def promised_memory(self, kernels: Iterable[GatewayKernel] | None = None) -> int:
        """The memory promised to `kernels` (default: every kernel, starting and pooled ones too)
        and to the other claimants (Skaha jobs)."""
        kms = self.host.every_kernel() if kernels is None else kernels
        total = sum(km.effective_limits().memory_bytes or 0 for km in kms if km.docker is not None)
        return total + sum(promised() for promised in self._claimants)

    def count(self) -> int:
        return sum(1 for _ in self.host.every_kernel())

    def check_memory(self, wanted: int) -> None:
        """429 when `wanted` more bytes would promise more memory than the host's budget."""
        budget = self.budget_bytes()
        if budget and wanted and self.promised_memory() + wanted > budget:
            raise OverCapacity(f"the host's memory budget is spent: {self.promised_memory() / GIB:.1f} GiB of "
                               f"{budget / GIB:.1f} GiB promised, {wanted / GIB:.1f} GiB more asked")

    def check_owner(self, owner: str) -> None:
        """403 when `owner` already has its most kernels."""
        most = self.host.max_kernels_per_owner
        if most and self.host.kernels_of(owner) >= most:
            raise TooManyKernels(f"{owner} already has the maximum of {most} kernels")

    def check_count(self) -> None:
        """403 when the gateway runs its most kernels."""
        most = self.host.max_kernels
        if most and self.count() >= most:
            raise TooManyKernels(f"the gateway runs its maximum of {most} kernels")

    def room_for_pooled(self, name: str, filling: int) -> bool:
        """Room for one more pooled kernel besides `filling` being made: within max_kernels and the budget."""
        most = self.host.max_kernels
        if most and self.count() + filling >= most:
            return False
        budget = self.budget_bytes()
        return not (budget and self.promised_memory() + (filling + 1) * self.memory_of(name, None) > budget)

    def check_limits(self, limits: KernelLimits | None, exec_timeout: float | None) -> None:
        """Requests above the server's hard limits are refused (406), nothing is started."""
        host = self.host
        if limits is not None:
            if limits.memory_bytes and limits.memory_bytes < MIN_MEMORY:
                raise BadRequest(f"memory below the engine's minimum of {MIN_MEMORY // 2**20} MiB")
            if limits.memory_bytes and limits.memory_bytes > parse_memory(host.hard_mem_limit):
                raise LimitExceeded(f"memory above this server's limit of {host.hard_mem_limit}")
            if limits.cpus is not None and limits.cpus < MIN_CPUS:
                raise BadRequest(f"CPUs below the minimum of {MIN_CPUS:g}")
            if limits.cpus and limits.cpus > host.hard_cpu_limit:
                raise LimitExceeded(f"CPUs above this server's limit of {host.hard_cpu_limit:g}")
            if limits.gpus and limits.gpus > host.hard_gpu_limit:
                raise LimitExceeded(f"GPUs above this server's limit of {host.hard_gpu_limit}")
            why = FLEET.fits_one(limits.memory_bytes or 0, limits.cpus or 0.0)
            if why:  # a cluster's total may hold it, but a container runs on one node
                raise LimitExceeded(why)
        if exec_timeout is not None and exec_timeout > host.hard_exec_timeout:
            raise LimitExceeded(f"execTimeout above this server's limit of {host.hard_exec_timeout:g} s")
