"""Kernels of different users must not reach each other: ipykernel listens on every interface and
reading iopub needs no key. Every container is on a network with inter-container traffic off;
the gateway (the host) still reaches each kernel's ports."""
from __future__ import annotations

import ast
import asyncio
import contextlib
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator

import docker
import pytest

from kernel_gateway_ext.provisioners.docker import CONTAINER_PORTS
from kernel_gateway_ext.containers import hostguard
from kernel_gateway_ext.containers.engine import ICC_OPTION
from tests.clients.v2util import create_keys
from tests.conftest import Client
from tests.wsclient import KernelWS

PROBE = """
import socket
s = socket.socket(); s.settimeout(2)
try:
    s.connect(({ip!r}, {port})); print("CONNECTED")
except OSError as e:
    print("blocked", type(e).__name__)
"""


def address(docker_client: docker.DockerClient, kernel_id: str) -> tuple[str, str]:
    (container,) = docker_client.containers.list(filters={"label": f"org.kge.kernel.id={kernel_id}"})
    ((network, settings),) = container.attrs["NetworkSettings"]["Networks"].items()
    return network, settings["IPAddress"]


async def test_one_users_kernel_cannot_reach_anothers(gateway, docker_client) -> None:
    alice, bob = create_keys("iso-a-" + uuid.uuid4().hex[:4]), create_keys("iso-b-" + uuid.uuid4().hex[:4])
    ka = (await Client(gateway.url, alice.token).fetch("POST", "/api/kernels", {"name": "python3"})).json["id"]
    kb = (await Client(gateway.url, bob.token).fetch("POST", "/api/kernels", {"name": "python3"})).json["id"]
    net_b, ip_b = address(docker_client, kb)
    net_a, _ = address(docker_client, ka)
    assert net_a == net_b == "kge-isolated"
    assert docker_client.networks.get(net_b).attrs["Options"][ICC_OPTION] == "false"
    wa = await KernelWS.connect(gateway.url, ka, alice.token)
    for channel in ("iopub_port", "shell_port"):
        r = await wa.execute(PROBE.format(ip=ip_b, port=CONTAINER_PORTS[channel]))
        assert wa.stdout(r).startswith("blocked"), f"alice's kernel reached bob's {channel}: {wa.stdout(r)}"
    wb = await KernelWS.connect(gateway.url, kb, bob.token)  # the gateway reaches both
    assert wb.stdout(await wb.execute("print('bob ok')")) == "bob ok\n"
    for ws in (wa, wb):
        ws.close()
    await Client(gateway.url, alice.token).fetch("DELETE", f"/api/kernels/{ka}")
    await Client(gateway.url, bob.token).fetch("DELETE", f"/api/kernels/{kb}")


async def test_no_egress_makes_an_internal_network_and_kernels_go_without_one(make_gateway, docker_client) -> None:
    """The network (sessions') is made internal; kernels get none at all and are still reached (over
    IPC sockets: tests/faults/test_ipc_kernels.py; over TCP on the internal network where IPC cannot be)."""
    name = "kge-test-internal-" + uuid.uuid4().hex[:6]
    try:
        async with make_gateway(f"--DockerEngine.network={name}", "--DockerEngine.network_egress=False") as gw:
            net = docker_client.networks.get(name).attrs
            assert net["Internal"] is True and net["Options"][ICC_OPTION] == "false"  # inspected, never probed
            kid = (await gw.client.fetch("POST", "/api/kernels", {"name": "python3"})).json["id"]
            assert address(docker_client, kid)[0] == ("none" if os.geteuid() == 0 else name)
            ws = await KernelWS.connect(gw.url, kid, gw.client.token)
            assert ws.stdout(await ws.execute("print(6 * 7)")) == "42\n"
            ws.close()
            await gw.client.fetch("DELETE", f"/api/kernels/{kid}")
    finally:
        docker_client.networks.get(name).remove()


HOST_PROBE = """
import socket
found = {{}}
for ip in {ips!r}:
    s = socket.socket(); s.settimeout(3)
    try:
        s.connect((ip, {port})); found[ip] = "CONNECTED"
    except OSError as e:
        found[ip] = type(e).__name__
    s.close()
print(found)
"""


def host_addresses() -> list[str]:
    """Every IPv4 address of the host but loopback (docker0's and the bridges' included)."""
    out = subprocess.run(["ip", "-4", "-o", "addr", "show"], capture_output=True, text=True, check=True).stdout
    return [line.split()[3].split("/")[0] for line in out.splitlines() if not line.split()[3].startswith("127.")]


def guard_rules() -> list[str]:
    return [line for line in subprocess.run(["iptables", "-w", "-S", "INPUT"], capture_output=True, text=True,
                                            check=True).stdout.splitlines() if hostguard.COMMENT in line]


async def test_a_container_cannot_reach_the_hosts_services(make_gateway, docker_client) -> None:
    """A service of the host listening on every interface (a database, the gateway's own API) is
    out of a kernel's reach, at the bridge's address and every other address of the host; the same
    probe on a network the gateway was told not to guard does reach it (the probe can tell)."""
    accepted: list[int] = []

    def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(1)
        writer.close()
    server = await asyncio.start_server(on_connect, "0.0.0.0", 0)
    port = server.sockets[0].getsockname()[1]
    tag = uuid.uuid4().hex[:6]
    networks = {f"kge-test-guarded-{tag}": True, f"kge-test-open-{tag}": False}
    bridges = []
    try:
        for name, guarded in networks.items():
            async with make_gateway(f"--DockerEngine.network={name}", f"--DockerEngine.guard_host={guarded}") as gw:
                net = docker_client.networks.get(name).attrs
                bridge, bridge_ip = hostguard.bridge_of(net), net["IPAM"]["Config"][0]["Gateway"]
                bridges.append(bridge)
                assert any(f"-i {bridge} " in rule for rule in guard_rules()) == guarded
                if guarded:  # two gateways adding it at once leave two: the second goes
                    subprocess.run(["iptables", "-w", "-I", *hostguard.rule(bridge)], check=True)
                    assert bridge in hostguard.prune()
                    assert sum(f"-i {bridge} " in rule for rule in guard_rules()) == 1
                kid = (await gw.client.fetch("POST", "/api/kernels", {"name": "python3"})).json["id"]
                ws = await KernelWS.connect(gw.url, kid, gw.client.token)
                ips = [bridge_ip, *host_addresses()]
                found = ast.literal_eval(ws.stdout(await ws.execute(HOST_PROBE.format(ips=ips, port=port))))
                ws.close()
                await gw.client.fetch("DELETE", f"/api/kernels/{kid}")
                if guarded:
                    assert "CONNECTED" not in found.values() and not accepted, found
                    assert found[bridge_ip] == "ConnectionRefusedError", found  # refused at once, not left hanging
                else:
                    assert found[bridge_ip] == "CONNECTED" and accepted, found
    finally:
        server.close()
        for name in networks:
            with contextlib.suppress(docker.errors.NotFound):
                docker_client.networks.get(name).remove()
    kept = hostguard.prune()  # a removed network's rule goes at the next gateway's start; here, now
    assert not set(bridges) & set(kept) and not any(f"-i {b} " in rule for b in bridges for rule in guard_rules())


METADATA = "169.254.169.254"
METADATA_SERVER = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(("{ip}", 80)); s.listen()
print("ready", flush=True)
while True:
    c, _ = s.accept(); c.close(); print("accepted", flush=True)
"""


@contextlib.contextmanager
def metadata_service(tag: str) -> Iterator[subprocess.Popen[str]]:
    """A listener at 169.254.169.254:80 in a network namespace of its own, routed from the host
    through a veth pair, as a cloud's metadata service is reached from a VM (never the host's own
    address: traffic to it is forwarded, not INPUT)."""
    ns, host_end, ns_end = f"kgemd{tag}", f"kgemd{tag}h", f"kgemd{tag}c"
    steps = [["ip", "netns", "add", ns], ["ip", "link", "add", host_end, "type", "veth", "peer", "name", ns_end],
             ["ip", "link", "set", ns_end, "netns", ns], ["ip", "addr", "add", "169.254.169.1/24", "dev", host_end],
             ["ip", "link", "set", host_end, "up"],
             ["ip", "-n", ns, "addr", "add", f"{METADATA}/24", "dev", ns_end], ["ip", "-n", ns, "link", "set", ns_end, "up"],
             ["ip", "-n", ns, "link", "set", "lo", "up"]]
    server = None
    try:
        for step in steps:
            subprocess.run(step, check=True, capture_output=True)
        server = subprocess.Popen(["nsenter", f"--net=/var/run/netns/{ns}", sys.executable, "-c",
                                   METADATA_SERVER.format(ip=METADATA)], stdout=subprocess.PIPE, text=True)
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        yield server
    finally:
        if server is not None:
            server.kill()
            server.wait()
        subprocess.run(["ip", "link", "del", host_end], capture_output=True)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


async def test_a_container_cannot_reach_a_cloud_metadata_service(make_gateway, docker_client) -> None:
    """A cloud's metadata service (169.254.169.254) hands the host's credentials to whoever asks
    from the host: a kernel's request is refused at once on a guarded network, and reaches it on
    one the gateway was told not to guard (the probe can tell)."""
    if os.geteuid() != 0:
        pytest.skip("!!! SKIPPED, NEEDS ROOT: a network namespace for the metadata service")
    tag = uuid.uuid4().hex[:6]
    networks = {f"kge-test-mdguard-{tag}": True, f"kge-test-mdopen-{tag}": False}
    bridges: list[str | None] = []
    try:
        with metadata_service(tag) as server:
            for name, guarded in networks.items():
                async with make_gateway(f"--DockerEngine.network={name}", f"--DockerEngine.guard_host={guarded}") as gw:
                    bridge = hostguard.bridge_of(docker_client.networks.get(name).attrs)
                    listed = subprocess.run(["iptables", "-w", "-S", "DOCKER-USER"], capture_output=True, text=True,
                                            check=True).stdout
                    bridges.append(bridge)
                    assert (f"-d {hostguard.LINK_LOCAL} -i {bridge} " in listed) == guarded, listed
                    kid = (await gw.client.fetch("POST", "/api/kernels", {"name": "python3"})).json["id"]
                    ws = await KernelWS.connect(gw.url, kid, gw.client.token)
                    found = ast.literal_eval(ws.stdout(await ws.execute(HOST_PROBE.format(ips=[METADATA], port=80))))
                    ws.close()
                    await gw.client.fetch("DELETE", f"/api/kernels/{kid}")
                    want = "ConnectionRefusedError" if guarded else "CONNECTED"
                    assert found[METADATA] == want, (name, found)
            server.kill()
            assert server.stdout is not None and server.stdout.read().count("accepted") == 1  # the open network's
    finally:
        for name in networks:
            with contextlib.suppress(docker.errors.NotFound):
                docker_client.networks.get(name).remove()
    hostguard.prune()  # the removed networks' rules, in both chains
    listed = subprocess.run(["iptables", "-w", "-S"], capture_output=True, text=True).stdout
    assert not any(f"-i {b} " in listed for b in bridges), listed


async def test_every_container_has_a_bounded_log(gateway, docker_client) -> None:
    """A kernel or job printing forever must not fill the engine's disk."""
    from tests.api.test_skaha_api import IMAGE, create

    kid = (await gateway.client.fetch("POST", "/api/kernels", {"name": "python3"})).json["id"]
    keys = create_keys("logs-" + uuid.uuid4().hex[:4])
    status, sid = await create(gateway, keys, name="chatty", image=IMAGE, cmd="sleep", args="60")
    assert status == 200, sid
    kernel = docker_client.containers.list(filters={"label": f"org.kge.kernel.id={kid}"})[0]
    for _ in range(100):  # the session's container is made in the background
        found = docker_client.containers.list(all=True, filters={"label": f"org.kge.session.id={sid.strip()}"})
        if found:
            break
        await asyncio.sleep(0.1)
    session = found[0]
    for container in (kernel, session):
        log = container.attrs["HostConfig"]["LogConfig"]
        assert log["Type"] == "json-file" and log["Config"] == {"max-size": "10m", "max-file": "2"}, log
    await gateway.client.fetch("DELETE", f"/api/kernels/{kid}")
    await Client(gateway.url, None).fetch("DELETE", f"/skaha/v0/session/{sid.strip()}", token=None,
                                          headers={"Authorization": f"Bearer {keys.token}"})


async def test_read_only_root_filesystem_option(make_gateway, docker_client) -> None:
    """With read_only_rootfs, a kernel cannot change the image's programs for itself (e.g. plant a
    trojan `python3` for its next restart), yet its home, /tmp, uploads, restarts and Skaha jobs work."""
    from urllib.parse import urlencode

    from tests.api.test_v2_auth_and_input import multipart, signed

    async with make_gateway("--DockerEngine.read_only_rootfs=True") as gw:
        r = await gw.client.fetch("POST", "/api/kernels", {"name": "python3"})
        assert r.status == 201, r.body
        kid = r.json["id"]
        (container,) = docker_client.containers.list(filters={"label": f"org.kge.kernel.id={kid}"})
        assert container.attrs["HostConfig"]["ReadonlyRootfs"] is True
        volumes = [m["Name"] for m in container.attrs["Mounts"] if m["Type"] == "volume"]
        assert len(volumes) == 2  # home and /run/kge, anonymous
        ws = await KernelWS.connect(gw.url, kid, gw.client.token)
        try:
            code = ("import os, sys\n"
                    "def tries(p):\n"
                    "    try:\n        open(p, 'w').write('x'); return 'rw'\n"
                    "    except OSError as e:\n        return 'ro' if e.errno == 30 else str(e)\n"
                    "print(tries(sys.executable + '.planted'), tries('/etc/motd2'), tries('/tmp/t'), tries('/home/work/t'))")
            out = await ws.execute(code)
            assert ws.stdout(out) == "ro ro rw rw\n", out
        finally:
            ws.close()
        assert (await gw.client.fetch("POST", f"/api/kernels/{kid}/restart", {})).status == 200
        ws = await KernelWS.connect(gw.url, kid, gw.client.token)
        try:
            out = await ws.execute("print(open('/home/work/t').read())")
            assert ws.stdout(out) == "x\n"  # the home volume outlives a restart, as the container does
        finally:
            ws.close()
        # a v2 upload into a read-only container lands in its home volume
        keys = create_keys("ro-" + uuid.uuid4().hex[:6])
        import json
        status, created = await signed(gw, keys, "POST", "/v2/kernel/create",
                                       json.dumps({"lang": "python3", "clientSessionToken": "ro-1"}).encode())
        assert status == 201, created
        ctype, body = multipart([("up.txt", b"uploaded")])
        status, _ = await signed(gw, keys, "POST", "/v2/kernel/ro-1/upload", body, content_type=ctype)
        assert status == 204
        run = json.dumps({"mode": "query", "runId": "r", "code": "print(open('up.txt').read())"}).encode()
        status, out = await signed(gw, keys, "POST", "/v2/kernel/ro-1", run)
        assert out["result"]["console"] == [["stdout", "uploaded\n"]], out
        # a Skaha job too
        c = Client(gw.url, None)
        h = {"Authorization": f"Bearer {keys.token}", "X-Skaha-Authentication-Type": "token"}
        query = urlencode({"name": "ro", "image": "images.canfar.net/skaha/terminal:1.1.1", "cmd": "sh",
                           "args": "-c 'touch /usr/bin/x 2>/dev/null || echo ro; echo ok > /tmp/t && cat /tmp/t'"})
        sid = (await c.fetch("POST", "/skaha/v0/session?" + query, headers=h, token=None)).body.decode().strip()
        for _ in range(100):
            info = (await c.fetch("GET", f"/skaha/v1/session/{sid}", headers=h, token=None)).json
            if info["status"] in ("Succeeded", "Error"):
                break
            await asyncio.sleep(0.2)
        logs = (await c.fetch("GET", f"/skaha/v0/session/{sid}?view=logs", headers=h, token=None)).body.decode()
        assert info["status"] == "Succeeded" and logs.split() == ["ro", "ok"], (info, logs)
    left = [v for v in volumes if docker_client.volumes.list(filters={"name": v})]
    assert not left, f"volumes left behind: {left}"
