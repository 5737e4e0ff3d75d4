"""Every API error is an RFC 9457 problem (``application/problem+json``), every request body is
limited, and the OpenAPI document says so (issue 17, ``api/errors.py``, ``api/bodies.py``).

In process over ASGI, with the replica fed directly (no Kafka), as ``tests/api/test_app.py``."""

from __future__ import annotations

import ast
import asyncio
import contextlib
import logging
import select
import socket
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

import api
from api.app import create_api
from api.bodies import LimitedRoute
from api.errors import PROBLEM_JSON, PROBLEM_TYPES, ApiError, problem_body
from api.replica import Replica
from api.routers import ROUTERS, collector
from schemas.api import Problem, ValidationProblem
from schemas.model_file import load_model
from schemas.settings import Settings
from telemetry.context import request_id
from tests.api.view_bytes import ready_replica
from tests.factories import make_event

KEY = "unit-test-key-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}
NOW = 1_790_000_000_000
MODEL = load_model()
MEMBERS = {"type", "title", "status", "detail", "instance", "code"}


def replica() -> Replica:
    identify = make_event(kind="identify", user_id="u-1", anonymous_id="a-1", traits={"email": "ann@acme.com"})
    return ready_replica(MODEL, {"u-1": [identify]}, NOW)


def make_app(fast_path: bool = True, **settings: Any) -> FastAPI:
    return create_api(
        Settings(api_keys=KEY, **settings),  # type: ignore[arg-type]
        model=MODEL,
        replica=replica(),
        clock=lambda: NOW,
        fast_path=fast_path,
    )


def send(app: FastAPI, method: str, path: str, **kwargs: Any) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            return await client.request(method, path, **kwargs)

    return asyncio.run(go())


def problem(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """The answer's problem body, checked against the model and the members every problem has."""
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == PROBLEM_JSON
    body: dict[str, Any] = r.json()
    assert set(body) >= MEMBERS, body
    assert body["status"] == status and body["code"] == code
    assert body["type"] == f"/problems/{code}" and body["title"] == PROBLEM_TYPES[code].title
    (ValidationProblem if status == 422 else Problem).model_validate(body)
    return body


# -- the problem body --------------------------------------------------------------------------


def test_an_api_error_is_a_problem_with_the_path_and_the_request_id() -> None:
    r = send(make_app(), "GET", "/v1/contacts/nobody", headers={**AUTH, "X-Request-ID": "req-1234"})
    body = problem(r, 404, "not_found")
    assert body["instance"] == "/v1/contacts/nobody" and body["request_id"] == "req-1234"
    assert body["detail"] == "no contact with id, anonymous id or email 'nobody'"


def test_the_request_id_comes_from_the_context_when_set() -> None:
    """What LOGS' wrapper sets per request (telemetry.context.request_id) goes into the body."""
    exc = ApiError(503, "not_ready", "loading")
    assert "request_id" not in problem_body(exc, "/x")
    token = request_id.set("ctx-42")
    try:
        body = problem_body(exc, "/x")
    finally:
        request_id.reset(token)
    assert body == {
        "type": "/problems/not_ready",
        "title": "Not ready",
        "status": 503,
        "detail": "loading",
        "instance": "/x",
        "code": "not_ready",
        "request_id": "ctx-42",
    }


def test_a_code_without_a_page_is_about_blank_with_the_status_phrase() -> None:
    body = problem_body(ApiError(418, "teapot", "short and stout"), None)
    assert (body["type"], body["title"], body["code"]) == ("about:blank", "I'm a Teapot", "teapot")
    assert "instance" not in body


def test_the_fast_path_and_the_full_stack_answer_the_same_problem() -> None:
    headers = {**AUTH, "X-Request-ID": "same-1"}
    fast = send(make_app(), "GET", "/v1/contacts/nobody", headers=headers)
    full = send(make_app(fast_path=False), "GET", "/v1/contacts/nobody", headers=headers)
    assert (fast.status_code, fast.headers["content-type"], fast.json()) == (
        full.status_code,
        full.headers["content-type"],
        full.json(),
    )


def test_401_keeps_www_authenticate_and_an_errors_headers_go_out() -> None:
    r = send(make_app(), "GET", "/v1/contacts/u-1")
    problem(r, 401, "unauthorized")
    assert r.headers["www-authenticate"] == "Bearer"
    app = make_app()

    @app.get("/v1/teapot")
    async def teapot() -> None:
        raise ApiError(429, "rate_limited", "slow down", headers={"Retry-After": "7", "RateLimit-Limit": "5"})

    r = send(app, "GET", "/v1/teapot")
    problem(r, 429, "rate_limited")
    assert (r.headers["retry-after"], r.headers["ratelimit-limit"]) == ("7", "5")


# -- validation: every error listed --------------------------------------------------------------


def test_every_validation_error_of_a_body_is_listed_with_a_pointer() -> None:
    r = send(
        make_app(),
        "POST",
        "/v1/webhooks",
        headers=AUTH,
        json={"url": 5, "events": "not-a-list", "enabled": "maybe", "stages": [1, {}]},
    )
    body = problem(r, 422, "invalid_request")
    pointers = {e["pointer"] for e in body["errors"]}
    assert {"#/url", "#/events", "#/enabled"} <= pointers and len(body["errors"]) >= 4, body["errors"]
    assert all({"detail", "type", "loc"} <= set(e) for e in body["errors"])
    assert {e["type"] for e in body["errors"] if e["pointer"] == "#/url"} == {"string_type"}
    assert "body/url: " not in body["detail"] and body["detail"].startswith("body.url: ")


def test_every_validation_error_of_the_query_is_listed_with_its_parameter() -> None:
    r = send(make_app(), "GET", "/v1/webhooks/wh_1/deliveries?limit=0&status=lost", headers=AUTH)
    body = problem(r, 422, "invalid_request")
    assert {(e["parameter"], e["in"]) for e in body["errors"]} == {("limit", "query"), ("status", "query")}
    assert all("pointer" not in e for e in body["errors"])


def test_a_body_that_is_not_json_points_at_the_whole_body() -> None:
    headers = {**AUTH, "Content-Type": "application/json"}
    r = send(make_app(), "POST", "/v1/contacts:batchGet", headers=headers, content=b'{"ids": [')
    body = problem(r, 422, "invalid_request")
    assert [(e["pointer"], e["type"]) for e in body["errors"]] == [("#", "json_invalid")]


def test_a_422_a_route_raises_itself_lists_its_error_too() -> None:
    r = send(make_app(), "PATCH", "/v1/webhooks/wh_1", headers=AUTH, json={"url": None})
    body = problem(r, 422, "invalid_request")
    assert body["errors"] == [
        {"detail": "cannot be null", "type": "value_error", "loc": ["body", "url"], "pointer": "#/url"}
    ]
    assert body["detail"] == "body.url: cannot be null"
    by_name = problem_body(ApiError(422, "invalid_request", "since: must not be in the future"), None)
    assert by_name["errors"] == [
        {"detail": "must not be in the future", "type": "value_error", "loc": ["since"], "parameter": "since"}
    ]
    whole = problem_body(ApiError(422, "invalid_url", "webhook URLs must use HTTPS"), None)
    assert whole["errors"] == [{"detail": "webhook URLs must use HTTPS", "type": "invalid_url", "loc": []}]
    assert "errors" not in problem_body(ApiError(404, "not_found", "gone: nowhere"), None)


def test_a_pointer_escapes_slashes_and_tildes() -> None:
    from api.errors import pointer

    assert pointer(["ids", 0]) == "#/ids/0"
    assert pointer(["a/b", "c~d"]) == "#/a~1b/c~0d"
    assert pointer([]) == "#"


def test_many_errors_are_summed_up_in_the_detail_and_all_listed() -> None:
    r = send(make_app(), "POST", "/v1/contacts:batchGet", headers=AUTH, json={"ids": [1] * 7})
    body = problem(r, 422, "invalid_request")
    assert len(body["errors"]) == 7 and "(and 2 more: see errors)" in body["detail"]
    assert [e["pointer"] for e in body["errors"]] == [f"#/ids/{i}" for i in range(7)]


# -- Starlette's own refusals and unexpected errors -------------------------------------------------


def test_an_unknown_path_is_404_and_a_wrong_method_405_with_allow() -> None:
    app = make_app()
    body = problem(send(app, "GET", "/v1/nothing-here", headers=AUTH), 404, "not_found")
    assert body["instance"] == "/v1/nothing-here" and "no route" in body["detail"]
    r = send(app, "DELETE", "/healthz")
    body = problem(r, 405, "method_not_allowed")
    assert r.headers["allow"] == "GET" and "DELETE" in body["detail"]


def test_an_unexpected_error_is_500_with_the_request_id_and_no_traceback(caplog: pytest.LogCaptureFixture) -> None:
    app = make_app()

    @app.get("/v1/boom")
    async def boom() -> None:
        raise RuntimeError("database password is hunter2")

    with caplog.at_level(logging.ERROR, logger="api.errors"):
        r = send(app, "GET", "/v1/boom", headers={"X-Request-ID": "boom-1"})
    body = problem(r, 500, "internal_error")
    assert body["request_id"] == "boom-1" and "boom-1" in body["detail"]
    assert "hunter2" not in r.text and "RuntimeError" not in r.text and "Traceback" not in r.text
    (record,) = [rec for rec in caplog.records if rec.name == "api.errors"]
    assert "boom-1" in record.getMessage() and record.exc_info is not None
    assert "hunter2" in str(record.exc_info[1])


# -- the problem types' pages ------------------------------------------------------------------------


def test_every_problem_type_has_a_page_and_the_index_lists_them() -> None:
    app = make_app()
    index = send(app, "GET", "/problems")
    assert index.status_code == 200 and index.headers["content-type"].startswith("text/html")
    for code, kind in PROBLEM_TYPES.items():
        r = send(app, "GET", f"/problems/{code}")
        assert r.status_code == 200 and kind.title in r.text, code
        assert f'href="/problems/{code}"' in index.text
    problem(send(app, "GET", "/problems/no-such-thing"), 404, "not_found")


def codes_raised() -> set[str]:
    """The codes the API's code raises: ``ApiError(status, "code", ...)`` and the subclasses'
    ``super().__init__(status, "code", ...)``, read from the source."""
    found: set[str] = set()
    root = Path(api.__file__).parent
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call) or len(node.args) < 2:
                continue
            name = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", "")
            status, code = node.args[0], node.args[1]
            if (
                name in ("ApiError", "__init__")
                and isinstance(status, ast.Constant)
                and isinstance(code, ast.Constant)
                and isinstance(code.value, str)
            ):
                found.add(code.value)
    return found


def test_every_code_the_api_raises_has_a_problem_type() -> None:
    raised = codes_raised()
    assert {"not_found", "unauthorized", "invalid_request", "not_ready", "payload_too_large", "busy"} <= raised
    assert raised - set(PROBLEM_TYPES) == set()


# -- the OpenAPI document ----------------------------------------------------------------------------


def test_the_openapi_document_describes_errors_as_problems() -> None:
    doc = make_app().openapi()
    schemas = doc["components"]["schemas"]
    assert {"Problem", "ValidationProblem"} <= set(schemas) and "HTTPValidationError" not in schemas
    assert {"type", "title", "status", "detail", "code"} <= set(schemas["Problem"]["required"])
    checked = 0
    for path, operations in doc["paths"].items():
        for method, operation in operations.items():
            for status, response in operation["responses"].items():
                if int(status) < 400 or (path, status) == ("/readyz", "503"):  # readiness detail, not an error
                    continue
                assert list(response.get("content", {})) == [PROBLEM_JSON], (method, path, status)
                want = "ValidationProblem" if status == "422" else "Problem"
                assert response["content"][PROBLEM_JSON]["schema"] == {"$ref": f"#/components/schemas/{want}"}
                checked += 1
    assert checked > 50
    contact = doc["paths"]["/v1/contacts/{contact_id}"]["get"]["responses"]
    assert {"401", "404", "503"} <= set(contact)
    for path in ("/v1/track", "/v1/batch"):  # Segment's shape: no problem documented there
        assert set(doc["paths"][path]["post"]["responses"]) == {"200"}, path


def test_the_collector_keeps_segments_error_shape() -> None:
    """The collector's answers are not problems (Segment's own shape, content type JSON)."""
    r = send(make_app(), "POST", "/v1/track", json={"type": "track"}, auth=("no-such-write-key", ""))
    assert r.status_code == 401 and r.headers["content-type"] == "application/json"
    assert set(r.json()) == {"success", "code", "message"} and r.json()["success"] is False


# -- request body limits -----------------------------------------------------------------------------


def test_every_route_but_the_collectors_is_body_limited() -> None:
    for router in ROUTERS:
        if router is collector.router:
            assert not any(isinstance(r, LimitedRoute) for r in router.routes)
            continue
        assert router.routes and all(isinstance(r, LimitedRoute) for r in router.routes), router.prefix


def raw_post(app: Any, headers: list[tuple[bytes, bytes]]) -> tuple[list[dict[str, Any]], int]:
    """POST ``{}`` to /v1/webhooks as a server would hand it to the app, with exactly ``headers``
    (a client library would fix a wrong Content-Length): the messages sent, and how many times
    the app asked for the body."""
    sent: list[dict[str, Any]] = []
    received: list[int] = []

    async def receive() -> dict[str, Any]:
        received.append(1)
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def record(message: Any) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/webhooks",
        "raw_path": b"/v1/webhooks",
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "server": ("api", 80),
        "client": ("127.0.0.1", 1),
    }
    asyncio.run(app(scope, receive, record))
    return sent, len(received)


def test_a_declared_length_over_the_limit_is_refused_before_reading() -> None:
    headers = [(b"authorization", f"Bearer {KEY}".encode()), (b"content-length", b"5000")]
    sent, reads = raw_post(make_app(api_max_body_bytes=4096), headers)
    assert sent[0]["status"] == 413 and reads == 0
    assert b'"code":"payload_too_large"' in sent[1]["body"] and b"4096" in sent[1]["body"]


def test_a_chunked_body_is_refused_at_the_chunk_that_crosses_the_limit() -> None:
    app = make_app(api_max_body_bytes=4096)
    pulled: list[int] = []

    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"ids": ["'
        for i in range(100):
            pulled.append(i)
            yield b"x" * 1000

    r = send(app, "POST", "/v1/contacts:batchGet", headers=AUTH, content=chunks())
    body = problem(r, 413, "payload_too_large")
    assert body["instance"] == "/v1/contacts:batchGet"
    assert len(pulled) < 10  # httpx's transport reads the stream whole; the route stopped well before
    assert "transfer-encoding" not in r.request.headers or r.request.headers["transfer-encoding"] == "chunked"


def test_a_body_within_the_limit_reaches_the_route_whole_chunked_or_not() -> None:
    app = make_app(api_max_body_bytes=4096)

    async def chunks() -> AsyncIterator[bytes]:
        for part in (b'{"ids": ', b'["u-1", ', b'"nobody"]}'):
            yield part

    headers = {**AUTH, "Content-Type": "application/json"}
    for content in (b'{"ids": ["u-1", "nobody"]}', chunks()):
        r = send(app, "POST", "/v1/contacts:batchGet", headers=headers, content=content)
        assert r.status_code == 200, r.text
        assert [c["contact_id"] for c in r.json()["contacts"]] == ["u-1"] and r.json()["not_found"] == ["nobody"]


def test_a_route_without_a_body_refuses_a_declared_oversized_one_too() -> None:
    r = send(make_app(api_max_body_bytes=2048), "DELETE", "/v1/webhooks/wh_1", headers=AUTH, content=b"x" * 3000)
    problem(r, 413, "payload_too_large")


def test_a_bad_content_length_is_400() -> None:
    sent, _ = raw_post(make_app(), [(b"content-length", b"lots")])
    assert sent[0]["status"] == 400 and b'"code":"bad_request"' in sent[1]["body"]


def test_the_collector_keeps_its_own_limits() -> None:
    """A collector batch over the API's limit but within Segment's 500 KB is read (here: refused
    for want of Kafka, 503), one over 500 KB refused in Segment's shape; neither is a problem."""
    app = make_app(api_max_body_bytes=2048, write_keys="wk-0123456789abcdef")
    answers = [
        send(
            app,
            "POST",
            "/v1/batch",
            json={"batch": [{"type": "track", "event": "x" * size, "userId": "u"}]},
            auth=("wk-0123456789abcdef", ""),
        )
        for size in (3000, 600_000)
    ]
    assert [(r.status_code, r.json()["code"]) for r in answers] == [(503, "unavailable"), (400, "too_large")]
    assert all(r.headers["content-type"] == "application/json" and r.json()["success"] is False for r in answers)


def test_a_real_server_answers_413_long_before_a_chunked_body_ends() -> None:
    """Over a socket to uvicorn: a chunked body of 32 MiB to a 64 KiB limit is answered 413
    while the client is still sending (what it got out is bounded by the socket buffers, as the
    route stops reading at the limit), not after the whole body."""
    app = make_app(api_max_body_bytes=64 * 1024)
    listening = socket.socket()
    listening.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listening]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.01)
        client = socket.create_connection(listening.getsockname(), timeout=30)
        client.sendall(
            b"POST /v1/contacts:batchGet HTTP/1.1\r\nHost: api\r\nContent-Type: application/json\r\n"
            + f"Authorization: Bearer {KEY}\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
        )
        frame = b"2000\r\n" + b"x" * 0x2000 + b"\r\n"
        total, sent = 32 * 1024 * 1024, 0
        client.setblocking(False)
        while sent < total and time.monotonic() < deadline:
            readable, writable, _ = select.select([client], [client], [], 1)
            if readable:
                break
            if writable:
                with contextlib.suppress(BlockingIOError):
                    sent += client.send(frame)
        client.setblocking(True)
        answer = b""
        while not answer.endswith(b"}") and (more := client.recv(65536)):
            answer += more
        head, _, body = answer.partition(b"\r\n\r\n")
        client.close()
    finally:
        server.should_exit = True
        thread.join(timeout=30)
    assert head.startswith(b"HTTP/1.1 413") and b"application/problem+json" in head, head
    assert b'"code":"payload_too_large"' in body
    assert sent < total // 2, sent
