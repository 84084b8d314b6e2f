"""The Jupyter kernel REST API against an in-process gateway and real containers."""
from __future__ import annotations

import re
import uuid

import pytest

from tests.conftest import TOKEN

TIME_FORMAT = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")
UUID = re.compile(r"^\w+-\w+-\w+-\w+-\w+$")


async def test_api_is_open_but_shows_state_to_operators_only(gateway) -> None:
    r = await gateway.client.fetch("GET", "/api", token=None)
    assert r.status == 200 and set(r.json) == {"version", "gateway"}, r.json  # no counts, pools, warnings
    r = await gateway.client.fetch("GET", "/api")
    assert r.status == 200 and r.json["docker"] is True and "kernels" in r.json and "version" in r.json
    from tests.clients.v2util import create_keys

    user = create_keys("api-user-" + uuid.uuid4().hex[:6])
    r = await gateway.client.fetch("GET", "/api", token=user.token)
    assert r.status == 200 and "kernels" not in r.json
    assert (await gateway.client.fetch("GET", "/metrics", token=user.token)).status == 403
    assert (await gateway.client.fetch("GET", "/metrics")).status == 200


@pytest.mark.parametrize("how", ["none", "wrong", "token", "bearer", "query"])
async def test_auth_forms(gateway, how) -> None:
    c = gateway.client
    if how == "none":
        r = await c.fetch("GET", "/api/kernels", token=None)
    elif how == "wrong":
        r = await c.fetch("GET", "/api/kernels", token="nope")
    elif how == "token":
        r = await c.fetch("GET", "/api/kernels", token=None, headers={"Authorization": f"token {TOKEN}"})
    elif how == "bearer":
        r = await c.fetch("GET", "/api/kernels", token=None, headers={"Authorization": f"Bearer {TOKEN}"})
    else:
        r = await c.fetch("GET", f"/api/kernels?token={TOKEN}", token=None)
    if how in ("none", "wrong"):
        assert r.status == 401 and r.json["message"] and r.headers["Content-Type"] == "application/json"
    else:
        assert r.status == 200 and r.json == []


async def test_kernelspecs_full_form_with_logos(gateway) -> None:
    r = await gateway.client.fetch("GET", "/api/kernelspecs")
    assert r.status == 200 and r.json["default"] == "python3"
    specs = r.json["kernelspecs"]
    assert set(specs) == {"python3", "python3-datascience", "bash"}  # the local fallback is hidden while Docker answers
    for name, model in specs.items():
        assert model["name"] == name and model["spec"]["display_name"] and isinstance(model["resources"], dict)
        logo = model["resources"]["logo-64x64"]
        assert "/kernelspecs/" in logo
        img = await gateway.client.fetch("GET", logo)
        assert img.status == 200 and img.body.startswith(b"\x89PNG") and img.headers["Content-Type"] == "image/png"
    one = await gateway.client.fetch("GET", "/api/kernelspecs/bash")
    assert one.json["spec"]["language"] == "bash"
    assert (await gateway.client.fetch("GET", "/api/kernelspecs/nope")).status == 404
    assert (await gateway.client.fetch("GET", "/kernelspecs/python3/..%2f..%2fpyproject.toml")).status == 404
    assert (await gateway.client.fetch("GET", "/kernelspecs/python3/kernel.json")).status == 200


@pytest.mark.parametrize("body,status", [
    (b"{not json", 400), (b"[1,2]", 400), (b'{"name": 5}', 400), (b'{"env": "x"}', 400),
    (b'{"env": {"A": {"b": 1}}}', 400), (b'{"name": "no-such-spec"}', 404),
])
async def test_bad_create_requests(gateway, docker_client, body, status) -> None:
    r = await gateway.client.fetch("POST", "/api/kernels", raw=body)
    assert r.status == status, r.body
    assert "message" in r.json and "Traceback" not in r.body.decode()
    assert not docker_client.containers.list(all=True, filters={"label": f"org.kge.gateway={gateway.gateway_id}"})


async def test_kernel_lifecycle(gateway, docker_client) -> None:
    c = gateway.client
    r = await c.fetch("POST", "/api/kernels", {"name": "python3", "path": None,
                                                "env": {"KERNEL_USERNAME": "ann", "KERNEL_LAUNCH_TIMEOUT": "40", "NOT_KERNEL": "x"}})
    assert r.status == 201, r.body
    k = r.json
    assert UUID.match(k["id"]) and TIME_FORMAT.match(k["last_activity"])
    assert k["execution_state"] == "idle" and k["connections"] == 0 and k["name"] == "python3"
    assert r.headers["Location"].endswith(f"/api/kernels/{k['id']}")
    kid = k["id"]

    # the container: ours, labelled, bounded, hardened, key-free
    (container,) = docker_client.containers.list(filters={"label": f"org.kge.kernel.id={kid}"})
    attrs = container.attrs
    labels = attrs["Config"]["Labels"]
    assert labels["org.kge.gateway"] == gateway.gateway_id and labels["org.kge.owner"] == "admin"
    hc = attrs["HostConfig"]
    assert hc["Memory"] > 0 and hc["NanoCpus"] > 0 and hc["PidsLimit"] > 0
    assert "no-new-privileges" in hc["SecurityOpt"] and hc["CapDrop"] == ["ALL"]
    assert not attrs["NetworkSettings"]["Ports"]  # nothing published on the host
    env = dict(e.split("=", 1) for e in attrs["Config"]["Env"])
    assert env["KERNEL_USERNAME"] == "ann" and "NOT_KERNEL" not in env
    assert gateway.app.kernel_manager.get(kid).session.key.decode() not in str(attrs)
    assert attrs["Config"]["User"] == "1000:1000"

    assert [x["id"] for x in (await c.fetch("GET", "/api/kernels")).json] == [kid]
    assert (await c.fetch("GET", f"/api/kernels/{kid}")).json["id"] == kid
    assert (await c.fetch("POST", f"/api/kernels/{kid}/interrupt", {})).status == 204
    r = await c.fetch("POST", f"/api/kernels/{kid}/restart", {})
    assert r.status == 200 and r.json["id"] == kid
    (again,) = docker_client.containers.list(filters={"label": f"org.kge.kernel.id={kid}"})
    assert again.id == container.id  # restarted in place
    assert (await c.fetch("DELETE", f"/api/kernels/{kid}")).status == 204
    assert not docker_client.containers.list(all=True, filters={"label": f"org.kge.kernel.id={kid}"})
    # GET and DELETE of a gone kernel: 404 (the client retries them, so they must be idempotent)
    assert (await c.fetch("GET", f"/api/kernels/{kid}")).status == 404
    assert (await c.fetch("DELETE", f"/api/kernels/{kid}")).status == 404
    assert (await c.fetch("POST", f"/api/kernels/{uuid.uuid4()}/restart", {})).status == 404


async def test_killed_container_is_reported_dead_and_restart_revives(make_gateway, docker_client) -> None:
    async with make_gateway("--GatewayKernelManager.autorestart=False") as gateway:
        await _reported_dead_then_revived(gateway, docker_client)


async def _reported_dead_then_revived(gateway, docker_client) -> None:
    c = gateway.client
    kid = (await c.fetch("POST", "/api/kernels", {})).json["id"]
    (container,) = docker_client.containers.list(filters={"label": f"org.kge.kernel.id={kid}"})
    container.kill()
    import asyncio

    for _ in range(40):
        model = (await c.fetch("GET", f"/api/kernels/{kid}")).json
        if model["execution_state"] == "dead":
            break
        await asyncio.sleep(0.05)
    assert model["execution_state"] == "dead" and "137" in model.get("reason", "")
    assert (await c.fetch("POST", f"/api/kernels/{kid}/interrupt", {})).status == 409
    r = await c.fetch("POST", f"/api/kernels/{kid}/restart", {})
    assert r.status == 200 and r.json["execution_state"] == "idle"
    assert (await c.fetch("DELETE", f"/api/kernels/{kid}")).status == 204


async def test_failed_start_leaves_nothing(make_gateway, docker_client, tmp_path) -> None:
    spec = tmp_path / "broken"
    spec.mkdir()
    (spec / "kernel.json").write_text(
        '{"argv": ["python3", "-m", "ipykernel_launcher", "-f", "{connection_file}"], "display_name": "broken",'
        ' "language": "python", "metadata": {"kernel_provisioner": {"provisioner_name": "kge-docker-provisioner",'
        ' "config": {"image": "kge-no-such-image:latest"}}}}'
    )
    spec2 = tmp_path / "crashes"
    spec2.mkdir()
    (spec2 / "kernel.json").write_text(
        '{"argv": ["python3", "-c", "import sys; print(\\"bad kernel\\"); sys.exit(3)"], "display_name": "crashes",'
        ' "language": "python", "metadata": {"kernel_provisioner": {"provisioner_name": "kge-docker-provisioner"}}}'
    )
    async with make_gateway(f"--GatewayKernelSpecManager.extra_kernelspec_dirs={tmp_path}") as gw:
        r = await gw.client.fetch("POST", "/api/kernels", {"name": "broken"})
        assert r.status == 500 and "kge-no-such-image" in r.json["message"]
        r = await gw.client.fetch("POST", "/api/kernels", {"name": "crashes"})
        assert r.status == 500 and "exit code 3" in r.json["message"], r.json
        assert (await gw.client.fetch("GET", "/api/kernels")).json == []
        assert not docker_client.containers.list(all=True, filters={"label": f"org.kge.gateway={gw.gateway_id}"})


async def test_sessions_api(gateway) -> None:
    c = gateway.client
    r = await c.fetch("POST", "/api/sessions", {"path": "a.ipynb", "name": "a", "type": "notebook", "kernel": {"name": "python3"}})
    assert r.status == 201, r.body
    s = r.json
    assert s["path"] == "a.ipynb" and s["kernel"]["name"] == "python3"
    assert [x["id"] for x in (await c.fetch("GET", "/api/sessions")).json] == [s["id"]]
    r = await c.fetch("PATCH", f"/api/sessions/{s['id']}", {"path": "b.ipynb"})
    assert r.json["path"] == "b.ipynb"
    assert (await c.fetch("DELETE", f"/api/sessions/{s['id']}")).status == 204
    assert (await c.fetch("GET", f"/api/sessions/{s['id']}")).status == 404
    assert (await c.fetch("GET", "/api/kernels")).json == []


async def test_unknown_path_is_json_404(gateway) -> None:
    r = await gateway.client.fetch("GET", "/api/nothing-here")
    assert r.status == 404 and r.json["message"]
