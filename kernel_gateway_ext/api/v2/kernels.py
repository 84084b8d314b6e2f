"""/v2/kernel/…: create (get-or-create by client token), info, execute, restart, destroy, …"""
from __future__ import annotations

import re
import time
from urllib.parse import unquote
from typing import Any

from tornado import web

from ...errors import BadRequest, KernelDead, KernelNotFound
from ...folders import safe_relative_path
from ...kernels.adoption import gateway_id
from ...kernels.manager import GatewayKernel
from ...replicas.forward import FORWARDED, pass_on
from ...containers.limits import KernelLimits, parse_memory
from ..base import StreamedBody
from .base import V2Handler

TOKEN_RE = re.compile(r"^\w[\w.-]*\w$")
MAX_UPLOAD_FILES, MAX_UPLOAD_BYTES = 20, 2**20
MODES = ("query", "batch", "continue", "input")


def _number(value: Any, what: str, *, integer: bool = False) -> float | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise BadRequest(f"{what} must be a number")
    try:
        n = float(value)
    except (TypeError, ValueError) as e:
        raise BadRequest(f"{what} must be a number") from e
    if n < 0 or n != n or n == float("inf") or (integer and n != int(n)):
        raise BadRequest(f"{what} must be a non-negative {'integer' if integer else 'number'}")
    return n


def _memory_mib(value: Any) -> int | None:
    """instanceMemory: MiB as a number ("256") or a size ("1g")."""
    if value is None or value == "":
        return None
    if isinstance(value, str) and not re.fullmatch(r"\d+(\.\d+)?", value.strip()[:64]):
        return parse_memory(value)
    n = _number(value, "instanceMemory")
    return int(n * 2**20) if n else None


def _env(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", k)
                                              and isinstance(v, (str, int, float)) for k, v in value.items()):
        raise BadRequest("envs must map variable names to strings")
    return {k: str(v) for k, v in value.items()}


class KernelCreateHandler(V2Handler):
    async def post(self) -> None:
        body = self.body_object()
        lang, token = body.get("lang"), body.get("clientSessionToken")
        if not isinstance(lang, str) or not lang or len(lang) > 128:
            raise BadRequest("'lang' is required")
        if not isinstance(token, str) or not (4 <= len(token) <= 64) or not TOKEN_RE.match(token):
            raise BadRequest("'clientSessionToken' must be 4-64 characters: letters, digits, _ . -")
        config = body.get("config") or {}
        limits_in = body.get("limits") or {}
        if not isinstance(config, dict) or not isinstance(limits_in, dict):
            raise BadRequest("'config' and 'limits' must be objects")
        mem_kib = _number(limits_in.get("maxMem"), "limits.maxMem", integer=True)
        mem = int(mem_kib * 1024) if mem_kib else _memory_mib(config.get("instanceMemory"))
        cores = _number(config.get("instanceCores"), "instanceCores")
        gpus = _number(config.get("instanceGPUs"), "instanceGPUs", integer=True)
        exec_ms = _number(limits_in.get("execTimeout"), "limits.execTimeout")
        # idleTimeout (ms, like execTimeout): the kernel is culled after so long without activity.
        idle_ms = _number(limits_in.get("idleTimeout", config.get("idleTimeout")), "idleTimeout")
        limits = KernelLimits(memory_bytes=mem or None, cpus=cores or None, gpus=int(gpus or 0))
        user_env = {**_env(config.get("envs")), **_env(config.get("environ"))}
        mounts_in = config.get("mounts") if config.get("mounts") is not None else body.get("mounts")
        gw = self.gateway
        mgr = gw.kernel_manager
        exec_timeout = exec_ms / 1000.0 if exec_ms else None
        mgr.capacity.check_limits(limits, exec_timeout)  # 406 before anything else is touched
        mounts = await gw.folders.mounts(self.identity.user, mounts_in)
        if await self.forwarded_to_token_home(token):
            return
        km, created = await mgr.tokens.get_or_start(
            owner=self.identity.user, client_token=token, lang=lang, limits=limits, mounts=mounts,
            user_env=user_env, exec_timeout=exec_timeout, idle_timeout=idle_ms / 1000.0 if idle_ms else None,
        )
        # The v2-era manager answered its session id, the client token, as kernelId: the id `run` prints
        # is the one `ps` lists. Lookups by the Jupyter kernel id keep working (get_by_id_or_token).
        self.write_json({"kernelId": km.client_token or km.kernel_id, "created": created}, status=201)

    async def forwarded_to_token_home(self, token: str) -> bool:
        """With replicas: the replica that claimed this owner's token makes its kernel (one kernel
        even when two replicas are asked at once); True when the request went there."""
        gw = self.gateway
        if not gw.replicas.enabled or FORWARDED in self.request.headers:
            return False
        store, owner, cluster = gw.store, self.identity.user, gateway_id()

        async def homes() -> set[str]:
            return {await store.claim(cluster, owner, token)}
        return await pass_on(self, gw.replicas, homes, token)


class KernelMixin(V2Handler):
    def kernel(self, kernel_id: str, action: str = "read") -> GatewayKernel:
        """By the Jupyter kernel id or the session id (client token) v2 clients name it with."""
        return self.owned_kernel(kernel_id, by_token=True, action=action)

    async def info(self, km: GatewayKernel) -> dict[str, Any]:
        stats = await km.docker.container.stats() if km.docker is not None else {"memory": 0, "cpu_ns": 0}
        mem_limit = km.effective_limits().memory_bytes or 0
        now = time.monotonic()
        return {
            "lang": km.lang or km.kernel_name,
            "age": int((now - km.created_monotonic) * 1000),
            "idle": int(max(0.0, time.time() - km.last_activity.timestamp()) * 1000),
            "queryTimeout": int((km.exec_timeout or 0) * 1000),
            "idleTimeout": int(self.gateway.kernel_manager.culler.idle_timeout_of(km) * 1000),
            "memoryLimit": mem_limit // 1024,
            "maxCpuCredit": int((km.exec_timeout or 0) * 1000),
            "numQueriesExecuted": km.num_queries,
            "memoryUsed": stats["memory"] // 1024,
            "cpuCreditUsed": stats["cpu_ns"] // 1_000_000,
            "executionState": km.execution_state,
            "node": km.node,
        }


class KernelHandler(KernelMixin):
    record_kind = "kernel"
    by_token = True
    async def get(self, kernel_id: str) -> None:
        self.write_json(await self.info(self.kernel(kernel_id)))

    async def patch(self, kernel_id: str) -> None:
        km = self.kernel(kernel_id, "write")
        await self.gateway.kernel_manager.restart(km.kernel_id)
        self.no_content()

    async def delete(self, kernel_id: str) -> None:
        km = self.kernel(kernel_id, "write")
        stats = await km.docker.container.stats() if km.docker is not None else {"memory": 0, "memory_max": 0, "cpu_ns": 0}
        await self.gateway.kernel_manager.shutdown(km.kernel_id, now=True)
        self.write_json({"stats": {
            "cpu_used": stats["cpu_ns"] // 1_000_000,
            "mem_max_bytes": stats.get("memory_max", 0),
            "mem_cur_bytes": stats["memory"],
            "num_queries": km.num_queries,
        }})

    async def post(self, kernel_id: str) -> None:
        km = self.kernel(kernel_id, "execute")
        body = self.body_object()
        mode = body.get("mode", "query")
        code = body.get("code", "")
        run_id = body.get("runId")
        if mode not in MODES:
            raise BadRequest(f"'mode' must be one of {', '.join(MODES)}")
        if not isinstance(code, str) or (run_id is not None and not isinstance(run_id, str)):
            raise BadRequest("'code' must be a string and 'runId' a string or null")
        mgr = self.gateway.kernel_manager
        timeout = km.exec_timeout or mgr.hard_exec_timeout
        if mode in ("query", "batch"):
            self.gateway.metrics.executes.labels("v2").inc()
        if mode == "batch":
            result = await self.batch(km, body.get("options") or {}, run_id, timeout)
        else:
            runner = km.runner(mgr.run_flush_interval)
            result = await runner.execute(mode, code, run_id, timeout)
        self.write_json({"result": result})

    async def batch(self, km: GatewayKernel, options: Any, run_id: str | None, timeout: float) -> dict[str, Any]:
        """Build, then exec: shell commands in the kernel's container ('*' = the default)."""
        if not isinstance(options, dict):
            raise BadRequest("'options' must be an object")
        prov = km.docker
        if prov is None:
            raise BadRequest("batch mode needs a container kernel")
        build, exec_ = options.get("build"), options.get("exec")
        console: list[list[Any]] = []
        code = 0
        for step, command in (("build", build), ("exec", exec_)):
            if not command or (step == "build" and command == "*"):
                continue  # '*' builds nothing: the kernel image has what it needs
            if command == "*":
                command = "python3 main.py" if km.lang.startswith("python") else "bash main.sh"
            if not isinstance(command, str):
                raise BadRequest("'build' and 'exec' must be strings")
            code, out, err = await prov.container.run_command(command, timeout)
            console += [["stdout", out]] if out else []
            console += [["stderr", err]] if err else []
            if code != 0:
                break
        km.num_queries += 1
        km.touch()
        return {"runId": run_id or "batch", "status": "finished", "console": console, "exitCode": code, "options": {}}


@web.stream_request_body
class KernelActionHandler(StreamedBody, KernelMixin):
    record_kind = "kernel"
    by_token = True
    async def post(self, kernel_id: str, action: str) -> None:
        await self.take_body()
        km = self.kernel(kernel_id, "execute")
        mgr = self.gateway.kernel_manager
        if action == "interrupt":
            await mgr.interrupt(km.kernel_id)
            self.no_content()
        elif action == "complete":
            body = self.body_object()
            code, opts = body.get("code", ""), body.get("options") or {}
            if not isinstance(code, str) or not isinstance(opts, dict):
                raise BadRequest("'code' must be a string")
            text = code or str(opts.get("line", ""))
            reply = await km.runner(mgr.run_flush_interval).request(
                "complete_request", {"code": text, "cursor_pos": len(text)})
            self.write_json({"result": reply["content"].get("matches", [])})
        elif action == "upload":
            await self.upload(km)
            self.no_content()
        else:
            raise KernelNotFound("no such kernel action")

    async def upload(self, km: GatewayKernel) -> None:
        files = self.request.files.get("src") or []
        if not files:
            raise BadRequest("no files: send multipart field 'src'")
        if len(files) > MAX_UPLOAD_FILES:
            raise BadRequest(f"at most {MAX_UPLOAD_FILES} files per upload")
        checked = []
        for f in files:
            if len(f.body) > MAX_UPLOAD_BYTES:
                raise BadRequest(f"{f.filename!r} is larger than 1 MiB")
            # 1.4.x percent-encodes the name (updir%2Fup2.txt); decoded, it passes the same checks.
            checked.append((safe_relative_path(unquote(f.filename)), f.body))
        if km.docker is None:
            raise BadRequest("upload needs a container kernel")
        if km.execution_state == "dead":
            raise KernelDead("the kernel is dead; restart it")
        await km.docker.container.put_files(checked)


class KernelLogsHandler(KernelMixin):
    record_kind = "kernel"
    by_token = True
    async def get(self, kernel_id: str) -> None:
        km = self.kernel(kernel_id)
        logs = await km.docker.container.logs(tail=2000) if km.docker is not None else ""
        self.write_json({"result": {"logs": logs}})
