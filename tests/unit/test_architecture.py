"""The package's shape, checked from its source: no import cycles (type-only imports count: they tie
modules as much), only the container layer (kernel_gateway_ext/containers/) imports docker, and the
rest of the package reaches containers through its backend interface, not the Docker modules."""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "kernel_gateway_ext"
CONTAINER_LAYER = "kernel_gateway_ext.containers"


def modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def imports(name: str, path: Path, known: dict[str, Path]) -> tuple[set[str], set[str]]:
    """(package modules `name` imports, top-level external packages it imports)."""
    is_pkg = path.name == "__init__.py"
    here = name.split(".") if is_pkg else name.split(".")[:-1]
    inner: set[str] = set()
    outer: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for a in node.names:
                (inner if a.name.split(".")[0] == "kernel_gateway_ext" else outer).add(a.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "kernel_gateway_ext":
                outer.add(target)
                continue
            for a in node.names:
                sub = f"{target}.{a.name}"
                inner.add(sub if sub in known else target)
    resolved = set()
    for m in inner:
        while m and m not in known:
            m = m.rpartition(".")[0]
        if m and m != name:
            resolved.add(m)
    return resolved, {o.split(".")[0] for o in outer if o}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles() -> None:
    known = modules()
    graph = {name: imports(name, path, known)[0] for name, path in known.items()}
    # A package's __init__ re-exporting its modules is not a cycle of design: leave those edges out.
    for name in graph:
        graph[name] = {m for m in graph[name] if not (m.startswith(name + ".") and known[name].name == "__init__.py")}
    assert cycles(graph) == []


def test_only_the_container_layer_imports_docker() -> None:
    known = modules()
    offenders = sorted(name for name, path in known.items()
                       if "docker" in imports(name, path, known)[1] and not name.startswith(CONTAINER_LAYER))
    assert offenders == []


# The Docker implementation's modules; besides containers/ itself only the composition root (it
# pings the engine, holds the lease, reconciles) and the image builder may name them.
DOCKER_MODULES = {f"{CONTAINER_LAYER}.{m}" for m in ("engine", "runtime", "lease", "images")}
MAY_NAME_DOCKER_MODULES = {"kernel_gateway_ext.app", "kernel_gateway_ext.build_images"}


def test_callers_use_the_container_backend_interface() -> None:
    known = modules()
    offenders = sorted(
        (name, sorted(imports(name, path, known)[0] & DOCKER_MODULES)) for name, path in known.items()
        if not name.startswith(CONTAINER_LAYER) and name not in MAY_NAME_DOCKER_MODULES
        and imports(name, path, known)[0] & DOCKER_MODULES)
    assert offenders == []


def test_the_checks_see_what_they_check() -> None:
    """The two checks above find a planted cycle and a planted docker import."""
    assert cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]
    known = modules()
    assert "docker" in imports("kernel_gateway_ext.containers.engine", known["kernel_gateway_ext.containers.engine"], known)[1]
    assert "kernel_gateway_ext.containers.engine" in imports(
        "kernel_gateway_ext.containers.runtime", known["kernel_gateway_ext.containers.runtime"], known)[0]
    assert "kernel_gateway_ext.containers.engine" in imports("kernel_gateway_ext.app", known["kernel_gateway_ext.app"], known)[0]


def test_every_folder_of_code_is_a_package() -> None:
    """A folder without __init__.py imports from a checkout (a namespace package) but is left out of
    the wheel by find_packages: the installed gateway then fails at import."""
    missing = sorted(str(d.relative_to(PACKAGE.parent)) for d in PACKAGE.rglob("*")
                     if d.is_dir() and d.name != "__pycache__" and any(d.glob("*.py")) and not (d / "__init__.py").exists())
    assert missing == []
