"""The capacity rules alone (hard limits, counts, the shared memory budget), against a kernel store
made of plain data: no server, no Docker."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from kernel_gateway_ext.containers.limits import KernelLimits
from kernel_gateway_ext.errors import BadRequest, LimitExceeded, OverCapacity, TooManyKernels
from kernel_gateway_ext.kernels.capacity import Capacity

GIB = 2**30


class Specs:
    def get_kernel_spec(self, name):
        return SimpleNamespace(metadata={"kernel_provisioner": {"provisioner_name": "kge-docker-provisioner",
                                                                "config": {"mem_limit": "1g"}}})


class Store:
    """What Capacity reads of the kernel store (its CapacityHost protocol)."""

    kernel_spec_manager = Specs()
    max_kernels, max_kernels_per_owner = 4, 2
    memory_budget = "3g"
    hard_mem_limit, hard_cpu_limit, hard_gpu_limit, hard_exec_timeout = "2g", 2.0, 0, 60.0

    def __init__(self):
        self.kernels = []

    def every_kernel(self):
        return iter(self.kernels)

    def kernels_of(self, owner):
        return sum(1 for k in self.kernels if k.owner == owner)

    def add(self, owner, memory):
        limits = KernelLimits(memory_bytes=memory)
        self.kernels.append(SimpleNamespace(owner=owner, docker=object(), effective_limits=lambda: limits))


def capacity(store):
    return Capacity(store, provisioner_defaults=lambda: SimpleNamespace(mem_limit="512m"))


def test_hard_limits_refuse_before_anything_starts():
    cap = capacity(Store())
    cap.check_limits(KernelLimits(memory_bytes=GIB, cpus=1.0), 30.0)
    with pytest.raises(LimitExceeded):
        cap.check_limits(KernelLimits(memory_bytes=3 * GIB), None)
    with pytest.raises(LimitExceeded):
        cap.check_limits(KernelLimits(cpus=4.0), None)
    with pytest.raises(LimitExceeded):
        cap.check_limits(KernelLimits(gpus=1), None)
    with pytest.raises(LimitExceeded):
        cap.check_limits(None, 61.0)
    with pytest.raises(BadRequest):
        cap.check_limits(KernelLimits(memory_bytes=2**20), None)  # below the engine's minimum
    with pytest.raises(BadRequest):
        cap.check_limits(KernelLimits(cpus=0.001), None)


def test_counts_in_all_and_per_owner():
    store = Store()
    cap = capacity(store)
    store.add("alice", GIB)
    cap.check_owner("alice")
    store.add("alice", GIB)
    with pytest.raises(TooManyKernels):
        cap.check_owner("alice")
    cap.check_owner("bob")
    store.add("bob", 0)
    cap.check_count()
    store.add("bob", 0)
    with pytest.raises(TooManyKernels):
        cap.check_count()


def test_the_budget_is_shared_with_other_claimants():
    store = Store()
    cap = capacity(store)
    store.add("alice", GIB)
    assert cap.budget_bytes() == 3 * GIB and cap.promised_memory() == GIB
    cap.check_memory(2 * GIB)
    jobs = [GIB]
    cap.add_claimant(lambda: sum(jobs))  # Skaha jobs draw on the same budget
    assert cap.promised_memory() == 2 * GIB
    with pytest.raises(OverCapacity) as e:
        cap.check_memory(2 * GIB)
    assert e.value.status == 429
    jobs.clear()
    cap.check_memory(2 * GIB)


def test_memory_of_a_start_and_room_for_the_pool():
    store = Store()
    cap = capacity(store)
    assert cap.memory_of("python3", None) == GIB  # the kernelspec's own mem_limit
    assert cap.memory_of("python3", KernelLimits(memory_bytes=5)) == 5
    assert cap.room_for_pooled("python3", filling=2)
    assert not cap.room_for_pooled("python3", filling=3)  # a fourth GiB would pass the budget
    store.memory_budget = ""
    assert cap.budget_bytes() == 0 and cap.room_for_pooled("python3", filling=3)
    assert not cap.room_for_pooled("python3", filling=4)  # max_kernels
