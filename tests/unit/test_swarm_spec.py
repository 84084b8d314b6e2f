"""A ContainerSpec as a Swarm service: limits, reservations, pids, GPUs as generic resources,
placement constraints (everywhere and per kernelspec), secrets and hardening. No engine is
needed (the translation; tests/cluster/ runs it on a real cluster, which has no GPU here)."""
from __future__ import annotations

import docker.types
import pytest

from kernel_gateway_ext.containers.engine import DockerEngine
from kernel_gateway_ext.containers.fleet import Fleet
from kernel_gateway_ext.containers.backend import Node
from kernel_gateway_ext.containers.spec import BindMount, ContainerSpec
from kernel_gateway_ext.containers.swarm_spec import SwarmSettings, service_spec


def make(**kw: object) -> dict:
    engine = DockerEngine(gateway_id="gw1", network="kge-swarm")
    settings = SwarmSettings(constraints=["node.labels.kge==true"],
                             kernelspec_constraints={"python3-gpu": ["node.labels.gpu==true"]}, reservation_share=0.5,
                             cpu_reservation_share=0.5)
    spec = ContainerSpec(image="kge-kernel:latest", command=["kge-nanny", "--", "python3"], kind="kernel",
                         labels={"org.kge.kernelspec": "python3-gpu", "org.kge.owner": "alice"},
                         memory_bytes=2 * 2**30, cpus=1.5, pids=256, gpus=2,
                         mounts=[BindMount("/srv/folders/a", "/home/work/data", read_only=True)])
    for k, v in kw.items():
        setattr(spec, k, v)
    secret = docker.types.SecretReference("sid", "kge-kernel-x-0", filename="/run/kge-in/connection.json",
                                          uid="1000", gid="1000", mode=0o400)
    return service_spec(settings, engine, spec, "kge-kernel-x", [secret])


def test_limits_reservations_pids_and_gpus() -> None:
    t = make()["task_template"]
    res = t["Resources"]
    assert res["Limits"] == {"NanoCPUs": 1_500_000_000, "MemoryBytes": 2 * 2**30, "Pids": 256}
    assert res["Reservations"]["NanoCPUs"] == 750_000_000 and res["Reservations"]["MemoryBytes"] == 2**30
    gen = res["Reservations"]["GenericResources"]
    assert gen == [{"DiscreteResourceSpec": {"Kind": "NVIDIA-GPU", "Value": 2}}]
    assert "GenericResources" not in make(gpus=0)["task_template"]["Resources"].get("Reservations", {})
    assert "NanoCPUs" not in service_spec(SwarmSettings(), DockerEngine(), ContainerSpec("i", None, "kernel", memory_bytes=2**30), "n",
                                          [])["task_template"]["Resources"]["Reservations"]


def test_placement_hardening_secrets_and_labels() -> None:
    args = make()
    t = args["task_template"]
    assert t["Placement"]["Constraints"] == ["node.labels.kge==true", "node.labels.gpu==true"]
    assert t["RestartPolicy"]["Condition"] == "none"
    c = t["ContainerSpec"]
    assert c["CapabilityDrop"] == ["ALL"] and c["Init"] is True and c["User"] == "1000:1000"
    assert c["Mounts"][0]["Source"] == "/srv/folders/a" and c["Mounts"][0]["ReadOnly"] is True
    secret = c["Secrets"][0]
    assert secret["File"] == {"Name": "/run/kge-in/connection.json", "UID": "1000", "GID": "1000", "Mode": 0o400}
    assert [n["Target"] for n in t["Networks"]] == ["kge-swarm"]
    assert args["labels"]["org.kge.gateway"] == "gw1" and args["labels"]["org.kge.managed"] == "true"
    assert c["Labels"] == args["labels"]  # the node's container carries them too (its events are filtered by them)
    other = make(labels={"org.kge.kernelspec": "python3"})["task_template"]["Placement"]["Constraints"]
    assert other == ["node.labels.kge==true"]


def test_a_request_no_single_node_fits() -> None:
    fleet = Fleet()
    fleet.nodes = [Node("n1", 8 * 2**30, 4.0), Node("n2", 16 * 2**30, 2.0)]
    assert fleet.total_memory() == 24 * 2**30
    assert fleet.fits_one(12 * 2**30, 2.0) == ""
    why = fleet.fits_one(12 * 2**30, 4.0)  # each node has one of the two, neither has both
    assert why.startswith("no node can hold 12.0 GiB and 4 CPUs") and "largest of 2" in why


@pytest.mark.parametrize("raw, err", [("n1", "not NAME=URL"), ("=unix:///x", "not NAME=URL")])
def test_node_engines_setting(raw: str, err: str) -> None:
    assert SwarmSettings(node_engines="a=unix:///a.sock, b=tcp://b:2376").engines() == {
        "a": "unix:///a.sock", "b": "tcp://b:2376"}
    with pytest.raises(ValueError, match=err):
        SwarmSettings(node_engines=raw).engines()
