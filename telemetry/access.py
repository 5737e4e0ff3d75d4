"""What the API does around every HTTP request: its request id, its access log line, its latency.

:meth:`RequestTelemetry.serve` wraps the API's ASGI call (``ScorestreamApi.__call__``), so it runs
for every request, the direct contact path and the collector's included (Starlette middleware
would turn the direct path off). Per request it

- takes the caller's ``X-Request-ID`` when it is sane (1 to 128 visible ASCII characters), else
  makes one (32 hex digits), sets :data:`telemetry.context.request_id` while the request is served
  (every log line written meanwhile carries it, see :mod:`telemetry.logs`) and adds
  ``X-Request-ID`` to the answer's headers;
- writes one access log line at INFO on ``scorestream.access`` (``SCORESTREAM_ACCESS_LOG``):
  method, path with the values of secret-looking query parameters redacted (never a header),
  route template, status, duration, request id, client address (a health probe or a scrape that
  succeeds at DEBUG: :data:`PROBES`);
- observes ``scorestream_api_request_duration_seconds{method,route,status}``
  (``SCORESTREAM_METRICS_ENABLED``).

It costs a few microseconds a request without the log line (``python -m bench.telemetry_cost``
measures it against the bare call); a JSON log line about 10 more (written by
:func:`telemetry.logs.write_direct`, without a LogRecord, when only our handler would see it).
"""

from __future__ import annotations

import logging
import os
import re
import time
from typing import Any

from prometheus_client.metrics import Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from schemas.settings import Settings
from telemetry import context
from telemetry.http_metrics import API_REQUEST_DURATION, METHODS, UNMATCHED
from telemetry.logs import redact_query, write_direct

access_log = logging.getLogger("scorestream.access")

HEADER = b"x-request-id"
SANE_ID = re.compile(rb"[\x21-\x7e]{1,128}")  # visible ASCII, no spaces, at most 128 characters
ROUTE = "scorestream.route"  # scope key: the route template of a request the API serves outside Starlette's router
# health probes and scrapes, every few seconds from each prober: logged at DEBUG unless they fail
PROBES = frozenset({"/healthz", "/readyz", "/metrics"})
SENSITIVE = ("key", "token", "secret", "pass", "auth", "sig", "credential", "session")  # in a query name


def request_id_of(scope: Scope) -> bytes:
    """The caller's ``X-Request-ID`` when it is sane, else a new one."""
    for name, value in scope["headers"]:
        if name == HEADER:
            if SANE_ID.fullmatch(value):
                return bytes(value)
            break
    return os.urandom(16).hex().encode()


def route_of(scope: Scope) -> str:
    """The route template that served the request (``unmatched`` when none did)."""
    template = scope.get(ROUTE)
    if template is None:
        template = getattr(scope.get("route"), "path", None)
    return template if isinstance(template, str) else UNMATCHED


class RequestTelemetry:
    """Request ids, access log and latency histogram of one API app (see the module's doc)."""

    __slots__ = ("_children", "access_log", "metrics")

    def __init__(self, access_log: bool = True, metrics: bool = True) -> None:
        self.access_log = access_log
        self.metrics = metrics
        self._children: dict[tuple[str, str, int], Histogram] = {}

    @classmethod
    def from_settings(cls, settings: Settings) -> RequestTelemetry:
        return cls(access_log=settings.access_log, metrics=settings.metrics_enabled)

    async def serve(self, scope: Scope, receive: Receive, send: Send, app: ASGIApp) -> None:
        """Serve the HTTP request ``scope`` with ``app``, with its request id, log line and latency."""
        rid = request_id_of(scope)
        status = 500  # what the server answers when the app fails before answering

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                # a new message and header list: the app's may be shared between answers
                message = {**message, "headers": [*message.get("headers", ()), (HEADER, rid)]}
            await send(message)

        token = context.request_id.set(rid.decode())
        started = time.perf_counter()
        try:
            await app(scope, receive, send_with_id)
        except BaseException:
            # the id stays set: the server logs the exception after this returns, in the request's
            # own task (uvicorn's "Exception in ASGI application"), and that line carries it too
            self.done(scope, status, time.perf_counter() - started)
            raise
        self.done(scope, status, time.perf_counter() - started)
        context.request_id.reset(token)

    def done(self, scope: Scope, status: int, seconds: float) -> None:
        """The request's log line and latency."""
        method: str = scope["method"]
        route = route_of(scope)
        if self.metrics:
            key = (method if method in METHODS else "other", route, status)  # bounded, whatever is sent
            child = self._children.get(key)
            if child is None:
                child = self._children[key] = API_REQUEST_DURATION.labels(key[0], route, str(status))
            child.observe(seconds)
        if self.access_log:
            level = logging.DEBUG if route in PROBES and status < 400 else logging.INFO
            if access_log.isEnabledFor(level):
                self.log(scope, method, route, status, seconds, level)

    @staticmethod
    def log(scope: Scope, method: str, route: str, status: int, seconds: float, level: int = logging.INFO) -> None:
        raw = scope.get("raw_path")
        path = raw.decode("latin-1") if raw else scope["path"]
        if query := scope.get("query_string"):
            path = f"{path}?{redact_query(query, SENSITIVE)}"
        client = scope.get("client")
        ms = round(seconds * 1000, 3)
        fields: dict[str, Any] = {
            "method": method,
            "path": path,
            "route": route,
            "status": status,
            "duration_ms": ms,
            "client": client[0] if client else None,
        }
        if not write_direct(access_log, level, f"{method} {path} {status} {ms:.1f} ms", fields):
            access_log.log(level, "%s %s %d %.1f ms", method, path, status, ms, extra=fields)
