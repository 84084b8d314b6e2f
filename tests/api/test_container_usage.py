"""A container's memory and CPU time read from its cgroup (containers/cgroups.py) agree with the
engine's stats call for the same container, and are refused for a pid of another container."""
from __future__ import annotations

import os
import time
from collections.abc import Iterator

import docker
import pytest

from kernel_gateway_ext.containers.cgroups import read_usage
from kernel_gateway_ext.containers.images import KERNEL_IMAGE
from tests.conftest import require_docker

MiB = 2**20
HOLD = "x = bytearray(96 * 2**20); x[::4096] = b'1' * len(x[::4096]); import time; time.sleep(600)"


@pytest.fixture
def containers() -> Iterator[list]:
    require_docker()
    if os.geteuid() != 0:
        pytest.skip("!!! SKIPPED, NEEDS ROOT: the host's cgroup files of a container")
    made: list = []
    yield made
    for c in made:
        c.remove(force=True)


def run(client: docker.DockerClient, made: list, code: str) -> tuple[int, str]:
    c = client.containers.run(KERNEL_IMAGE, ["python3", "-c", code], detach=True, labels={"org.kge.test": "usage"})
    made.append(c)
    c.reload()
    return int(c.attrs["State"]["Pid"]), str(c.id)


def test_cgroup_figures_match_the_engines_stats(containers: list) -> None:
    client = docker.from_env()
    pid, cid = run(client, containers, HOLD)
    deadline = time.monotonic() + 60
    while True:  # until the 96 MiB are touched
        read = read_usage(pid, cid)
        assert read is not None, "this host's cgroup files of the container could not be read"
        if read[0] > 96 * MiB or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    stats = client.api.stats(cid, stream=False, one_shot=True)
    memory, peak, cpu_ns = read_usage(pid, cid) or (0, 0, 0)
    mem = stats["memory_stats"]
    engine_memory = mem["usage"] - (mem.get("stats") or {}).get("cache", 0)
    assert memory > 96 * MiB
    assert abs(memory - engine_memory) < 4 * MiB, (memory, engine_memory)
    if "max_usage" in mem:  # cgroup v1 keeps a peak (v2 only on newer kernels)
        assert abs(peak - mem["max_usage"]) < 4 * MiB and peak >= memory
    engine_cpu = stats["cpu_stats"]["cpu_usage"]["total_usage"]
    assert cpu_ns > 10**7 and abs(cpu_ns - engine_cpu) < 50 * 10**6, (cpu_ns, engine_cpu)  # asleep: barely moves


def test_a_pid_of_another_container_reads_nothing(containers: list) -> None:
    client = docker.from_env()
    pid_a, _ = run(client, containers, "import time; time.sleep(600)")
    _, id_b = run(client, containers, "import time; time.sleep(600)")
    assert read_usage(pid_a, id_b) is None  # a recycled pid never leads to another container
    assert read_usage(pid_a, "short") is None
