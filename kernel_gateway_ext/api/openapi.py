"""OpenAPI 3.0 descriptions of the three dialects and the web page's API, served at /openapi/{jupyter,v2,skaha,page}.json.

A test keeps them in sync with the routes (every route described, every described operation
served) and schemathesis fuzzes the gateway against them.
"""
from __future__ import annotations

from typing import Any

from .._version import __version__
from .base import BaseHandler

JSON = "application/json"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"content": {JSON: {"schema": schema}}}


def _resp(desc: str, schema: dict[str, Any] | None = None, media: str = JSON) -> dict[str, Any]:
    out: dict[str, Any] = {"description": desc}
    if schema is not None:
        out["content"] = {media: {"schema": schema}}
    return out


def _path_param(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": schema}


def _query(name: str, schema: dict[str, Any], desc: str = "") -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": desc}


UUID = {"type": "string", "pattern": r"^\w+-\w+-\w+-\w+-\w+$", "example": "00000000-0000-0000-0000-000000000000"}
STR_MAP = {"type": "object", "additionalProperties": {"type": "string"}}


def _doc(title: str, description: str, paths: dict[str, Any], schemas: dict[str, Any],
         security: dict[str, Any]) -> dict[str, Any]:
    return {
        "openapi": "3.0.3",
        "info": {"title": title, "version": __version__, "description": description},
        "paths": paths,
        "components": {"schemas": schemas, "securitySchemes": security},
        "security": [{name: []} for name in security],
    }


TOKEN_AUTH = {"token": {"type": "apiKey", "in": "header", "name": "Authorization",
                        "description": "`token <gateway token>` or `token <ACCESS_KEY>:<SECRET_KEY>`"}}


def _error(desc: str) -> dict[str, Any]:
    return _resp(desc, _ref("Error"))


def jupyter() -> dict[str, Any]:
    kid = _path_param("kernel_id", UUID)
    sid = _path_param("session_id", {"type": "string", "pattern": r"^[\w-]+$", "example": "s1"})
    errs = {"400": _error("Malformed request"), "401": _error("No or wrong credentials"),
            "404": _error("No such kernel (or not yours)")}
    start_errs = {**errs, "403": _error("Kernel limit reached"), "429": _error("Memory budget spent"),
                  "500": _error("The kernel could not start (the cause is in the message)"),
                  "503": _error("The Docker engine is unavailable")}
    kernel_body = {"type": "object", "properties": {"name": {"type": "string"}, "env": STR_MAP}}
    session_body = {"type": "object", "properties": {
        "path": {"type": "string"}, "name": {"type": "string"}, "type": {"type": "string"},
        "kernel": {"type": "object", "properties": {"id": {"type": "string"}, "name": {"type": "string"},
                                                    "env": STR_MAP}}}}
    paths: dict[str, Any] = {
        "/api": {"get": {"summary": "Version, Docker availability, pools", "security": [],
                         "responses": {"200": _resp("Status", {"type": "object"})}}},
        "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {
            "200": _resp("Metrics", {"type": "string"}, "text/plain"), "401": errs["401"]}}},
        "/api/kernelspecs": {"get": {"summary": "Runnable kernelspecs", "responses": {
            "200": _resp("Kernelspecs", _ref("KernelSpecs")), "401": errs["401"]}}},
        "/api/kernelspecs/{kernel_name}": {"get": {
            "summary": "One kernelspec", "parameters": [_path_param("kernel_name", {"type": "string", "example": "python3"})],
            "responses": {"200": _resp("Kernelspec", {"type": "object"}), **errs}}},
        "/kernelspecs/{kernel_name}/{path}": {"get": {
            "summary": "A kernelspec's resource (logo)",
            "parameters": [_path_param("kernel_name", {"type": "string", "example": "python3"}),
                           _path_param("path", {"type": "string", "example": "logo-64x64.png"})],
            "responses": {"200": _resp("The file", {"type": "string", "format": "binary"}, "application/octet-stream"),
                          **errs}}},
        "/api/kernels": {
            "get": {"summary": "The caller's kernels", "responses": {
                "200": _resp("Kernels", {"type": "array", "items": _ref("Kernel")}), "401": errs["401"]}}},
        "/api/kernels/{kernel_id}": {
            "get": {"summary": "One kernel, with its container's figures", "parameters": [kid],
                    "responses": {"200": _resp("Kernel", _ref("Kernel")), **errs}},
            "delete": {"summary": "Shut down", "parameters": [kid], "responses": {"204": _resp("Gone"), **errs}}},
        "/api/kernels/{kernel_id}/restart": {"post": {
            "summary": "Restart in place (websockets stay connected)", "parameters": [kid],
            "responses": {"200": _resp("Kernel", _ref("Kernel")), "409": _error("Already restarting"), **start_errs}}},
        "/api/kernels/{kernel_id}/interrupt": {"post": {
            "summary": "Interrupt", "parameters": [kid],
            "responses": {"204": _resp("Interrupted"), "409": _error("The kernel is dead"), **errs}}},
        "/api/kernels/{kernel_id}/channels": {"get": {
            "summary": "The kernel websocket (legacy JSON or v1.kernel.websocket.jupyter.org)",
            "parameters": [kid, _query("session_id", {"type": "string"})],
            "responses": {"101": _resp("Switching protocols"), "400": _resp("Not a websocket request"), **errs}}},
        "/api/sessions": {
            "get": {"summary": "The caller's sessions", "responses": {
                "200": _resp("Sessions", {"type": "array", "items": _ref("Session")}), "401": errs["401"]}},
            "post": {"summary": "Create a session (starts a kernel)", "requestBody": _json(session_body),
                     "responses": {"201": _resp("Session", _ref("Session")), **start_errs}}},
        "/api/sessions/{session_id}": {
            "get": {"summary": "One session", "parameters": [sid],
                    "responses": {"200": _resp("Session", _ref("Session")), **errs}},
            "patch": {"summary": "Rename or change its kernel", "parameters": [sid], "requestBody": _json(session_body),
                      "responses": {"200": _resp("Session", _ref("Session")), **start_errs}},
            "delete": {"summary": "Delete (its kernel is shut down)", "parameters": [sid],
                       "responses": {"204": _resp("Gone"), **errs}}},
    }
    paths["/api/kernels"]["post"] = {"summary": "Start a kernel", "requestBody": _json(kernel_body),
                                     "responses": {"201": _resp("Kernel", _ref("Kernel")), **start_errs}}
    schemas = {
        "Error": {"type": "object", "properties": {"message": {"type": "string"}, "reason": {"type": "string"}}},
        "Kernel": {"type": "object", "required": ["id", "name", "execution_state"], "properties": {
            "id": {"type": "string"}, "name": {"type": "string"}, "last_activity": {"type": "string"},
            "execution_state": {"type": "string"}, "connections": {"type": "integer"}, "reason": {"type": "string"},
            "stats": {"type": "object"}}},
        "KernelSpecs": {"type": "object", "properties": {"default": {"type": "string"}, "kernelspecs": {"type": "object"}}},
        "Session": {"type": "object", "properties": {
            "id": {"type": "string"}, "path": {"type": "string"}, "name": {"type": "string"},
            "type": {"type": "string"}, "kernel": _ref("Kernel")}},
    }
    return _doc("kernel_gateway_ext: Jupyter kernel API",
                "jupyter_server's kernels, kernelspecs and sessions API (what `--gateway-url` uses).",
                paths, schemas, TOKEN_AUTH)


def v2() -> dict[str, Any]:
    kid = _path_param("kernel_id", {"type": "string", "pattern": r"^[\w-]{1,64}$", "example": "my-session"})
    folder = _path_param("name", {"type": "string", "pattern": r"^[\w.-]{1,64}$", "example": "data"})
    problem = {"content": {"application/problem+json": {"schema": _ref("Problem")}}}
    errs = {"400": {"description": "Malformed request", **problem}, "401": {"description": "Not authenticated", **problem},
            "404": {"description": "No such kernel or folder", **problem}}
    start_errs = {**errs, "403": {"description": "Kernel limit reached", **problem},
                  "406": {"description": "Above the server's hard limits", **problem},
                  "429": {"description": "Memory budget spent", **problem},
                  "500": {"description": "The kernel could not start", **problem},
                  "503": {"description": "The Docker engine is unavailable", **problem}}
    create_body = {"type": "object", "required": ["lang", "clientSessionToken"], "properties": {
        "lang": {"type": "string", "example": "python3"},
        "clientSessionToken": {"type": "string", "pattern": r"^[\w.-]{4,64}$"},
        "config": {"type": "object", "properties": {
            "instanceMemory": {"type": "string"}, "instanceCores": {"type": "number"},
            "instanceGPUs": {"type": "integer"}, "envs": STR_MAP, "environ": STR_MAP,
            "mounts": {"type": "array", "items": {"type": "string"}}, "idleTimeout": {"type": "number"}}},
        "limits": {"type": "object", "properties": {
            "maxMem": {"type": "integer"}, "execTimeout": {"type": "number"}, "idleTimeout": {"type": "number"}}},
        "mounts": {"type": "array", "items": {"type": "string"}}}}
    run_body = {"type": "object", "properties": {
        "mode": {"type": "string", "enum": ["query", "continue", "input", "batch", "complete"]},
        "runId": {"type": "string"}, "code": {"type": "string"},
        "options": {"type": "object"}}}
    created = _resp("Created", {"type": "object", "properties": {
        "kernelId": {"type": "string", "description": "the session id: the clientSessionToken"},
        "created": {"type": "boolean"}}})
    paths: dict[str, Any] = {
        "/v2/": {"get": {"summary": "API version", "security": [], "responses": {"200": _resp("Version", {"type": "object"})}}},
        "/v2/kernel/": {"post": {"summary": "Get or create a kernel by client token", "requestBody": _json(create_body),
                                 "responses": {"201": created, **start_errs}}},
        "/v2/kernel/create": {"post": {"summary": "Get or create (legacy path)", "requestBody": _json(create_body),
                                       "responses": {"201": created, **start_errs}}},
        "/v2/kernel/{kernel_id}": {
            "get": {"summary": "Info with live container figures", "parameters": [kid],
                    "responses": {"200": _resp("Info", _ref("KernelInfo")), **errs}},
            "patch": {"summary": "Restart", "parameters": [kid], "responses": {"204": _resp("Restarted"), **start_errs}},
            "delete": {"summary": "Destroy", "parameters": [kid],
                       "responses": {"200": _resp("Final stats", {"type": "object"}), **errs}},
            "post": {"summary": "Execute", "parameters": [kid], "requestBody": _json(run_body),
                     "responses": {"200": _resp("Result", {"type": "object"}), "409": {"description": "Kernel dead", **problem},
                                   **errs}}},
        "/v2/kernel/{kernel_id}/logs": {"get": {"summary": "Container logs", "parameters": [kid],
                                                "responses": {"200": _resp("Logs", {"type": "object"}), **errs}}},
        "/v2/kernel/{kernel_id}/interrupt": {"post": {"summary": "Interrupt", "parameters": [kid],
                                                      "responses": {"204": _resp("Interrupted"), **errs}}},
        "/v2/kernel/{kernel_id}/complete": {"post": {"summary": "Code completion", "parameters": [kid],
                                                     "requestBody": _json(run_body),
                                                     "responses": {"200": _resp("Matches", {"type": "object"}), **errs}}},
        "/v2/kernel/{kernel_id}/upload": {"post": {
            "summary": "Upload files into /home/work", "parameters": [kid],
            "requestBody": {"content": {"multipart/form-data": {"schema": {"type": "object", "properties": {
                "src": {"type": "string", "format": "binary"}}}}}},
            "responses": {"204": _resp("Stored"), "413": {"description": "Too large", **problem}, **errs}}},
        "/v2/folders": {
            "get": {"summary": "The caller's virtual folders", "responses": {"200": _resp("Folders", {"type": "array"}), **errs}},
            "post": {"summary": "Create a folder", "requestBody": _json({"type": "object", "required": ["name"], "properties": {
                "name": {"type": "string"}}}), "responses": {"201": _resp("Folder", {"type": "object"}),
                                                             "409": {"description": "Exists", **problem}, **errs}}},
        "/v2/folders/{name}": {
            "get": {"summary": "Folder info", "parameters": [folder],
                    "responses": {"200": _resp("Folder", {"type": "object"}), **errs}},
            "delete": {"summary": "Delete a folder", "parameters": [folder], "responses": {"204": _resp("Gone"), **errs}}},
        "/v2/folders/{name}/upload": {"post": {
            "summary": "Upload files", "parameters": [folder],
            "requestBody": {"content": {"multipart/form-data": {"schema": {"type": "object", "properties": {
                "src": {"type": "string", "format": "binary"}}}}}},
            "responses": {"201": _resp("Stored"), "204": _resp("Stored"), **errs}}},
        "/v2/folders/{name}/files": {"get": {
            "summary": "List files", "parameters": [folder, _query("path", {"type": "string"})],
            "responses": {"200": _resp("Files", {"type": "object"}), **errs}}},
        "/v2/folders/{name}/download": {"get": {
            "summary": "Download files (multipart/mixed, one gzip part per file; JSON body {files})",
            "parameters": [folder],
            "responses": {"200": {"description": "The files"}, **errs}}},
        "/v2/admin/graphql": {"post": {
            "summary": "compute_sessions query (what `backend.ai ps` sends)",
            "requestBody": _json({"type": "object",
                                  "properties": {"query": {"type": "string"}, "variables": {"type": "object"}}}),
            "responses": {"200": _resp("Result", {"type": "object"}), **errs}}},
        "/v2/stream/kernel/{kernel_id}/pty": {"get": {
            "summary": "Terminal websocket", "parameters": [kid],
            "responses": {"101": _resp("Switching protocols"), "400": _resp("Not a websocket request"), **errs}}},
    }
    schemas = {
        "Problem": {"type": "object", "required": ["type", "title"], "properties": {
            "type": {"type": "string"}, "title": {"type": "string"}}},
        "KernelInfo": {"type": "object", "properties": {k: {"type": "integer"} for k in (
            "age", "idle", "queryTimeout", "idleTimeout", "memoryLimit", "maxCpuCredit", "numQueriesExecuted",
            "memoryUsed", "cpuCreditUsed")} | {"lang": {"type": "string"}, "executionState": {"type": "string"}}},
    }
    security = {
        "hmac": {"type": "apiKey", "in": "header", "name": "Authorization",
                 "description": "`BackendAI signMethod=HMAC-SHA256, credential=AK:SIGNATURE` with Date and "
                                "X-BackendAI-Version headers (what the backend.ai clients send)"},
        **TOKEN_AUTH,
    }
    doc = _doc("kernel_gateway_ext: Backend.AI kernel API v2", "Code-snippet kernels by client session token.",
               paths, schemas, security)
    doc["security"] = [{"hmac": []}, {"token": []}]
    return doc


def skaha() -> dict[str, Any]:
    version = _path_param("version", {"type": "string", "enum": ["v0", "v1"]})
    sid = _path_param("session_id", {"type": "string", "pattern": r"^[a-z0-9]{1,32}$", "example": "abc123"})
    text_err = {"content": {"text/plain": {"schema": {"type": "string"}}}}
    errs = {"400": {"description": "Malformed request", **text_err}, "401": {"description": "Not authenticated", **text_err},
            "404": {"description": "No such session (or not yours)", **text_err}}
    create_params = [
        _query("name", {"type": "string", "pattern": r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"}),
        _query("image", {"type": "string", "example": "images.canfar.net/skaha/terminal:1.1.1"}),
        _query("type", {"type": "string", "enum": ["headless", "notebook", "desktop", "carta", "firefly",
                                                   "contributed", "desktop-app"]}),
        _query("cores", {"type": "integer"}), _query("ram", {"type": "integer"}), _query("gpus", {"type": "integer"}),
        _query("cmd", {"type": "string"}), _query("args", {"type": "string"}),
        _query("env", {"type": "string"}, "NAME=VALUE (repeatable)"),
    ]
    paths: dict[str, Any] = {
        "/skaha/availability": {"get": {"summary": "VOSI availability", "security": [],
                                        "responses": {"200": _resp("XML", {"type": "string"}, "text/xml")}}},
        "/skaha/capabilities": {"get": {"summary": "VOSI capabilities", "security": [],
                                        "responses": {"200": _resp("XML", {"type": "string"}, "text/xml")}}},
        "/skaha/{version}/session": {
            "get": {"summary": "The caller's sessions", "parameters": [
                version, _query("type", {"type": "string"}), _query("status", {"type": "string"}),
                _query("view", {"type": "string", "enum": ["all", "stats"]})],
                "responses": {"200": _resp("Sessions", {"type": "array", "items": {"type": "object"}}), **errs}},
            "post": {"summary": "Create a session (or replicas)", "parameters": [version, *create_params],
                     "responses": {"200": _resp("Session ids", {"type": "string"}, "text/plain"),
                                   "429": {"description": "Memory budget spent", **text_err}, **errs}}},
        "/skaha/{version}/session/{session_id}": {
            "get": {"summary": "Info, logs or events", "parameters": [
                version, sid, _query("view", {"type": "string", "enum": ["logs", "events"]})],
                "responses": {"200": _resp("Session", {"type": "object"}), **errs}},
            "post": {"summary": "Renew", "parameters": [version, sid, _query("action", {"type": "string", "enum": ["renew"]})],
                     "responses": {"200": _resp("Renewed"), **errs}},
            "delete": {"summary": "Delete", "parameters": [version, sid], "responses": {"200": _resp("Deleted"), **errs}}},
        "/skaha/{version}/image": {"get": {"summary": "Image catalogue", "parameters": [
            version, _query("type", {"type": "string"})],
            "responses": {"200": _resp("Images", {"type": "array", "items": {"type": "object"}}), **errs}}},
        "/skaha/{version}/context": {"get": {"summary": "What may be asked for (cores, RAM, GPUs)", "parameters": [version],
                                             "responses": {"200": _resp("Context", {"type": "object"}), **errs}}},
        "/skaha/session/{session_id}/{path}": {m: {
            "summary": "A notebook session's Jupyter server, proxied",
            "parameters": [sid, _path_param("path", {"type": "string", "example": "api/status"})],
            "responses": {"200": _resp("Whatever the notebook server answers"), "503": _resp("Not answering yet"), **errs},
        } for m in ("get", "post", "put", "patch", "delete")},
        "/skaha/session/{session_id}/api/kernels/{kernel_id}/channels": {"get": {
            "summary": "A notebook session's kernel websocket, proxied (also api/events/subscribe, terminals/websocket/N)",
            "parameters": [sid, _path_param("kernel_id", {"type": "string", "example": "k1"})],
            "responses": {"101": _resp("Switching protocols"), "400": _resp("Not a websocket request"), **errs}}},
    }
    security = {"bearer": {"type": "http", "scheme": "bearer",
                           "description": "`Bearer <ACCESS_KEY>:<SECRET_KEY>` (or an X.509 client certificate)"}}
    return _doc("kernel_gateway_ext: Skaha sessions API", "Headless and notebook sessions (the skaha and canfar clients).",
                paths, {}, security)


def page() -> dict[str, Any]:
    """The web page's own routes (the page acts through the dialects' routes for everything else)."""
    errs = {"401": _error("Not signed in"), "403": _error("Refused: cross-site, no CSRF header, or not an operator")}
    html = {"200": _resp("The page (its script signs in or lists what is mine)", {"type": "string"}, "text/html")}
    item = {"type": "object", "properties": {
        "kind": {"type": "string", "enum": ["kernel", "session"]}, "dialect": {"type": "string"},
        "id": {"type": "string"}, "name": {"type": "string"}, "owner": {"type": "string"}, "state": {"type": "string"},
        "usage": {"type": "array", "nullable": True, "description": "[time, memory bytes, CPU cores] sampled last"}}}
    paths: dict[str, Any] = {
        "/": {"get": {"summary": "The web page", "security": [], "responses": html}},
        "/ui/": {"get": {"summary": "The web page", "security": [], "responses": html}},
        "/ui/static/{asset}": {"get": {"summary": "The page's script, style and icon", "security": [],
                                       "parameters": [_path_param("asset", {"type": "string",
                                                                            "enum": ["app.js", "app.css", "logo.svg"]})],
                                       "responses": {"200": _resp("The asset"), "404": _resp("No such asset")}}},
        "/ui/api/signin": {"post": {
            "summary": "Sign in: a key pair (or the gateway token as secret_key), or {certificate: true} over TLS",
            "security": [], "requestBody": _json({"type": "object", "properties": {
                "access_key": {"type": "string"}, "secret_key": {"type": "string"}, "certificate": {"type": "boolean"}}}),
            "responses": {"200": _resp("Signed in: the cookie is set; me, with the CSRF token", {"type": "object"}),
                          "400": _error("Nothing to sign in with"), **errs}}},
        "/ui/api/signout": {"post": {"summary": "Sign out (the cookie is cleared)", "security": [],
                                     "responses": {"204": _resp("Signed out"), "403": errs["403"]}}},
        "/ui/api/me": {"get": {"summary": "Who I am, and the CSRF token changes need (X-KGE-CSRF)",
                               "responses": {"200": _resp("Me", {"type": "object"}), **errs}}},
        "/ui/api/items": {"get": {"summary": "My kernels and sessions, every dialect's, with their figures",
                                  "responses": {"200": _resp("Items", {"type": "object", "properties": {
                                      "items": {"type": "array", "items": item}}}), **errs}}},
        "/ui/api/live": {"get": {"summary": "The same list, pushed on every change (a websocket); {follow: ID} follows "
                                            "a session's log", "responses": {"101": _resp("Switching protocols"),
                                                                             "400": _resp("Not a websocket request"), **errs}}},
        "/ui/api/admin/capacity": {"get": {"summary": "Memory promised against the budget, per node; the pools (operators)",
                                           "responses": {"200": _resp("Capacity", {"type": "object"}), **errs}}},
        "/ui/api/admin/keypairs": {
            "get": {"summary": "Every key pair (operators)",
                    "responses": {"200": _resp("Key pairs", {"type": "object"}), **errs}},
            "post": {"summary": "Make a key pair (operators); its secret key is shown this once",
                     "requestBody": _json({"type": "object", "required": ["user"], "properties": {
                         "user": {"type": "string"}, "admin": {"type": "boolean"}}}),
                     "responses": {"201": _resp("The key pair", {"type": "object"}), "400": _error("Bad user name"), **errs}}},
        "/ui/api/admin/keypairs/{access_key}": {"delete": {
            "summary": "Revoke a key pair (operators): its requests, cookies and open pages end",
            "parameters": [_path_param("access_key", {"type": "string", "pattern": "^[A-Za-z0-9]{1,64}$",
                                                      "example": "AKKGE0000000000000000"})],
            "responses": {"204": _resp("Revoked"), "404": _error("No active key pair"), **errs}}},
    }
    security = {**TOKEN_AUTH, "cookie": {"type": "apiKey", "in": "cookie", "name": "kge_page",
                                         "description": "The page's sign-in cookie (changes also need X-KGE-CSRF)"}}
    return _doc("kernel_gateway_ext: the web page's API", "Sign-in, my things across dialects, the operator's view.",
                paths, {"Error": {"type": "object", "properties": {"message": {"type": "string"}, "reason": {"type": "string"}}}},
                security)


SPECS = {"jupyter": jupyter, "v2": v2, "skaha": skaha, "page": page}


class OpenAPIHandler(BaseHandler):
    """GET /openapi/{dialect}.json: the description (public: it holds no secrets)."""

    auth_required = False

    def get(self, dialect: str) -> None:
        self.write_json(SPECS[dialect]())
