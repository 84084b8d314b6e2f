"""A pooled kernel specialised at hand-out is indistinguishable from a cold one started with the same
request: limits in the cgroup and in the engine, folders and their aliases at the same mount points
with the same flags, env in the kernel and in its subprocesses; after a restart in place and after
its container died and was started again too."""
from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from typing import Any

from kernel_gateway_ext.containers.limits import KernelLimits
from tests.conftest import TOKEN
from tests.wsclient import KernelWS
from tests.api.test_pool import wait_pool

OWNER = "spec-ann"

# Everything a user could see of what the kernel was made: read inside it, as JSON.
PROBE = r'''
import json, os, pathlib, subprocess
def read(*paths):
    for p in paths:
        try:
            return pathlib.Path(p).read_text().strip()
        except OSError:
            pass
cg = {"mem": read("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"),
      "memsw": read("/sys/fs/cgroup/memory.swap.max", "/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes"),
      "cpu": read("/sys/fs/cgroup/cpu.max", "/sys/fs/cgroup/cpu/cpu.cfs_quota_us"),
      "period": read("/sys/fs/cgroup/cpu/cpu.cfs_period_us"),
      "pids": read("/sys/fs/cgroup/pids.max", "/sys/fs/cgroup/pids/pids.max")}
mounts, dirs, files = [], {}, {}
for line in open("/proc/self/mountinfo"):
    f = line.split()
    if f[4].startswith("/home/work"):
        sep = f.index("-")
        mounts.append([f[3], f[4], f[5], f[6:sep], f[sep + 1]])  # root, point, options, propagation, fs type
        p = pathlib.Path(f[4])
        while str(p) != "/home/work":
            st = os.stat(p)
            dirs[str(p)] = [oct(st.st_mode), st.st_uid, st.st_gid]
            p = p.parent
        files[f[4]] = sorted(os.listdir(f[4]))
names = ["KERNEL_USERNAME", "MY_VAR", "HOME", "KERNEL_ID"]
sub = dict(l.split("=", 1) for l in subprocess.run(["env"], capture_output=True, text=True).stdout.splitlines() if "=" in l)
print(json.dumps({"cgroup": cg, "mounts": sorted(mounts, key=lambda m: m[1]), "dirs": dirs, "files": files,
                  "env": {n: os.environ.get(n) for n in names}, "subprocess_env": {n: sub.get(n) for n in names},
                  "uid": os.getuid(), "cwd": os.getcwd()}))
'''


async def probe(gw: Any, kernel_id: str) -> dict[str, Any]:
    ws = await KernelWS.connect(gw.url, kernel_id, TOKEN)
    try:
        result = json.loads(ws.stdout(await ws.execute(PROBE)))
    finally:
        ws.close()
    result["env"]["KERNEL_ID"] = result["env"]["KERNEL_ID"] == kernel_id  # each has its own id
    result["subprocess_env"]["KERNEL_ID"] = result["subprocess_env"]["KERNEL_ID"] == kernel_id
    return result


def engine_limits(docker_client: Any, kernel_id: str) -> dict[str, Any]:
    (c,) = docker_client.containers.list(filters={"label": f"org.kge.kernel.id={kernel_id}"})
    return {k: c.attrs["HostConfig"][k] for k in ("Memory", "MemorySwap", "NanoCpus", "PidsLimit")}


async def test_specialised_pooled_kernel_equals_a_cold_one(make_gateway, docker_client) -> None:
    async with make_gateway("--GatewayKernelManager.pool_sizes", "python3=1") as gw:
        mgr, folders = gw.app.kernel_manager, gw.app.folders
        for name in ("data", "pkgs"):
            await folders.create(OWNER, name)
        await folders.upload(OWNER, "data", [("hello.txt", b"hi"), ("sub/deep.txt", b"deep")])
        data, pkgs = await folders.mounts(OWNER, ["data", "pkgs:.local/lib/site"])
        request = dict(owner=OWNER, kernel_name="python3",
                       limits=KernelLimits(memory_bytes=300 * 2**20, cpus=0.5, pids=200),
                       mounts=[data, dataclasses.replace(pkgs, read_only=True)],
                       env={"KERNEL_USERNAME": "ann", "NOT_ALLOWED": "x"}, user_env={"MY_VAR": "a b 'c' $HOME \"q\" \\ \u00e9\U0001F600\n2"})
        await wait_pool(gw, "python3", 1)

        t0 = time.monotonic()
        pooled = await mgr.start(**request)
        took = time.monotonic() - t0
        assert mgr.pool.hits == 1, (mgr.pool.hits, mgr.pool.misses)
        # The pool stops refilling; a start then is cold.
        mgr.pool_sizes = {}
        for km in await mgr.pool.drain():
            await mgr.discard(km)
        cold = await mgr.start(**request)
        assert mgr.pool.hits == 1

        expected = await probe(gw, cold.kernel_id)
        assert expected["cgroup"]["pids"] == "200" and expected["env"]["KERNEL_USERNAME"] == "ann"
        assert [m[1] for m in expected["mounts"]] == ["/home/work/.local/lib/site", "/home/work/data"]
        assert expected["files"]["/home/work/data"] == ["hello.txt", "sub"]
        assert await probe(gw, pooled.kernel_id) == expected
        # The limits go straight into the cgroup where the gateway can; the engine's record
        # follows moments later (and always before the engine could start the container again).
        deadline = time.monotonic() + 5
        while engine_limits(docker_client, pooled.kernel_id) != engine_limits(docker_client, cold.kernel_id):
            assert time.monotonic() < deadline, (engine_limits(docker_client, pooled.kernel_id),
                                                 engine_limits(docker_client, cold.kernel_id))
            await asyncio.sleep(0.05)
        assert pooled.effective_limits() == cold.effective_limits()
        print(f"specialised hand-out took {took * 1000:.0f} ms")

        # What the kernel writes lands in the owner's folder; the read-only alias stays read-only.
        ws = await KernelWS.connect(gw.url, pooled.kernel_id, TOKEN)
        out = ws.stdout(await ws.execute(
            "open('/home/work/data/from-pooled.txt', 'w').write('x')\n"
            "try:\n    open('/home/work/.local/lib/site/x', 'w')\nexcept OSError as e:\n    print(e.errno)"))
        ws.close()
        assert out.strip() == "30"  # EROFS
        assert "from-pooled.txt" in [f["filename"] for f in await folders.files(OWNER, "data")]

        # A restart in place keeps all of it (the env through the nanny's env file) ...
        await mgr.restart(pooled.kernel_id)
        expected["files"]["/home/work/data"] = ["from-pooled.txt", "hello.txt", "sub"]
        assert await probe(gw, pooled.kernel_id) == expected
        # ... and so does a container that died and is started again (a new mount namespace).
        restarts = pooled.restart_count
        docker_client.containers.get(pooled.docker.container_id).kill()
        deadline = time.monotonic() + 30  # the gateway restarts it by itself (autorestart)
        while pooled.restart_count == restarts or pooled.execution_state != "idle":
            assert time.monotonic() < deadline, pooled.execution_state
            await asyncio.sleep(0.1)
        assert await probe(gw, pooled.kernel_id) == expected

        for km in (pooled, cold):
            await mgr.shutdown(km.kernel_id, now=True)
        for name in ("data", "pkgs"):
            await folders.delete(OWNER, name)


async def test_bash_kernel_specialised_env_and_what_stays_cold(make_gateway, docker_client) -> None:
    async with make_gateway("--GatewayKernelManager.pool_sizes", "bash=1") as gw:
        mgr = gw.app.kernel_manager
        await wait_pool(gw, "bash", 1)
        km = await mgr.start(owner=OWNER, kernel_name="bash", user_env={"MY_VAR": "it's $(not run)"},
                             limits=KernelLimits(memory_bytes=256 * 2**20))
        assert mgr.pool.hits == 1
        ws = await KernelWS.connect(gw.url, km.kernel_id, TOKEN)
        out = ws.stdout(await ws.execute('echo "$MY_VAR"; sh -c \'echo "$MY_VAR"\'; cat /sys/fs/cgroup/memory.max '
                                         '/sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null'))
        ws.close()
        assert out.splitlines() == ["it's $(not run)", "it's $(not run)", str(256 * 2**20)], out
        await mgr.shutdown(km.kernel_id, now=True)
        await wait_pool(gw, "bash", 1)
        # Env the interpreter reads only at start-up, and GPUs, cannot be given to a running kernel.
        for kw in ({"user_env": {"LD_PRELOAD": "/nothing.so"}}, {"limits": KernelLimits(gpus=1)}):
            assert not mgr.pool.servable(mgr_request(mgr, **kw))


def mgr_request(mgr: Any, **kw: Any) -> Any:
    from kernel_gateway_ext.provisioners.launch import LaunchRequest

    return LaunchRequest.build(owner=OWNER, kernel_name="bash", allowlist=mgr.env_allowlist, **kw)


async def test_a_host_that_cannot_bind_folders_starts_them_cold(make_gateway, monkeypatch) -> None:
    """A gateway without the right to enter a container's mount namespace (e.g. one in a container
    without CAP_SYS_ADMIN): the helper's refusal is simulated; starts with folders still work, cold,
    and after two refusals they stop using up pooled kernels."""
    from kernel_gateway_ext.containers.mounter import MountHelper
    from kernel_gateway_ext.errors import ContainerFailed

    async def refuse(self: Any, pid: int, mounts: Any, timeout: float = 10.0) -> None:
        raise ContainerFailed("folders could not be mounted: setns: [Errno 1] Operation not permitted")

    monkeypatch.setattr(MountHelper, "attach", refuse)
    async with make_gateway("--GatewayKernelManager.pool_sizes", "python3=1") as gw:
        mgr, folders = gw.app.kernel_manager, gw.app.folders
        await folders.create(OWNER, "data")
        await folders.upload(OWNER, "data", [("seen.txt", b"x")])
        mounts = await folders.mounts(OWNER, ["data"])
        kms = []
        for _ in range(3):
            await wait_pool(gw, "python3", 1)
            km = await mgr.start(owner=OWNER, kernel_name="python3", mounts=mounts)
            kms.append(km)
            ws = await KernelWS.connect(gw.url, km.kernel_id, TOKEN)
            assert ws.stdout(await ws.execute("import os; print(os.listdir('/home/work/data'))")) == "['seen.txt']\n"
            ws.close()
        assert mgr.pool.hits == 0 and mgr.pool.misses == 3
        assert mgr.pool.ready["python3"]  # the third start did not take (and lose) the pooled kernel
        for km in kms:
            await mgr.shutdown(km.kernel_id, now=True)
        await folders.delete(OWNER, "data")
