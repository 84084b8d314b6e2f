"""Kernelspecs the gateway offers: container specs when a Docker engine answers, else the local fallback."""
from __future__ import annotations

import re
import sys
from typing import Any

from jupyter_client.kernelspec import KernelSpec, KernelSpecManager, NoSuchKernel
from traitlets import Bool, List, Unicode, default

from ..config import apply_env, env
from ..errors import KernelSpecNotFound
from ..resources import resource_path

FALLBACK_KEY = "kge_fallback"  # kernelspec metadata marking a local-process spec

# What a kernelspec's folder name may be (jupyter_client's rule), with a length cap: a name is
# checked before it reaches the file system, an error message or a metric label.
VALID_NAME = re.compile(r"[A-Za-z0-9._-]{1,128}")


def unknown_kernelspec(name: str) -> KernelSpecNotFound:
    """The 404 for a kernelspec name (echoing at most 64 characters of it)."""
    return KernelSpecNotFound(f"no kernelspec named {name[:64]!r}")


def bundled_kernelspec_dir() -> str:
    """The kernelspecs this package ships (package data, or the source tree's folder)."""
    return str(resource_path("kernelspecs"))


class GatewayKernelSpecManager(KernelSpecManager):
    """Finds our kernelspecs and hides those that cannot run here."""

    extra_kernelspec_dirs = env(
        List(Unicode(), help="More folders of kernelspecs (each a folder with kernel.json)."),
        "KGE_KERNELSPEC_DIRS",
    )
    docker_available = Bool(True, help="Set by the app after it asked the engine.")
    default_kernel_name = env(Unicode("python3", help="Kernelspec used when a request names none."), "KGE_DEFAULT_KERNEL")

    @default("kernel_dirs")
    def _kernel_dirs_default(self) -> list[str]:
        return [bundled_kernelspec_dir()]

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        apply_env(self, set(kwargs))
        self.kernel_dirs = [*self.extra_kernelspec_dirs, *self.kernel_dirs]
        self.ensure_native_kernel = False

    def _runnable(self, spec: KernelSpec) -> bool:
        return bool(spec.metadata.get(FALLBACK_KEY)) != self.docker_available

    def _load(self, kernel_name: str) -> KernelSpec:
        if not VALID_NAME.fullmatch(kernel_name):
            raise unknown_kernelspec(kernel_name)
        try:
            return super().get_kernel_spec(kernel_name)
        except NoSuchKernel as e:
            raise unknown_kernelspec(kernel_name) from e

    def get_kernel_spec(self, kernel_name: str) -> KernelSpec:
        spec = self._load(kernel_name)
        if not self._runnable(spec):
            raise unknown_kernelspec(kernel_name)
        # The local fallback runs with the gateway's own interpreter.
        spec.argv = [sys.executable if a == "{python}" else a for a in spec.argv]
        return spec

    def runnable_specs(self) -> dict[str, dict[str, Any]]:
        """name -> {"resource_dir", "spec"} of every spec that can run here."""
        out: dict[str, dict[str, Any]] = {}
        for name, resource_dir in self.find_kernel_specs().items():
            try:
                spec = self._load(name)
            except Exception as e:  # noqa: BLE001 - one broken spec must not hide the others
                self.log.warning("Kernelspec %s cannot be read: %s", name, e)
                continue
            if self._runnable(spec):
                out[name] = {"resource_dir": resource_dir, "spec": spec.to_dict()}
        return out

    @property
    def default_name(self) -> str:
        specs = self.runnable_specs()
        if self.default_kernel_name in specs:
            return self.default_kernel_name
        return next(iter(sorted(specs)), self.default_kernel_name)
