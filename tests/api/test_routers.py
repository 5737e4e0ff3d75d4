"""The API's shape: the routes the OpenAPI document lists (pinned before the routes moved into
``api/routers/``), which of them need an API key, and routes written as top-level functions."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute

import api.routers
from api.app import create_api
from api.replica import Replica
from kafka_io.clients import KafkaConnection
from schemas.model_file import load_model
from schemas.settings import Settings

# (method, path) of every operation in /openapi.json, as create_api served them before the routers
PINNED = {
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/v1/accounts/{account_id}"),
    ("POST", "/v1/alias"),
    ("POST", "/v1/batch"),
    ("GET", "/v1/contacts"),
    ("GET", "/v1/contacts/{contact_id}"),
    ("GET", "/v1/contacts/{contact_id}/history"),
    ("GET", "/v1/contacts/{contact_id}/export"),
    ("GET", "/v1/contacts/{contact_id}/interests"),
    ("GET", "/v1/contacts/{contact_id}/journey"),
    ("POST", "/v1/contacts/{contact_id}/adjustments"),
    ("GET", "/v1/contacts/{contact_id}/adjustments"),
    ("GET", "/v1/contacts/{contact_id}/adjustments/{adjustment_id}"),
    ("DELETE", "/v1/contacts/{contact_id}/adjustments/{adjustment_id}"),
    ("POST", "/v1/contacts:batchGet"),
    ("POST", "/v1/group"),
    ("POST", "/v1/identify"),
    ("GET", "/v1/model"),
    ("GET", "/v1/models"),
    ("GET", "/v1/models/clv"),
    ("POST", "/v1/page"),
    ("GET", "/v1/reports/forecast"),
    ("GET", "/v1/reports/groups"),
    ("GET", "/v1/reports/funnel"),
    ("GET", "/v1/reports/interests"),
    ("GET", "/v1/reports/journey"),
    ("GET", "/v1/reports/overview"),
    ("GET", "/v1/reports/personas"),
    ("GET", "/v1/reports/rfm"),
    ("GET", "/v1/reports/score-quality"),
    ("GET", "/v1/reports/churn-risk"),
    ("POST", "/v1/screen"),
    ("POST", "/v1/track"),
    ("GET", "/v1/regulations"),
    ("POST", "/v1/regulations"),
    ("GET", "/v1/regulations/{regulation_id}"),
    ("GET", "/v1/webhooks"),
    ("POST", "/v1/webhooks"),
    ("DELETE", "/v1/webhooks/{webhook_id}"),
    ("GET", "/v1/webhooks/{webhook_id}"),
    ("PATCH", "/v1/webhooks/{webhook_id}"),
    ("GET", "/v1/webhooks/{webhook_id}/deliveries"),
    ("GET", "/v1/webhooks/{webhook_id}/deliveries/{delivery_id}"),
    ("POST", "/v1/webhooks/{webhook_id}/deliveries/{delivery_id}/retry"),
    ("POST", "/v1/webhooks/{webhook_id}/deliveries:retry-failed"),
    ("POST", "/v1/webhooks/{webhook_id}/rotate-secret"),
    ("POST", "/v1/webhooks/{webhook_id}/test"),
}
# health and the collector (which takes write keys) need no API key
OPEN = {("GET", "/healthz"), ("GET", "/readyz")} | {
    ("POST", f"/v1/{kind}") for kind in ("alias", "batch", "group", "identify", "page", "screen", "track")
}


def app() -> FastAPI:
    replica = Replica(kafka=KafkaConnection("127.0.0.1:1"), views_topic="c", status_topic="s")
    return create_api(Settings(api_keys="unit-test-key-0123456789"), model=load_model(), replica=replica)  # type: ignore[arg-type]


def operations(doc: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(method.upper(), path): op for path, ops in doc["paths"].items() for method, op in ops.items()}


def test_the_openapi_document_keeps_every_path_and_method() -> None:
    assert set(operations(app().openapi())) == PINNED


def test_every_operation_but_health_and_the_collector_needs_an_api_key() -> None:
    ops = operations(app().openapi())
    assert {key for key, op in ops.items() if not op.get("security")} == OPEN
    assert all(op["security"] == [{"HTTPBearer": []}] for key, op in ops.items() if key not in OPEN)


def test_routes_are_top_level_functions_of_their_router() -> None:
    """A route is a function of its router's module, not a closure built inside another function
    (the collector's routes are one endpoint per path, made by ``endpoint_for``)."""
    seen = set()
    for router in api.routers.ROUTERS:
        for route in router.routes:
            assert isinstance(route, APIRoute)
            module = inspect.getmodule(route.endpoint)
            assert module is not None and module.__name__.startswith("api.routers.")
            if module.__name__ != "api.routers.collector":
                assert "<locals>" not in route.endpoint.__qualname__, route.path
                assert getattr(module, route.endpoint.__name__) is route.endpoint
            seen |= {(m, route.path) for m in route.methods or ()}
    assert seen >= PINNED


def api_imports() -> dict[str, set[str]]:
    """Module of ``api/`` -> the ``api`` modules it imports (``from api import x`` counts as ``api.x``)."""
    root = Path(api.routers.__file__).parents[1]
    out: dict[str, set[str]] = {}
    for path in root.rglob("*.py"):
        name = ".".join(path.relative_to(root.parent).with_suffix("").parts).removesuffix(".__init__")
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "api":
                found |= {
                    f"{node.module}.{a.name}" if node.module in ("api", "api.routers") else node.module
                    for a in node.names
                }
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names if a.name.split(".")[0] == "api"}
        out[name] = found
    return out


def test_routers_are_leaves_and_errors_the_root() -> None:
    """Only the app (and the routers' package) imports a router, no router imports another, only
    the routers and the app use the dependencies, and ``api.errors`` imports nothing of the API
    (every module may raise its errors)."""
    imports = api_imports()
    routers = {m for m in imports if m.startswith("api.routers.")}
    assert routers >= {f"api.routers.{r}" for r in ("contacts", "accounts", "webhooks", "reports", "models", "health")}
    for module, imported in imports.items():
        if module not in ("api.app", "api.routers"):
            assert not imported & routers, module
    assert imports["api.errors"] == set()
    # the dependencies are the routes' (and the app's direct path's): no other module reads app.state
    # (a router with no dependency, api.routers.problems, need not import them)
    assert {m for m, imported in imports.items() if "api.deps" in imported} == (routers - {"api.routers.problems"}) | {
        "api.app"
    }
