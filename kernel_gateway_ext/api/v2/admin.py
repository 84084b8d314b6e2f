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

MAX_QUERY = 16 * 1024  # `backend.ai ps` sends ~300 characters
MAX_FIELDS = 64
NAME_RE = re.compile(r"\w{1,64}")
VALUE_RE = re.compile(r"\$\w{1,64}|\"[^\"]{0,256}\"|\w{1,256}")
STATUS = {"idle": "RUNNING", "busy": "RUNNING", "starting": "PREPARING", "restarting": "RESTARTING", "dead": "ERROR"}


def field_value(km: GatewayKernel, name: str) -> Any:
    limits = km.effective_limits()  # what the container has, as info and capacity read it
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
        "mem_slot": (limits.memory_bytes or 0) // 2**20 or None,  # MiB
        "cpu_slot": limits.cpus,
        "gpu_slot": limits.gpus,
        "num_queries": km.num_queries,
        "cpu_used": 0,
        "mem_max_bytes": 0,
        "access_key": km.owner,
        "kernel_id": km.kernel_id,
    }
    return values.get(name)


def parse_query(query: str, variables: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """`compute_sessions(key: value, ...) { field field ... }` -> (args, fields), in linear time
    (each step a find or a split on a capped string; the regexes only check short tokens)."""
    if len(query) > MAX_QUERY:
        raise BadRequest(f"query longer than {MAX_QUERY} characters")
    start = query.find("compute_sessions")
    if start < 0:
        raise BadRequest("only the compute_sessions query is supported")
    rest = query[start + len("compute_sessions"):].lstrip()
    args_text = ""
    if rest.startswith("("):
        close = rest.find(")")
        if close < 0:
            raise BadRequest("unclosed argument list")
        args_text, rest = rest[1:close], rest[close + 1:].lstrip()
    close = rest.find("}")
    if not rest.startswith("{") or close < 0 or "{" in rest[1:close]:
        raise BadRequest("compute_sessions needs a flat { field ... } selection")
    fields = rest[1:close].split()
    if len(fields) > MAX_FIELDS or not all(NAME_RE.fullmatch(f) for f in fields):
        raise BadRequest("bad field list")
    args: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in args_text.replace("\n", ",").split(","))):
        key, colon, raw = (x.strip() for x in part.partition(":"))
        if not colon or not NAME_RE.fullmatch(key) or not VALUE_RE.fullmatch(raw):
            raise BadRequest(f"bad argument {part[:64]!r}")
        args[key] = variables.get(raw[1:]) if raw.startswith("$") else raw.strip('"')
    return args, fields


class GraphQLHandler(V2Handler):
    async def post(self) -> None:
        body = self.body_object()
        query, variables = body.get("query"), body.get("variables") or {}
        if not isinstance(query, str) or not isinstance(variables, dict):
            raise BadRequest("'query' must be a string and 'variables' an object")
        args, fields = parse_query(query, variables)
        # With replicas, each answers for the kernels it serves (first: a takeover it waits for
        # may bring kernels here).
        others = await self.from_peers(lambda answer: answer["compute_sessions"])
        kms = self.visible(self.gateway.kernel_manager.list())
        access_key = args.get("access_key")
        if access_key:
            if not self.identity.admin:
                raise Forbidden("only an admin may list another key's sessions")
            # The named key's owner only (this filter used to be dropped: an admin got every key's).
            found = await self.gateway.keypairs.lookup(str(access_key))
            if found is None:
                self.write_json({"compute_sessions": others})
                return
            kms = [km for km in kms if km.owner == found[0].user]
        status = args.get("status")
        items = []
        for km in kms:
            row = {f: field_value(km, f) for f in fields}
            if status and STATUS.get(km.execution_state, "RUNNING") != status:
                continue
            items.append(row)
        self.write_json({"compute_sessions": items + others})
