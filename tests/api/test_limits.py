"""Rate limits per API key and scope: 429 ``rate_limited`` with ``Retry-After`` and ``RateLimit-*``,
on the direct contact path as on the full stack; ``batchGet`` costs one per id; keys and scopes
have budgets of their own; ``0`` turns a limit off."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.responses import Response
from starlette.types import Scope

from api.app import ScorestreamApi, create_api
from api.errors import ApiError
from api.limits import RateLimits
from api.replica import Replica
from schemas.api_keys import parse_entry
from schemas.model_file import load_model
from schemas.settings import Settings, rate_limit
from tests.api.view_bytes import ready_replica
from tests.factories import T0, make_event

MODEL = load_model()
READ, OTHER, ADMIN = "read-key-0123456789abcdef", "other-key-0123456789abcdef", "admin-key-0123456789abcdef"
KEYS = f"{READ}:read:crm,{OTHER}:read:bi,{ADMIN}:admin:ops"
RATE_HEADERS = ("retry-after", "ratelimit-limit", "ratelimit-remaining", "ratelimit-reset")


def code_of(response: httpx.Response) -> str:
    """The error code, in the problem+json shape or the older ``{"error": {...}}`` one."""
    body = response.json()
    return str(body.get("code") or body["error"]["code"])


def make_replica() -> Replica:
    return ready_replica(MODEL, {"u-1": [make_event(user_id="u-1")]}, T0)


def make_app(fast_path: bool = True, **limits: Any) -> FastAPI:
    settings = Settings(api_keys=KEYS, **limits)  # type: ignore[arg-type]
    return create_api(settings, model=MODEL, replica=make_replica(), clock=lambda: T0 + 1, fast_path=fast_path)


def send(app: FastAPI, requests: list[tuple[str, str, str, Any]]) -> list[httpx.Response]:
    """``(method, path, key, json body)`` each, in order."""

    async def go() -> list[httpx.Response]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as client:
            return [
                await client.request(m, p, headers={"Authorization": f"Bearer {k}"}, json=body)
                for m, p, k, body in requests
            ]

    return asyncio.run(go())


def get(path: str, key: str = READ) -> tuple[str, str, str, Any]:
    return ("GET", path, key, None)


def batch(n: int, key: str = READ) -> tuple[str, str, str, Any]:
    return ("POST", "/v1/contacts:batchGet", key, {"ids": [f"u-{i}" for i in range(n)]})


@pytest.mark.parametrize("fast_path", [True, False])
def test_over_the_budget_is_429_with_retry_after_and_ratelimit_headers(fast_path: bool) -> None:
    app = make_app(fast_path, rate_limit_read="3/minute")
    answers = send(app, [get("/v1/contacts/u-1")] * 4)
    assert [r.status_code for r in answers] == [200, 200, 200, 429]
    refused = answers[-1]
    assert code_of(refused) == "rate_limited" and "'crm'" in refused.text and READ not in refused.text
    assert refused.headers["ratelimit-limit"] == "3" and refused.headers["ratelimit-remaining"] == "0"
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    assert refused.headers["ratelimit-reset"] == refused.headers["retry-after"]
    assert refused.headers["ratelimit-policy"] == "3;w=60"


def test_the_direct_path_refuses_as_the_full_stack_does() -> None:
    requests = [get("/v1/contacts/u-1")] * 3 + [get("/v1/contacts/nobody")]
    app = make_app(True, rate_limit_read="2/minute")
    assert isinstance(app, ScorestreamApi) and app.fast_get is not None
    inner, answered = app.fast_get, []

    async def counted(scope: Scope, contact_id: str) -> Response:
        answer = await inner(scope, contact_id)  # raising would send the request to the full stack
        answered.append(answer.status_code)
        return answer

    app.fast_get = counted
    fast = send(app, requests)
    assert answered == [200, 200, 429, 429]  # every one answered by the direct path
    full = send(make_app(False, rate_limit_read="2/minute"), requests)
    assert [r.status_code for r in fast] == [r.status_code for r in full] == [200, 200, 429, 429]
    for f, g in zip(fast, full, strict=True):
        assert [f.headers.get(h) for h in RATE_HEADERS] == [g.headers.get(h) for h in RATE_HEADERS]
        assert f.headers["content-type"] == g.headers["content-type"]


def test_each_key_and_each_scope_has_its_own_budget() -> None:
    app = make_app(rate_limit_read="2/minute", rate_limit_admin="1/minute")
    answers = send(
        app,
        [get("/v1/model")] * 3
        + [get("/v1/model", OTHER)]  # another key: its own budget
        + [get("/v1/webhooks", ADMIN), get("/v1/webhooks", ADMIN)]  # admin: 1 a minute
        + [get("/v1/model", ADMIN)] * 2,  # the admin key's read budget is untouched
    )
    assert [r.status_code for r in answers] == [200, 200, 429, 200, 503, 429, 200, 200]
    assert answers[5].headers["ratelimit-limit"] == "1" and code_of(answers[5]) == "rate_limited"


def test_batch_get_costs_one_per_id() -> None:
    app = make_app(rate_limit_read="10/minute")
    answers = send(app, [batch(4), batch(5), get("/v1/contacts/u-1"), batch(1), get("/v1/model", OTHER)])
    assert [r.status_code for r in answers] == [200, 200, 200, 429, 200]  # 4 + 5 + 1 = 10, then over
    # a batch larger than the whole budget costs the whole budget: it goes through once per window
    big = send(make_app(rate_limit_read="10/minute"), [batch(50), get("/v1/contacts/u-1")])
    assert [r.status_code for r in big] == [200, 429]
    assert len(big[0].json()["not_found"]) == 49


def test_a_refused_request_spends_nothing_and_the_window_moves_on() -> None:
    app = make_app(rate_limit_read="2/second")
    first = send(app, [get("/v1/model")] * 5)
    assert [r.status_code for r in first] == [200, 200, 429, 429, 429]
    assert first[-1].headers["retry-after"] == "1"
    time.sleep(1.3)  # the window is one second: generous margin
    assert [r.status_code for r in send(app, [get("/v1/model")] * 3)] == [200, 200, 429]


@pytest.mark.parametrize("off", ["0", ""])
def test_zero_or_empty_is_no_limit(off: str) -> None:
    app = make_app(rate_limit_read=off, rate_limit_admin="1/minute")
    assert {r.status_code for r in send(app, [get("/v1/model")] * 50 + [batch(1000)])} == {200}


@pytest.mark.parametrize(
    ("spec", "amount", "seconds"),
    [("100/second", 100, 1), ("5000/minute", 5000, 60), ("10 per 5 seconds", 10, 5), (" 7/hour ", 7, 3600)],
)
def test_limits_parse(spec: str, amount: int, seconds: int) -> None:
    item = rate_limit(spec)
    assert item is not None and (item.amount, item.get_expiry()) == (amount, seconds)


@pytest.mark.parametrize("spec", ["fast", "100/fortnight", "0/second", "1/second;2/minute", "100"])
def test_malformed_limits_are_refused_at_start(spec: str) -> None:
    with pytest.raises(ValueError, match="a rate limit is like"):
        Settings(rate_limit_read=spec)


def test_a_bucket_lets_a_burst_through_then_the_sustained_rate() -> None:
    now = [1000.0]
    limits = RateLimits({"read": rate_limit("10/second")}, clock=lambda: now[0])
    key = parse_entry("unit-test-key-0123456789:read")

    def passes(n: int) -> int:
        done = 0
        for _ in range(n):
            try:
                limits.charge(key, "read")
            except ApiError:
                continue
            done += 1
        return done

    assert passes(15) == 10  # the full bucket: a burst of 10
    now[0] += 0.25  # 2.5 tokens back
    assert passes(5) == 2
    refused = limits.refusal(limits.buckets["read"], (key.name, "read"), "over")
    assert refused.headers is not None and refused.headers["RateLimit-Remaining"] == "0"
    now[0] += 10
    assert passes(20) == 10  # full again, never more than full
    for _ in range(100):  # at the sustained rate (one token every 0.1 s) every request passes
        now[0] += 0.1
        assert passes(1) == 1
    assert list(limits.full_at) == [(key.name, "read")]  # one number per key and scope, whatever the traffic


def test_limits_start_no_thread_and_forget_the_addresses_of_full_buckets(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    started: list[threading.Thread] = []
    monkeypatch.setattr(threading.Thread, "start", lambda self: started.append(self))
    limits = RateLimits({"unauthenticated": rate_limit("5/second")}, clock=lambda: now[0])
    for i in range(300):
        limits.charge_address(f"10.0.{i // 256}.{i % 256}")
    assert len(limits.full_at) == 300
    now[0] += 61  # every bucket is full again, and a minute has passed
    limits.charge_address("10.9.9.9")
    assert list(limits.full_at) == [("address", "10.9.9.9")]
    assert started == []


@pytest.mark.parametrize("fast_path", [True, False])
def test_requests_without_a_valid_key_can_be_limited_per_address(fast_path: bool) -> None:
    app = make_app(fast_path, rate_limit_unauthenticated="3/minute")
    wrong = get("/v1/contacts/u-1", "unknown-key-0123456789")
    answers = send(app, [wrong] * 3 + [("GET", "/v1/model", "", None), get("/v1/contacts/u-1"), get("/v1/model")])
    assert [r.status_code for r in answers] == [401, 401, 401, 429, 200, 200]  # a valid key is not held back
    assert code_of(answers[3]) == "rate_limited" and answers[3].headers["ratelimit-limit"] == "3"
    assert "127.0.0.1" not in answers[3].text
    # off by default
    assert {r.status_code for r in send(make_app(fast_path), [wrong] * 30)} == {401}
