"""DockerProvisioner lifecycle against a recording fake of docker-py's APIClient (fast, no engine).

The provisioner and jupyter_client's KernelManager are real; only the engine's HTTP API is fake.
Real-engine behaviour is covered in tests/api and tests/clients.
"""
from __future__ import annotations

import json
import os
import stat
from typing import Any

import docker
import docker.errors
import pytest
from jupyter_client.manager import AsyncKernelManager

from kernel_gateway_ext.kernels.kernel import GatewayKernel
from kernel_gateway_ext.kernels.specs import GatewayKernelSpecManager
from kernel_gateway_ext.provisioners.docker import DockerProvisioner
from kernel_gateway_ext.provisioners.launch import LAUNCH_REQUEST, LaunchRequest
from kernel_gateway_ext.containers import current_backend
from kernel_gateway_ext.containers.engine import DockerEngine
from kernel_gateway_ext.containers.ipc import IpcFolders
from kernel_gateway_ext.containers.runtime import ContainerRuntime
from kernel_gateway_ext.kernels.channels import zmq_url
from kernel_gateway_ext.containers.limits import KernelLimits


class FakeAPI:
    def __init__(self, fail_start: bool = False) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.containers: dict[str, dict[str, Any]] = {}
        self.archives: dict[str, bytes] = {}
        self.stdin: dict[str, bytes] = {}
        self.fail_start = fail_start

    def create_host_config(self, **kw: Any) -> Any:
        return docker.types.HostConfig(version="1.41", **kw)

    def create_container(self, **kw: Any) -> dict[str, str]:
        cid = f"c{len(self.containers):063d}"
        self.containers[cid] = kw
        self.calls.append(("create", kw))
        return {"Id": cid}

    def put_archive(self, cid: str, path: str, data: bytes) -> bool:
        self.archives[path] = data
        self.calls.append(("put_archive", path))
        return True

    def attach_socket(self, cid: str, params: dict[str, Any]) -> FakeAttach:
        self.calls.append(("attach", params))
        return FakeAttach(self, cid)

    def start(self, cid: str) -> None:
        self.calls.append(("start", cid))
        if self.fail_start:
            raise docker.errors.APIError("boom", explanation="no such runtime")

    def inspect_container(self, cid: str) -> dict[str, Any]:
        return {"NetworkSettings": {"Networks": {"bridge": {"IPAddress": "172.17.0.9"}}}, "State": {"Running": True}}

    def kill(self, cid: str, signal: int) -> None:
        self.calls.append(("kill", signal))

    def remove_container(self, cid: str, force: bool, v: bool) -> None:
        self.calls.append(("remove", cid))
        self.containers.pop(cid, None)

    def logs(self, cid: str, tail: int) -> bytes:
        return b"log line\n"


class FakeAttach:
    """A hijacked attach connection: what is written lands in FakeAPI.stdin."""

    def __init__(self, api: FakeAPI, cid: str) -> None:
        self.api, self.cid, self.open = api, cid, True

    def sendall(self, data: bytes) -> None:
        assert ("start", self.cid) in self.api.calls, "written before the container started"
        self.api.stdin[self.cid] = self.api.stdin.get(self.cid, b"") + data

    def shutdown(self, how: int) -> None:
        self.api.calls.append(("stdin closed", self.cid))

    def close(self) -> None:
        self.open = False


class FakeClient:
    def __init__(self, api: FakeAPI) -> None:
        self.api = api

    def ping(self) -> bool:
        return True

    def close(self) -> None:
        pass


@pytest.fixture
def fake_api(monkeypatch: pytest.MonkeyPatch):
    api = FakeAPI()
    DockerEngine.clear_instance()
    engine = DockerEngine.instance(gateway_id="kge-fake")
    engine._client = FakeClient(api)  # type: ignore[assignment]
    monkeypatch.setattr(engine, "_ensure_events_thread", lambda: None)
    monkeypatch.setenv("GATEWAY_SECRET", "do-not-leak")
    yield api
    engine.close()


def make_km() -> AsyncKernelManager:
    return AsyncKernelManager(kernel_name="python3", kernel_spec_manager=GatewayKernelSpecManager())


async def launch(km: AsyncKernelManager, owner: str = "", limits: KernelLimits | None = None) -> DockerProvisioner:
    # What a request asks (filtered once, as the kernel store does), and jupyter_client's own env
    # (the gateway's environment): neither the secret nor PATH may reach the container.
    evil = {"KERNEL_USERNAME": "ann", "GATEWAY_SECRET": "x", "PATH": "/evil"}
    request = LaunchRequest.build(owner=owner, kernel_name="python3", requested_env=evil, limits=limits)
    cmd, kwargs = await km._async_pre_start_kernel(env=evil, **{LAUNCH_REQUEST: request})
    await km._async_launch_kernel(cmd, **kwargs)
    assert isinstance(km.provisioner, DockerProvisioner)
    return km.provisioner


async def test_container_is_bounded_hardened_and_keyless(fake_api: FakeAPI) -> None:
    km = make_km()
    prov = await launch(km, owner="ann")
    kind, create = fake_api.calls[0]
    assert kind == "create"
    hc = create["host_config"]
    assert hc["Memory"] == 2 * 2**30 and hc["MemorySwap"] == hc["Memory"]
    assert hc["NanoCpus"] == 1_000_000_000 and hc["PidsLimit"] == 512
    assert hc["CapDrop"] == ["ALL"] and "no-new-privileges" in hc["SecurityOpt"]
    assert not hc.get("PortBindings") and not hc.get("PublishAllPorts")
    assert create["user"] == "1000:1000" and create["working_dir"] == "/home/work"
    env = create["environment"]
    assert env["KERNEL_USERNAME"] == "ann"
    assert "GATEWAY_SECRET" not in env and env.get("PATH") != "/evil"
    key = km.session.key.decode()
    assert key and key not in json.dumps(create)  # not in env, labels or command
    labels = create["labels"]
    assert labels["org.kge.kernel.id"] == km.kernel_id and labels["org.kge.owner"] == "ann"
    assert labels["org.kge.gateway"] == "kge-fake"
    assert create["command"][0] == "/usr/local/bin/kge-nanny"
    # The key travels on the container's stdin as it starts, once (the nanny writes the file only
    # the kernel's user can read), not as a copy into the stopped container.
    cid = next(iter(fake_api.containers))
    assert create["stdin_open"] and not create["detach"]  # docker-py: StdinOnce
    assert create["command"][create["command"].index("--stdin-to") + 1] == "/run/kge/connection.json"
    assert [c[0] for c in fake_api.calls[:4]] == ["create", "attach", "start", "stdin closed"]
    assert json.loads(fake_api.stdin[cid])["key"] == key and not fake_api.archives
    assert km.ip == "172.17.0.9"
    assert await prov.poll() is None


async def test_requested_limits_override_defaults(fake_api: FakeAPI) -> None:
    await launch(make_km(), limits=KernelLimits(memory_bytes=256 * 2**20, cpus=0.5, gpus=1))
    hc = fake_api.calls[0][1]["host_config"]
    assert hc["Memory"] == 256 * 2**20 and hc["NanoCpus"] == 500_000_000
    assert hc["DeviceRequests"][0]["Count"] == 1 and hc["DeviceRequests"][0]["Capabilities"] == [["gpu"]]


async def test_failed_start_removes_the_container(fake_api: FakeAPI) -> None:
    fake_api.fail_start = True
    with pytest.raises(Exception, match="no such runtime"):
        await launch(make_km())
    assert ("remove", next(iter([c for k, c in fake_api.calls if k == "start"]))) in fake_api.calls
    assert not fake_api.containers


async def test_events_drive_poll_and_exit_callback(fake_api: FakeAPI) -> None:
    km = make_km()
    prov = await launch(km)
    seen: list[Any] = []
    prov.exit_callback = seen.append
    prov._on_event({"Action": "oom"})
    prov._on_event({"Action": "die", "Actor": {"Attributes": {"exitCode": "137"}}})
    assert await prov.poll() == 137 and await prov.wait() == 137
    assert prov.oom_killed and seen == [137]


async def test_restart_keeps_container_and_address(fake_api: FakeAPI) -> None:
    km = make_km()
    prov = await launch(km)
    cid, ip = prov.container_id, km.ip
    await prov.shutdown_requested(restart=True)
    assert ("kill", 1) in fake_api.calls  # SIGHUP: kge-nanny restarts the kernel in place
    assert await prov.poll() == 0  # the old kernel process counts as gone
    await prov.cleanup(restart=True)
    cmd, kwargs = await km._async_pre_start_kernel()
    await km._async_launch_kernel(cmd, **kwargs)
    assert prov.container_id == cid and km.ip == ip
    assert sum(1 for k, _ in fake_api.calls if k == "create") == 1
    assert await prov.poll() is None


async def test_shutdown_stops_and_removes(fake_api: FakeAPI) -> None:
    km = make_km()
    prov = await launch(km)
    cid = prov.container_id
    await prov.shutdown_requested(restart=False)
    assert ("kill", 15) in fake_api.calls
    assert any(r[2] == cid for r in DockerEngine.instance()._reconnect_callbacks)
    await prov.cleanup(restart=False)
    assert ("remove", cid) in fake_api.calls and not prov.has_process
    # Nothing of the container stays registered with the engine (no growth with churn).
    assert cid not in DockerEngine.instance()._subscribers
    assert not any(r[2] == cid for r in DockerEngine.instance()._reconnect_callbacks)


async def test_state_reread_after_missed_events_reports_the_death(fake_api: FakeAPI) -> None:
    prov = await launch(make_km())
    seen: list[int | None] = []
    prov.exit_callback = seen.append
    prov._on_event({"Action": "destroy"})  # e.g. removed while the event stream was away
    assert seen == [-1] and await prov.poll() == -1


async def test_secret_free_provisioner_info(fake_api: FakeAPI) -> None:
    km = make_km()
    prov = await launch(km)
    info = await prov.get_provisioner_info()
    assert "key" not in info["connection_info"] and info["container_id"] == prov.container_id


async def test_one_reading_of_a_kernels_limits(fake_api: FakeAPI) -> None:
    """What the container got is what resolve() says: capacity, stats and every dialect's info use it."""
    prov = await launch(make_km(), limits=KernelLimits(memory_bytes=256 * 2**20))
    hc = fake_api.calls[0][1]["host_config"]
    limits = prov.resolve(prov.limits)
    assert (limits.memory_bytes, limits.cpus, limits.pids) == (hc["Memory"], hc["NanoCpus"] / 1e9, hc["PidsLimit"])
    assert (limits.memory_bytes, limits.cpus, limits.pids) == (256 * 2**20, 1.0, 512)


async def test_a_gateway_kernel_settles_ready_without_jupyter_clients_test_sleep(
        fake_api: FakeAPI, monkeypatch: pytest.MonkeyPatch) -> None:
    """jupyter_client's in_pending_state sleeps 10 ms after every start and shutdown (for its own
    tests); GatewayKernel keeps the `ready` future and leaves the sleep out."""
    import jupyter_client.manager as jcm

    async def no_sleep(delay: float, *a: Any) -> None:
        raise AssertionError(f"jupyter_client slept {delay} s")

    monkeypatch.setattr(jcm.asyncio, "sleep", no_sleep)
    request = LaunchRequest.build(owner="ann", kernel_name="python3", requested_env={})
    km = GatewayKernel(kernel_name="python3", kernel_spec_manager=GatewayKernelSpecManager())
    await km.start_kernel(**{LAUNCH_REQUEST: request})
    assert km.ready.done() and km.ready.exception() is None and km.has_kernel

    fake_api.fail_start = True
    failing = GatewayKernel(kernel_name="python3", kernel_spec_manager=GatewayKernelSpecManager())
    with pytest.raises(Exception, match="no such runtime"):
        await failing.start_kernel(**{LAUNCH_REQUEST: request})
    assert failing.ready.done() and "no such runtime" in str(failing.ready.exception())


def test_one_runtime_per_engine(fake_api: FakeAPI) -> None:
    """The runtime keeps what it owes the engine (a limit's record update still due, which a start
    again must post first) and the kernels' socket folders: one per engine, never one per call."""
    assert current_backend() is current_backend()


async def test_a_kernel_without_a_network_talks_over_ipc_sockets_in_its_own_folder(fake_api: FakeAPI, tmp_path) -> None:
    runtime = current_backend()
    assert isinstance(runtime, ContainerRuntime)
    runtime.ipc_folders = IpcFolders(str(tmp_path / "kge-fake"))
    try:
        km = make_km()
        prov = await launch(km)
        folder = str(tmp_path / "kge-fake" / km.kernel_id)
        create = fake_api.calls[0][1]
        assert create["host_config"]["NetworkMode"] == "none"
        assert [(m["Source"], m["Target"]) for m in create["host_config"]["Mounts"] if m["Type"] == "bind"] == [
            (folder, "/run/kge-ipc")]
        assert json.loads(create["labels"]["org.kge.connection"])["transport"] == "ipc"
        inside = json.loads(fake_api.stdin[prov.container_id])  # what the kernel binds: its side of the mount
        assert (inside["transport"], inside["ip"]) == ("ipc", "/run/kge-ipc/k")
        assert (km.transport, km.ip) == ("ipc", folder + "/k")  # what the gateway connects to: the host's side
        assert zmq_url(km.get_connection_info(), "shell") == f"ipc://{folder}/k-50001"
        st = os.stat(folder)
        assert stat.S_IMODE(st.st_mode) == 0o700 and (os.geteuid() != 0 or st.st_uid == 1000)
        assert (await prov.get_provisioner_info())["ipc_dir"] == folder
        await prov.cleanup(restart=False)
        assert not os.path.exists(folder)
        fake_api.fail_start = True  # a failed start leaves no folder either
        with pytest.raises(Exception, match="no such runtime"):
            await launch(km2 := make_km())
        assert not os.path.exists(str(tmp_path / "kge-fake" / km2.kernel_id))
    finally:
        runtime.ipc_folders = None
