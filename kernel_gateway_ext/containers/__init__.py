"""The container layer: the only code that speaks to a container engine (see backend.py)."""
from __future__ import annotations

from typing import TYPE_CHECKING

from .backend import ContainerBackend

if TYPE_CHECKING:
    from .runtime import ContainerRuntime
    from .swarm import SwarmBackend

_cluster: dict[int, "SwarmBackend"] = {}  # the engine's id → its SwarmBackend (one per engine instance)
# The engine's id → its ContainerRuntime: one per engine, as it keeps what it owes the engine (a limit
# written into a cgroup whose record update is still due, which start_again must post first).
_runtime: dict[int, "ContainerRuntime"] = {}


def current_backend() -> ContainerBackend:
    """The process's container backend: the one Docker engine, or the Swarm cluster it manages
    (DockerEngine.backend)."""
    from .engine import DockerEngine  # imported when first used: the layer's interface stays light
    from .runtime import ContainerRuntime

    engine = DockerEngine.instance()
    if engine.backend != "swarm":
        runtime = _runtime.get(id(engine))
        if runtime is None or runtime.engine is not engine:
            _runtime.clear()
            runtime = _runtime[id(engine)] = ContainerRuntime(engine)
        return runtime
    backend = _cluster.get(id(engine))
    if backend is None or backend.manager is not engine:
        from .swarm import SwarmBackend

        close_cluster()
        backend = _cluster[id(engine)] = SwarmBackend(engine)
    return backend


def close_cluster() -> None:
    """Stop a cluster backend's node connections and threads (the gateway is stopping)."""
    for backend in _cluster.values():
        backend.close()
    _cluster.clear()


__all__ = ["ContainerBackend", "close_cluster", "current_backend"]
