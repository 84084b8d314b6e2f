"""POST /v2/admin/graphql: the `compute_sessions` query `backend.ai ps` sends, and no more.

Not a GraphQL engine: it finds `compute_sessions(args) { fields }`, answers the requested
fields in their order for the caller's kernels (an admin may name another access key), and
refuses anything else with a clear 400.
"""
from __future__ import annotations

import re
from typing import Any

from ...errors import BadRequest, Forbidden
from ...kernels.manager import GatewayKernel, isoformat
from .base import V2Handler

QUERY_RE = re.compile(r"compute_sessions\s*(?:\((?P<args>[^)]*)\))?\s*\{(?P<fields>[^{}]*)\}", re.S)
ARG_RE = re.compile(r"(\w+)\s*:\s*(\$\w+|\"[^\"]*\"|\w+)")
STATUS = {"idle": "RUNNING", "busy": "RUNNING", "starting": "PREPARING", "restarting": "RESTARTING", "dead": "ERROR"}


def field_value(km: GatewayKernel, name: str) -> Any:
    limits = km.limits
    values: dict[str, Any] = {
        "sess_id": km.client_token or km.kernel_id,
        "id": km.kernel_id,
        "role": "master",
        "lang": km.lang or km.kernel_name,
        "created_at": isoformat(km.created),
        "terminated_at": None,
        "agent": "local",
        "status": STATUS.get(km.execution_state, "RUNNING"),
        "status_info": km.reason or None,
        "mem_slot": (limits.memory_bytes or 0) // 2**20 or None,
        "cpu_slot": limits.cpus,
        "gpu_slot": limits.gpus,
        "num_queries": km.num_queries,
        "cpu_used": 0,
        "mem_max_bytes": 0,
        "access_key": km.owner,
        "kernel_id": km.kernel_id,
    }
    return values.get(name)


class GraphQLHandler(V2Handler):
    def post(self) -> None:
        body = self.body_object()
        query, variables = body.get("query"), body.get("variables") or {}
        if not isinstance(query, str) or not isinstance(variables, dict):
            raise BadRequest("'query' must be a string and 'variables' an object")
        m = QUERY_RE.search(query)
        if not m:
            raise BadRequest("only the compute_sessions query is supported")
        args: dict[str, Any] = {}
        for key, raw in ARG_RE.findall(m["args"] or ""):
            args[key] = variables.get(raw[1:]) if raw.startswith("$") else raw.strip('"')
        fields = m["fields"].split()
        owner: str | None = self.identity.user
        if args.get("access_key"):
            if not self.identity.admin:
                raise Forbidden("only an admin may list another key's sessions")
            owner = None
        elif self.identity.admin:
            owner = None
        status = args.get("status")
        items = []
        for km in self.gateway.kernel_manager.list(owner):
            row = {f: field_value(km, f) for f in fields}
            if status and STATUS.get(km.execution_state, "RUNNING") != status:
                continue
            items.append(row)
        self.write_json({"compute_sessions": items})
