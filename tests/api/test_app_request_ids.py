"""Every API answer carries ``X-Request-ID``; every request is logged once and timed.

The wrapper (:mod:`telemetry.access`, in ``ScorestreamApi.__call__``) serves the direct contact
path, the collector's paths and the full stack alike, and the direct path is still taken with it.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client import REGISTRY
from starlette.types import Message, Receive, Scope, Send

from api.app import ScorestreamApi
from schemas.settings import Settings
from telemetry import context
from telemetry.access import RequestTelemetry, request_id_of
from telemetry.logs import configure
from tests.api.test_app_fast_path import KEY, apps, count_fast, make_replica
from tests.collector.test_service import AUTH, FakePublisher, make_app, track

GENERATED = re.compile(r"^[0-9a-f]{32}$")
AUTH_HEADER = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture
def json_logs(restore_logging: None) -> io.StringIO:
    """This process's log lines as JSON into a buffer (the logging setup restored after)."""
    buffer = io.StringIO()
    configure(Settings(log_format="json", log_level="INFO"), role="api", stream=buffer)
    return buffer


def lines(buffer: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in buffer.getvalue().splitlines() if line]


def send(app: FastAPI, method: str, path: str, headers: dict[str, Any] | None = None, **kwargs: Any) -> httpx.Response:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)

    async def go() -> httpx.Response:
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as http:
            return await http.request(method, path, headers=headers, **kwargs)

    return asyncio.run(go())


def test_every_path_answers_with_a_request_id() -> None:
    fast, full = apps(make_replica())
    calls = count_fast(fast)
    requests = [
        ("GET", "/v1/contacts/u-1", AUTH_HEADER, 200),  # the direct path
        ("GET", "/v1/contacts/nobody", AUTH_HEADER, 404),  # the direct path, an ApiError
        ("GET", "/v1/contacts/u-1", {}, 401),  # the direct path, no key
        ("GET", "/v1/contacts/u-1?fields=all", AUTH_HEADER, 200),  # the full stack (a query string)
        ("GET", "/v1/model", AUTH_HEADER, 200),  # the full stack
        ("GET", "/healthz", {}, 200),
        ("GET", "/no/such/route", {}, 404),  # unmatched
        ("DELETE", "/v1/contacts/u-1", AUTH_HEADER, 405),
        ("POST", "/v1/contacts:batchGet", AUTH_HEADER, 422),  # validation error, no body
    ]
    for app in (fast, full):
        for method, path, headers, status in requests:
            r = send(app, method, path, headers)
            assert r.status_code == status, (path, r.text)
            assert GENERATED.match(r.headers["x-request-id"]), path
            assert len(r.headers.get_list("x-request-id")) == 1
    assert calls[0] == 3  # the wrapper leaves the direct path on


def test_the_collector_answers_with_a_request_id() -> None:
    app = make_app(FakePublisher())
    ok = send(app, "POST", "/v1/track", {"X-Request-ID": "segment-42"}, json=track(), auth=AUTH)
    assert ok.status_code == 200 and ok.headers["x-request-id"] == "segment-42"
    refused = send(app, "POST", "/v1/track", json=track())  # no write key
    assert refused.status_code == 401 and GENERATED.match(refused.headers["x-request-id"])


def test_a_failing_request_answers_with_a_request_id(monkeypatch: pytest.MonkeyPatch) -> None:
    fast, _ = apps(make_replica())

    def broken(*_: object) -> bytes:
        raise RuntimeError("boom")

    monkeypatch.setattr(fast.state.replica, "find", broken)
    r = send(fast, "GET", "/v1/contacts/u-1", {**AUTH_HEADER, "X-Request-ID": "r-500"})
    assert r.status_code == 500 and r.headers["x-request-id"] == "r-500"


@pytest.mark.parametrize(
    ("given", "echoed"),
    [
        ("abc-123", True),
        ("0af7651916cd43dd8448eb211c80319c", True),
        ("trace=1;span=2/x:y@z", True),
        ("x" * 128, True),
        ("x" * 129, False),
        ("has space", False),
        ("", False),
        ("caf\u00e9".encode(), False),  # not ASCII
    ],
)
def test_a_sane_request_id_is_echoed_else_replaced(given: str | bytes, echoed: bool) -> None:
    fast, _ = apps(make_replica())
    r = send(fast, "GET", "/v1/contacts/u-1", {**AUTH_HEADER, "X-Request-ID": given})
    assert r.status_code == 200
    if echoed:
        assert r.headers["x-request-id"] == given
    else:
        assert GENERATED.match(r.headers["x-request-id"])


def test_log_lines_carry_the_request_id(json_logs: io.StringIO, monkeypatch: pytest.MonkeyPatch) -> None:
    fast, _ = apps(make_replica())
    replica = fast.state.replica
    find = replica.find

    def logged_find(*args: Any, **kwargs: Any) -> Any:
        logging.getLogger("api.test").warning("looking %s up", args[0] if args else "?")
        return find(*args, **kwargs)

    monkeypatch.setattr(replica, "find", logged_find)
    r = send(fast, "GET", "/v1/contacts/u-1", {**AUTH_HEADER, "X-Request-ID": "req-7f3a"})
    assert r.status_code == 200 and r.headers["x-request-id"] == "req-7f3a"
    got = lines(json_logs)
    inside = [line for line in got if line["logger"] == "api.test"]
    assert inside and inside[0]["request_id"] == "req-7f3a" and inside[0]["level"] == "warning"
    access = [line for line in got if line["logger"] == "scorestream.access"]
    assert len(access) == 1
    line = access[0]
    assert line["request_id"] == "req-7f3a"
    assert (line["method"], line["path"], line["route"], line["status"]) == (
        "GET",
        "/v1/contacts/u-1",
        "/v1/contacts/{contact_id}",
        200,
    )
    assert line["duration_ms"] >= 0 and line["client"] == "127.0.0.1"
    assert line["role"] == "api" and isinstance(line["pid"], int)
    assert context.request_id.get() is None  # reset after the request


def test_the_access_log_hides_secrets(json_logs: io.StringIO) -> None:
    fast, _ = apps(make_replica())
    query = "model=scorestream&api_key=s3cr3t-1&token=s3cr3t-2&fields=all&Signature=s3cr3t-3"
    r = send(fast, "GET", f"/v1/contacts/u-1?{query}", AUTH_HEADER)
    assert r.status_code in (200, 400, 404, 422)
    ours = [line for line in lines(json_logs) if line["logger"] != "httpx"]  # the test's client logs its URL
    assert ours and "s3cr3t" not in json.dumps(ours) and KEY not in json.dumps(ours)
    (line,) = [line for line in lines(json_logs) if line["logger"] == "scorestream.access"]
    assert line["path"] == (
        "/v1/contacts/u-1?model=scorestream&api_key=REDACTED&token=REDACTED&fields=all&Signature=REDACTED"
    )
    assert line["route"] == "/v1/contacts/{contact_id}"


def test_probes_are_logged_at_debug_unless_they_fail(json_logs: io.StringIO) -> None:
    fast, _ = apps(make_replica())
    assert send(fast, "GET", "/healthz").status_code == 200
    assert send(fast, "GET", "/readyz").status_code == 503  # the webhook subscriptions are not read here
    access = [line for line in lines(json_logs) if line["logger"] == "scorestream.access"]
    assert [(line["path"], line["status"], line["level"]) for line in access] == [("/readyz", 503, "info")]


def test_the_access_log_can_be_turned_off(json_logs: io.StringIO) -> None:
    fast, _ = apps(make_replica())
    assert isinstance(fast, ScorestreamApi)
    fast.telemetry = RequestTelemetry.from_settings(Settings(access_log=False))
    r = send(fast, "GET", "/v1/contacts/u-1", AUTH_HEADER)
    assert r.status_code == 200 and GENERATED.match(r.headers["x-request-id"])
    assert not [line for line in lines(json_logs) if line["logger"] == "scorestream.access"]


def count(method: str, route: str, status: str) -> float:
    labels = {"method": method, "route": route, "status": status}
    return REGISTRY.get_sample_value("scorestream_api_request_duration_seconds_count", labels) or 0.0


def test_latency_is_observed_by_route_template() -> None:
    fast, full = apps(make_replica())
    before = {
        "direct": count("GET", "/v1/contacts/{contact_id}", "200"),
        "missing": count("GET", "/v1/contacts/{contact_id}", "404"),
        "unmatched": count("GET", "unmatched", "404"),
        "model": count("GET", "/v1/model", "200"),
        "odd": count("other", "unmatched", "404"),
    }
    for app in (fast, full):
        send(app, "GET", "/v1/contacts/u-1", AUTH_HEADER)
        send(app, "GET", "/v1/contacts/nobody", AUTH_HEADER)
        send(app, "GET", "/no/such/path-1", {})
        send(app, "GET", "/v1/model", AUTH_HEADER)
    send(fast, "BREW", "/pot", {})
    assert count("GET", "/v1/contacts/{contact_id}", "200") == before["direct"] + 2
    assert count("GET", "/v1/contacts/{contact_id}", "404") == before["missing"] + 2
    assert count("GET", "unmatched", "404") == before["unmatched"] + 2
    assert count("GET", "/v1/model", "200") == before["model"] + 2
    assert count("other", "unmatched", "404") == before["odd"] + 1
    assert (
        REGISTRY.get_sample_value(
            "scorestream_api_request_duration_seconds_count",
            {"method": "GET", "route": "/no/such/path-1", "status": "404"},
        )
        is None
    )  # never the raw path


def test_metrics_off_observes_nothing() -> None:
    fast, _ = apps(make_replica())
    assert isinstance(fast, ScorestreamApi)
    fast.telemetry = RequestTelemetry(access_log=False, metrics=False)
    before = count("GET", "/v1/contacts/{contact_id}", "200")
    assert send(fast, "GET", "/v1/contacts/u-1", AUTH_HEADER).status_code == 200
    assert count("GET", "/v1/contacts/{contact_id}", "200") == before


def test_a_failure_is_logged_and_the_servers_line_carries_the_id(json_logs: io.StringIO) -> None:
    async def failing(scope: Scope, receive: Receive, send: Send) -> None:
        raise RuntimeError("boom")

    async def receive() -> Message:
        return {"type": "http.request", "body": b""}

    async def send(message: Message) -> None:
        return None

    scope: Scope = {"type": "http", "method": "GET", "path": "/x", "headers": [(b"x-request-id", b"r-9")]}

    async def serve() -> str | None:
        with pytest.raises(RuntimeError, match="boom"):
            await RequestTelemetry().serve(scope, receive, send, failing)
        logging.getLogger("uvicorn.error").error("Exception in ASGI application")  # as the server does
        return context.request_id.get()

    assert asyncio.run(serve()) == "r-9"
    access, server = (line for line in lines(json_logs) if line["logger"] in ("scorestream.access", "uvicorn.error"))
    assert access["status"] == 500 and access["request_id"] == "r-9" and access["route"] == "unmatched"
    assert server["request_id"] == "r-9"


def test_request_id_of_reads_the_header_once() -> None:
    scope: Scope = {"headers": [(b"accept", b"*/*"), (b"x-request-id", b"a-1"), (b"x-request-id", b"b-2")]}
    assert request_id_of(scope) == b"a-1"
    assert GENERATED.match(request_id_of({"headers": []}).decode())
