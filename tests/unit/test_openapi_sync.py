"""The OpenAPI descriptions and the routes agree: every route is described, every described
operation is served by a handler that implements its method."""
from __future__ import annotations

import itertools
import re

import pytest
from openapi_spec_validator import validate
from tornado import web

from kernel_gateway_ext.api.openapi import SPECS
from kernel_gateway_ext.app import Gateway

METHODS = ("get", "post", "put", "patch", "delete")
UNDESCRIBED = {"openapi"}  # the descriptions themselves


@pytest.fixture(scope="module")
def routes() -> list[tuple[re.Pattern[str], type]]:
    app = Gateway()
    app.initialize(["--port=0", "--auth-token=x", "--gateway-id=kge-test-openapi"])
    rules = app.make_app().wildcard_router.rules
    out = [(r.matcher.regex, r.target) for r in rules]
    app.store.close()
    return out


def implemented(handler: type) -> set[str]:
    return {m for m in METHODS if getattr(handler, m) is not getattr(web.RequestHandler, m)}


def concrete_paths(template: str, operation: dict) -> list[str]:
    """The template with each path parameter replaced by its enum values or example."""
    params = {p["name"]: p["schema"] for p in operation.get("parameters", []) if p["in"] == "path"}
    names = re.findall(r"{(\w+)}", template)
    choices = [params[n].get("enum") or [params[n]["example"]] for n in names]
    out = []
    for combo in itertools.product(*choices):
        path = template
        for n, v in zip(names, combo):
            path = path.replace("{" + n + "}", str(v))
        out.append(path)
    return out


@pytest.mark.parametrize("dialect", sorted(SPECS))
def test_spec_is_valid_openapi(dialect) -> None:
    validate(SPECS[dialect]())


def test_every_described_operation_is_served(routes) -> None:
    for dialect, make in SPECS.items():
        for template, ops in make()["paths"].items():
            for method, op in ops.items():
                for path in concrete_paths(template, op):
                    handlers = [h for rx, h in routes if rx.fullmatch(path)]
                    assert handlers, f"{dialect}: {method.upper()} {path} is described but no route serves it"
                    assert method in implemented(handlers[0]), f"{dialect}: {handlers[0].__name__} has no {method}"


def test_every_route_and_method_is_described(routes) -> None:
    described: list[tuple[str, str]] = []
    for make in SPECS.values():
        for template, ops in make()["paths"].items():
            for method, op in ops.items():
                described += [(method, p) for p in concrete_paths(template, op)]
    for rx, handler in routes:
        if any(word in rx.pattern for word in UNDESCRIBED):
            continue
        for method in implemented(handler):
            assert any(m == method and rx.fullmatch(p) for m, p in described), \
                f"{handler.__name__} serves {method.upper()} {rx.pattern} but no description has it"
