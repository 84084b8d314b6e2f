"""The container layer: the only code that speaks to a container engine (see backend.py)."""
from __future__ import annotations

from .backend import ContainerBackend


def current_backend() -> ContainerBackend:
    """The process's container backend: today the one local Docker engine."""
    from .engine import DockerEngine  # imported when first used: the layer's interface stays light
    from .runtime import ContainerRuntime

    return ContainerRuntime(DockerEngine.instance())


__all__ = ["ContainerBackend", "current_backend"]
