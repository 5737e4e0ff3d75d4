"""``GET /v1/contacts/{id}`` answers the same through the direct path as through FastAPI's stack.

``create_api(fast_path=False)`` serves every request through the full stack; the tests send the
same requests to both apps (over one replica) and compare status, headers and body.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from typing import Any
from urllib.parse import unquote

import httpx
import pytest
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.routing import BaseRoute, Match
from starlette.types import Scope

from api.app import CONTACT_PATH, ScorestreamApi, create_api
from api.replica import Replica, WorkerStatus
from kafka_io.clients import KafkaConnection
from schemas.model_file import load_model
from schemas.settings import Settings
from scorestream import apply_events
from tests.api.view_bytes import view_bytes
from tests.factories import T0, make_event

KEY = "unit-test-key-0123456789"
MODEL = load_model()

PATHS = [
    "/v1/contacts/u-1",
    "/v1/contacts/a-1",
    "/v1/contacts/ANN@acme.com",
    "/v1/contacts/%20ann@acme.com%20",
    "/v1/contacts/anonymous:a-1",
    "/v1/contacts/nobody",
    "/v1/contacts/%C3%A9%20x",
    "/v1/contacts/u-1?fields=all",
    "/v1/contacts/u-1?model=scorestream",
    "/v1/contacts/u-1?model=nope",
    "/v1/contacts/u-1/",
    "/v1/contacts/",
    "/v1/contacts:batchGet",
    "/v1/contacts/u-9",  # merged into u-1
]
AUTHS: list[str | None] = [
    None,
    f"Bearer {KEY}",
    f"bearer {KEY}",
    f"Bearer  {KEY} ",
    "Bearer wrong-key-0123456789",
    f"Basic {KEY}",
    "Bearer",
    "",
]


def make_replica() -> Replica:
    r = Replica(kafka=KafkaConnection("127.0.0.1:1"), views_topic="c", status_topic="s")
    identify = make_event(kind="identify", user_id="u-1", anonymous_id="a-1", traits={"email": "Ann@Acme.com"})
    page = make_event(kind="page", event=None, channel="web", user_id="u-1", path="/pricing")
    r.apply(b"u-1", view_bytes(apply_events(None, "u-1", [identify, page], MODEL), MODEL))
    merged = apply_events(None, "u-9", [make_event(user_id="u-9")], MODEL)
    merged.merged_into = "u-1"
    r.apply(b"u-9", view_bytes(merged, MODEL))
    r.caught_up.set()
    r.workers["w1"] = WorkerStatus(state="ready", model=MODEL.version, at_ms=T0)
    return r


def apps(replica: Replica, keys: str = KEY) -> tuple[FastAPI, FastAPI]:
    settings = Settings(api_keys=keys)  # type: ignore[arg-type]
    fast = create_api(settings, model=MODEL, replica=replica, clock=lambda: T0 + 1)
    full = create_api(settings, model=MODEL, replica=replica, clock=lambda: T0 + 1, fast_path=False)
    return fast, full


def count_fast(app: FastAPI) -> list[int]:
    """Count the requests ``app`` answers through its direct path."""
    assert isinstance(app, ScorestreamApi) and app.fast_get is not None
    inner = app.fast_get
    calls = [0]

    async def counted(scope: Scope, contact_id: str) -> Any:
        calls[0] += 1
        return await inner(scope, contact_id)

    app.fast_get = counted
    return calls


Answer = tuple[int, list[tuple[str, str]], bytes]


def answers(app: FastAPI, requests: Sequence[tuple[str, str | None]], raise_errors: bool = True) -> list[Answer]:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=raise_errors)

    async def go() -> list[Answer]:
        out: list[Answer] = []
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            for i, (path, auth) in enumerate(requests):
                # a given request id (echoed): a generated one would differ between the two apps
                headers = {"X-Request-ID": f"req-{i}"}
                if auth is not None:
                    headers["Authorization"] = auth
                r = await client.get(path, headers=headers)
                out.append((r.status_code, list(r.headers.multi_items()), r.content))
        return out

    return asyncio.run(go())


REQUESTS = [(p, a) for p in PATHS for a in AUTHS]


def test_same_answers_as_the_full_stack() -> None:
    fast, full = apps(make_replica())
    calls = count_fast(fast)
    got, want = answers(fast, REQUESTS), answers(full, REQUESTS)
    for request, g, w in zip(REQUESTS, got, want, strict=True):
        assert g == w, request
    assert {status for status, _, _ in want} >= {200, 401, 404, 405}
    # a query string (``?model=``) takes the full stack
    direct = [p for p in PATHS if "?" not in p and CONTACT_PATH.match(unquote(p))]
    assert len(direct) == 8 and calls[0] == len(direct) * len(AUTHS)


def test_same_answers_when_not_ready_or_without_keys() -> None:
    replica = make_replica()
    replica.caught_up.clear()
    requests = [("/v1/contacts/u-1", f"Bearer {KEY}"), ("/v1/contacts/u-1", None), ("/v1/contacts/x", "Bearer x")]
    fast, full = apps(replica)
    assert answers(fast, requests) == answers(full, requests)
    assert answers(fast, requests)[0][0] == 503
    fast, full = apps(make_replica(), keys="")
    assert answers(fast, requests) == answers(full, requests)
    assert b"no API keys are configured" in answers(fast, requests)[0][2]


def test_unexpected_errors_take_the_full_stack(monkeypatch: pytest.MonkeyPatch) -> None:
    replica = make_replica()
    fast, full = apps(replica)
    calls = count_fast(fast)

    def broken(*_: object) -> bytes:
        raise RuntimeError("boom")

    for app in (fast, full):
        monkeypatch.setattr(app.state.replica, "find", broken)
    requests = [("/v1/contacts/u-1", f"Bearer {KEY}")]
    got = answers(fast, requests, raise_errors=False)
    assert got == answers(full, requests, raise_errors=False)
    assert got[0][0] == 500 and calls[0] == 1
    with pytest.raises(RuntimeError, match="boom"):
        answers(fast, requests)


def routes_in_order(routes: Sequence[BaseRoute]) -> Iterator[BaseRoute]:
    """The app's routes in the order Starlette tries them, the routers' included (``include_router``
    keeps a router whole: its routes are tried in its place)."""
    for route in routes:
        included = getattr(route, "original_router", None)
        yield from routes_in_order(included.routes) if included is not None else (route,)


def test_the_direct_path_is_the_route_starlette_would_pick() -> None:
    """No route before ``GET /v1/contacts/{contact_id}`` matches its paths, and the pattern is the route's."""
    fast, _ = apps(make_replica())
    scope: dict[str, Any] = {"type": "http", "method": "GET", "path": "/v1/contacts/some-id", "root_path": ""}
    first = next(r for r in routes_in_order(fast.router.routes) if r.matches(scope)[0] == Match.FULL)
    assert getattr(first, "path", None) == "/v1/contacts/{contact_id}"
    assert first.path_regex.pattern == CONTACT_PATH.pattern  # type: ignore[attr-defined]


def test_openapi_documents_the_route_and_its_security() -> None:
    fast, full = apps(make_replica())
    doc: dict[str, Any] = fast.openapi()
    assert doc == full.openapi()
    op = doc["paths"]["/v1/contacts/{contact_id}"]["get"]
    assert op["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ContactOut"
    }
    assert op["security"] == [{"HTTPBearer": []}]


def test_middleware_and_overrides_take_the_full_stack() -> None:
    fast, _ = apps(make_replica())
    calls = count_fast(fast)
    requests = [("/v1/contacts/u-1", f"Bearer {KEY}")]
    assert answers(fast, requests)[0][0] == 200 and calls[0] == 1
    seen: list[str] = []

    @fast.middleware("http")
    async def note(request: Any, call_next: Any) -> Any:
        seen.append(request.url.path)
        return await call_next(request)

    assert answers(fast, requests)[0][0] == 200
    assert calls[0] == 1 and seen == ["/v1/contacts/u-1"]


def test_the_direct_path_does_not_enter_the_full_stack(monkeypatch: pytest.MonkeyPatch) -> None:
    """``GET /v1/contacts/{id}`` is answered without Starlette's app (middleware, routing,
    dependency solving): with it broken, the contact still comes back; other routes fail."""
    fast, _ = apps(make_replica())
    calls = count_fast(fast)

    async def broken(*_: object) -> None:
        raise RuntimeError("the full stack was entered")

    monkeypatch.setattr(Starlette, "__call__", broken)
    status, _, body = answers(fast, [("/v1/contacts/u-1", f"Bearer {KEY}")])[0]
    assert status == 200 and b'"contact_id":"u-1"' in body and calls[0] == 1
    with pytest.raises(RuntimeError, match="full stack"):
        answers(fast, [("/v1/model", f"Bearer {KEY}")])
