"""What the per-request and per-batch telemetry costs, in process, beside the bare work it wraps.

* ``wrapper_us``: :class:`telemetry.access.RequestTelemetry` (request id, header, context, latency
  histogram; no access log line) around a trivial ASGI app, minus the bare call of that app,
  alternating rounds, best of each;
* ``access_line_us``: the same with the JSON access log line written (to a buffer);
* ``stage_batch_us`` / ``trigger_us``: what a worker stage's metrics add to one batch
  (:class:`telemetry.metrics.Stage`), and one trigger count;
* ``rate_limit_us``: one token-bucket charge of an API key (:class:`api.limits.RateLimits`).

No broker, no HTTP: ``bench.api_middleware`` measures the same parts in a real API under ``wrk``.
``python -m bench.telemetry_cost`` prints the figures; ``bench.run --only telemetry`` records them.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import time
import timeit
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.types import Message, Receive, Scope, Send

from api.limits import RateLimits
from schemas.api_keys import parse_entry
from schemas.settings import Settings, rate_limit
from telemetry import metrics
from telemetry.access import RequestTelemetry
from telemetry.logs import configure

START: Message = {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]}
BODY: Message = {"type": "http.response.body", "body": b"ok"}
SCOPE: Scope = {
    "type": "http",
    "method": "GET",
    "path": "/v1/contacts/u-1",
    "raw_path": b"/v1/contacts/u-1",
    "query_string": b"",
    "headers": [(b"host", b"api"), (b"authorization", b"Bearer x"), (b"accept", b"*/*")],
    "client": ("127.0.0.1", 5000),
    "scorestream.route": "/v1/contacts/{contact_id}",
}


async def _app(scope: Scope, receive: Receive, send: Send) -> None:
    await send(START)
    await send(BODY)


async def _receive() -> Message:
    return {"type": "http.request", "body": b""}


async def _sink(message: Message) -> None:
    return None


async def _per_call(call: Callable[[], Awaitable[None]], n: int) -> float:
    started = time.perf_counter()
    for _ in range(n):
        await call()
    return (time.perf_counter() - started) / n


async def _wrapped_vs_bare(wrapper: RequestTelemetry, n: int, rounds: int) -> tuple[float, float]:
    """Seconds per request, bare and wrapped: alternating rounds, the best of each."""
    bares, wraps = [], []
    for _ in range(rounds):
        bares.append(await _per_call(lambda: _app(SCOPE, _receive, _sink), n))
        wraps.append(await _per_call(lambda: wrapper.serve(SCOPE, _receive, _sink, _app), n))
    return min(bares), min(wraps)


def measure(n: int = 20_000, rounds: int = 5) -> dict[str, Any]:
    bare_s, wrapped_s = asyncio.run(_wrapped_vs_bare(RequestTelemetry(access_log=False, metrics=True), n, rounds))
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        configure(Settings(log_format="json", log_level="INFO"), role="bench", stream=io.StringIO())
        _, logged_s = asyncio.run(_wrapped_vs_bare(RequestTelemetry(access_log=True, metrics=True), n, rounds))
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    stage = metrics.Stage("bench")
    batch_s = min(timeit.repeat(lambda: stage.batch(250, 0.002), number=n, repeat=rounds)) / n
    trigger_s = min(timeit.repeat(lambda: metrics.trigger("bench.kind"), number=n, repeat=rounds)) / n
    limits = RateLimits({"read": rate_limit("1000000/second")})
    key = parse_entry("bench-key-0123456789abcdef:read")
    limit_s = min(timeit.repeat(lambda: limits.charge(key, "read"), number=n, repeat=rounds)) / n
    return {
        "bare_call_us": round(bare_s * 1e6, 2),
        "wrapped_call_us": round(wrapped_s * 1e6, 2),
        "wrapper_us": round((wrapped_s - bare_s) * 1e6, 2),
        "access_line_us": round((logged_s - wrapped_s) * 1e6, 2),
        "stage_batch_us": round(batch_s * 1e6, 2),
        "trigger_us": round(trigger_s * 1e6, 2),
        "rate_limit_us": round(limit_s * 1e6, 2),
        "calls_per_round": n,
        "rounds": rounds,
    }


if __name__ == "__main__":
    print(json.dumps(measure(), indent=2))
