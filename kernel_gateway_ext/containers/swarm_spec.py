"""What a Swarm service is made of: the cluster backend's settings, and a ContainerSpec turned
into create_service's arguments (limits, reservations, placement, secrets, hardening) in one place."""
from __future__ import annotations

from typing import Any

import docker.types
from traitlets import Dict, Float, List, Unicode
from traitlets.config import LoggingConfigurable

from ..config import apply_env, env
from .engine import DockerEngine
from .spec import LABEL_KERNELSPEC, LABEL_KIND, ContainerSpec


class SwarmSettings(LoggingConfigurable):
    """Where the cluster's engines are and how containers are placed on it."""

    node_engines = env(
        Unicode("", help="Each node's engine, as NAME=URL pairs separated by commas (NAME: the node's hostname in "
                         "`docker node ls`; URL: unix:// or tcp:// with TLS). The gateway reaches a placed container "
                         "through its node's engine."),
        "KGE_SWARM_NODE_ENGINES",
    )
    constraints = env(
        List(Unicode(), help="Placement constraints for every container, Swarm's syntax "
                             "(e.g. node.labels.kge==true). Comma-separated in the env var."),
        "KGE_SWARM_CONSTRAINTS",
    )
    kernelspec_constraints = Dict(
        value_trait=List(Unicode()), default_value={},
        help="More placement constraints per kernelspec name, e.g. {'python3-gpu': ['node.labels.gpu==true']}.",
    ).tag(config=True)
    reservation_share = env(
        Float(0.4, help="Share of each container's memory limit reserved on its node (the scheduler places by "
                        "reservations). 0.4 matches the default memory budget of 250%: a node is full when what "
                        "it promised reaches 2.5 times its memory."),
        "KGE_SWARM_RESERVATION_SHARE",
    )
    cpu_reservation_share = env(
        Float(0.0, help="Share of each container's CPU limit reserved on its node. None by default: CPU is shared "
                        "(each container is capped by its limit), and idle kernels, most of them, use none; "
                        "reserving 0.4 of a core per kernel would fill a 2-core node with 5 kernels."),
        "KGE_SWARM_CPU_RESERVATION_SHARE",
    )
    gpu_resource = env(Unicode("NVIDIA-GPU", help="The generic resource a GPU request asks Swarm for."),
                       "KGE_SWARM_GPU_RESOURCE")
    start_timeout = env(Float(120.0, help="Seconds a service may take to be placed and started."),
                        "KGE_SWARM_START_TIMEOUT")

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        apply_env(self, set(kwargs))

    def engines(self) -> dict[str, str]:
        pairs = [p.strip() for p in self.node_engines.split(",") if p.strip()]
        out = {}
        for pair in pairs:
            name, sep, url = pair.partition("=")
            if not sep or not name or not url:
                raise ValueError(f"KGE_SWARM_NODE_ENGINES: {pair!r} is not NAME=URL")
            out[name.strip()] = url.strip()
        return out


def resources(memory: int, nano_cpus: int, pids: int, gpus: int, settings: SwarmSettings) -> docker.types.Resources:
    """Limits, and reservations (a share of them) that the scheduler places by."""
    res = docker.types.Resources(
        cpu_limit=nano_cpus, mem_limit=memory or None,
        cpu_reservation=int(nano_cpus * settings.cpu_reservation_share) or None,
        mem_reservation=int(memory * settings.reservation_share) or None,
        generic_resources={settings.gpu_resource: gpus} if gpus else None)
    if pids:
        res.setdefault("Limits", {})["Pids"] = pids  # API 1.41; docker-py has no argument for it
    return res


def service_spec(settings: SwarmSettings, manager: DockerEngine, spec: ContainerSpec, name: str,
                 secrets: list[docker.types.SecretReference]) -> dict[str, Any]:
    """create_service's arguments for `spec`: the same hardening as ContainerRuntime.create_kwargs
    where Swarm has it (no-new-privileges it has not before API 1.44: kge-nanny sets it in kernel
    containers, and every capability is dropped, so a setuid program gains none)."""
    labels = {**manager.our_labels(), LABEL_KIND: spec.kind, **spec.labels}
    mounts = [docker.types.Mount(target=m.target, source=m.source, type="bind", read_only=m.read_only)
              for m in spec.mounts]
    read_only = None
    if manager.read_only_rootfs:
        read_only = True
        mounts += [docker.types.Mount("/tmp", None, type="tmpfs"),
                   docker.types.Mount(spec.working_dir, None, type="volume")]
    container = docker.types.ContainerSpec(
        spec.image, command=spec.command, env=spec.env, workdir=spec.working_dir, user=spec.user, labels=labels,
        mounts=mounts or None, hostname=spec.hostname, secrets=secrets or None, init=spec.init,
        cap_drop=["ALL"], read_only=read_only)
    res = resources(spec.memory_bytes, max(int(spec.cpus * 1e9), 10**7), spec.pids, spec.gpus, settings)
    constraints = list(settings.constraints) + list(
        settings.kernelspec_constraints.get(spec.labels.get(LABEL_KERNELSPEC, ""), []))
    template = docker.types.TaskTemplate(
        container, resources=res, restart_policy=docker.types.RestartPolicy(condition="none"),
        placement=docker.types.Placement(constraints=constraints or None),
        log_driver=docker.types.DriverConfig("json-file", {"max-size": manager.log_max_size, "max-file": "2"}),
        networks=[docker.types.NetworkAttachmentConfig(spec.network or manager.network)])
    return {"task_template": template, "name": name, "labels": labels}
