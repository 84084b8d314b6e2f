"""REST handlers of the Jupyter kernel API (jupyter_server's services/kernels and kernelspecs)."""
from __future__ import annotations

import mimetypes
import os
from typing import Any
from urllib.parse import quote

from tornado import web

from ..._version import __version__
from ...auth.authenticator import extract_token
from ...errors import BadRequest, NotFound
from ...kernels.specs import unknown_kernelspec
from ..base import BaseHandler

KERNEL_ID = r"(?P<kernel_id>\w+-\w+-\w+-\w+-\w+)"
KERNEL_NAME = r"(?P<kernel_name>[\w\.\-%]+)"


class ApiHandler(BaseHandler):
    """GET /api: version and what this gateway can run."""

    auth_required = False

    async def get(self) -> None:
        model: dict[str, Any] = {"version": __version__, "gateway": "kernel_gateway_ext"}
        # Kernel counts, pools and warnings are the operators' business: shown to callers who
        # authenticate as the gateway token or an admin key pair, the version to anyone.
        identity = await self.authenticate() if extract_token(self.request) else None
        if identity is not None and identity.admin:
            model.update(self.gateway.status_model())
        self.write_json(model)


class KernelSpecsMixin(BaseHandler):
    def spec_model(self, name: str, model: dict[str, Any]) -> dict[str, Any]:
        """The full form jupyter_server needs (`resources` present, logo URLs under /kernelspecs/)."""
        base = self.gateway.base_url
        resources = {}
        resource_dir = model["resource_dir"]
        try:
            files = sorted(os.listdir(resource_dir))
        except OSError:
            files = []
        for fname in files:
            stem, ext = os.path.splitext(fname)
            if fname == "kernel.json" or ext not in (".png", ".svg", ".js", ".css"):
                continue
            key = stem if stem.startswith("logo-") else fname
            resources[key] = f"{base}kernelspecs/{quote(name)}/{quote(fname)}"
        return {"name": name, "spec": model["spec"], "resources": resources}


class KernelSpecsHandler(KernelSpecsMixin):
    def get(self) -> None:
        ksm = self.gateway.kernel_spec_manager
        specs = {name: self.spec_model(name, m) for name, m in sorted(ksm.runnable_specs().items())}
        self.write_json({"default": ksm.default_name, "kernelspecs": specs})


class KernelSpecHandler(KernelSpecsMixin):
    def get(self, kernel_name: str) -> None:
        specs = self.gateway.kernel_spec_manager.runnable_specs()
        if kernel_name not in specs:
            raise unknown_kernelspec(kernel_name)
        self.write_json(self.spec_model(kernel_name, specs[kernel_name]))


class KernelSpecResourceHandler(BaseHandler):
    """GET /kernelspecs/NAME/FILE: logos and other files of a kernelspec."""

    def get(self, kernel_name: str, path: str) -> None:
        specs = self.gateway.kernel_spec_manager.runnable_specs()
        if kernel_name not in specs:
            raise unknown_kernelspec(kernel_name)
        root = os.path.realpath(specs[kernel_name]["resource_dir"])
        full = os.path.realpath(os.path.join(root, path))
        if not full.startswith(root + os.sep) or not os.path.isfile(full):
            raise NotFound(f"no resource {path!r} in kernelspec {kernel_name!r}")
        self.set_header("Content-Type", mimetypes.guess_type(full)[0] or "application/octet-stream")
        with open(full, "rb") as f:
            self.finish(f.read())


def _env_from_body(body: dict[str, Any]) -> dict[str, str]:
    env = body.get("env") or {}
    if not isinstance(env, dict):
        raise BadRequest("'env' must be an object of strings")
    for k, v in env.items():
        if not isinstance(k, str) or not isinstance(v, (str, int, float, bool)):
            raise BadRequest("'env' must be an object of strings")
    return {k: str(v) for k, v in env.items()}


class KernelsHandler(BaseHandler):
    async def get(self) -> None:
        others = await self.from_peers()  # first: a takeover it waits for may bring kernels here
        kms = self.visible(self.gateway.kernel_manager.list())
        self.write_json([km.model() for km in kms] + others)

    async def post(self) -> None:
        body = self.json_body()
        name = body.get("name")
        if name is not None and not isinstance(name, str):
            raise BadRequest("'name' must be a string")
        km = await self.gateway.kernel_manager.start(
            owner=self.identity.user, kernel_name=name or None, env=_env_from_body(body)
        )
        self.set_header("Location", f"{self.gateway.base_url}api/kernels/{quote(km.kernel_id)}")
        self.write_json(km.model(), status=201)


class KernelHandler(BaseHandler):
    record_kind = "kernel"
    async def get(self, kernel_id: str) -> None:
        km = self.owned_kernel(kernel_id)
        model = km.model()
        if km.docker is not None:
            # One kernel's info carries its container's figures (the list stays cheap for polling).
            stats = await km.docker.container.stats()
            model["stats"] = {"memory_bytes": stats["memory"], "memory_max_bytes": stats["memory_max"],
                              "memory_limit_bytes": km.effective_limits().memory_bytes or 0,
                              "cpu_seconds": stats["cpu_ns"] / 1e9}
        self.write_json(model)

    async def delete(self, kernel_id: str) -> None:
        await self.gateway.kernel_manager.shutdown(self.owned_kernel(kernel_id, action="write").kernel_id)
        self.set_status(204)
        self.finish()


class KernelActionHandler(BaseHandler):
    record_kind = "kernel"
    async def post(self, kernel_id: str, action: str) -> None:
        mgr = self.gateway.kernel_manager
        kernel_id = self.owned_kernel(kernel_id, action="write").kernel_id
        if action == "interrupt":
            await mgr.interrupt(kernel_id)
            self.set_status(204)
            self.finish()
        elif action == "restart":
            km = await mgr.restart(kernel_id)
            self.write_json(km.model())
        else:
            raise web.HTTPError(404)
