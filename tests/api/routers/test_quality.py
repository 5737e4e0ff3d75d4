"""``GET /v1/contacts/{id}/journey``, ``/v1/reports/journey`` and ``/v1/reports/score-quality`` in
process, over ASGI, against real chDB holding the hand-built archives of
``tests/analytics/test_journey_facts.py`` and ``tests/analytics/test_score_quality.py``: keys, 422,
404, 503, and that each route answers what the analytics modules compute."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from analytics import journey_facts
from analytics import score_quality as sq
from analytics.client import Store
from analytics.rows import CONTACT_COLUMNS, EVENT_COLUMNS
from api.app import create_api
from api.routers.quality import evaluated
from schemas.settings import Settings
from schemas.times import at_of
from tests.analytics import test_journey_facts as jf
from tests.analytics import test_score_quality as qf
from tests.factories import DAY, DEFAULT_MODEL

KEY = "unit-test-key-0123456789"
NOW = qf.NOW
ROUTES = ["/v1/contacts/ann/journey", "/v1/reports/journey", "/v1/reports/score-quality"]


@pytest.fixture(scope="module")
def store(chdb_path: Path) -> Iterator[Store]:
    s = Store(f"chdb://{chdb_path}?database=quality_api_{uuid.uuid4().hex[:8]}")
    events, contacts = jf.build()

    async def setup() -> None:
        await qf.fill(s, *qf.hand_built())
        await s.insert("events", EVENT_COLUMNS, events)
        await s.insert("contacts", CONTACT_COLUMNS, contacts)

    asyncio.run(setup())
    yield s
    s.close_sync()


def make_app(store: Store | None) -> FastAPI:
    app = create_api(Settings(api_keys=KEY), model=DEFAULT_MODEL, clock=lambda: NOW)  # type: ignore[arg-type]
    if store is not None:

        async def get() -> Store:
            return store

        app.state.analytics = get
    return app


def get(app: FastAPI, *paths: str, key: bool = True) -> list[httpx.Response]:
    headers = {"Authorization": f"Bearer {KEY}"} if key else {}

    async def go() -> list[httpx.Response]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as client:
            return [await client.get(p, headers=headers) for p in paths]

    return asyncio.run(go())


def iso(ms: int) -> str:
    return at_of(ms).isoformat().replace("+00:00", "Z")


def test_keys_and_the_archives_absence(store: Store) -> None:
    assert [r.status_code for r in get(make_app(store), *ROUTES, key=False)] == [401] * 3
    for r in get(make_app(None), *ROUTES):
        assert r.status_code == 503 and r.json()["code"] == "not_ready"


def test_a_contacts_journey_by_id_and_404(store: Store) -> None:
    ann, nobody = get(make_app(store), "/v1/contacts/ann/journey", "/v1/contacts/nobody/journey")
    assert ann.status_code == 200
    expected = asyncio.run(journey_facts.journey(store, "ann"))
    assert ann.json() == expected.model_dump(mode="json")
    assert ann.json()["touches_before_first_order"]["total"] == 4
    assert nobody.status_code == 404 and nobody.json()["code"] == "not_found"
    # the anonymous visitor's id names her survivor, bea (through two merges)
    visitor = get(make_app(store), "/v1/contacts/anon-b/journey")[0]
    assert visitor.status_code == 200 and visitor.json()["contact_id"] == "bea"


def test_the_journey_report(store: Store) -> None:
    path = f"/v1/reports/journey?from={iso(jf.FROM)}&to={iso(jf.TO)}&min_n=2"
    body = get(make_app(store), path)[0].json()
    expected = asyncio.run(journey_facts.journey_report(store, jf.FROM, jf.TO, 2))
    assert body == expected.model_dump(mode="json", by_alias=True)
    assert body["buyers"] == 3 and body["offline_first"]["offline"] == 2


def test_score_quality(store: Store) -> None:
    path = f"/v1/reports/score-quality?from={iso(qf.T)}&to={iso(qf.T + 1)}&every=1d&min_n=1"
    r = get(make_app(store), path)[0]
    assert r.status_code == 200, r.text
    body = r.json()
    assert [m["role"] for m in body["models"]] == ["active"] and body["horizon_days"] == 30.0
    m = body["models"][0]
    assert (m["n"], m["positives"], m["base_rate"]) == (8, 3, 3 / 8)
    assert m["auc"] is None and any("AUC" in n for n in m["notes"])  # 3 positives: fewer than 10
    shadow = get(make_app(store), path + f"&model={qf.SHADOW}&outcome=stage:customer")[0].json()
    assert [(x["role"], x["model"], x["n"]) for x in shadow["models"]] == [("chosen", qf.SHADOW, 4)]
    assert shadow["outcome"] == "stage:customer"


@pytest.mark.parametrize(
    ("query", "param"),
    [
        ("horizon=30", "horizon"),
        ("outcome=stage:nope", "outcome"),
        ("every=1h&from=2020-01-01T00:00:00Z", "every"),
        ("group=nope", "group"),
    ],
)
def test_bad_parameters_are_422(store: Store, query: str, param: str) -> None:
    r = get(make_app(store), f"/v1/reports/score-quality?{query}")[0]
    assert r.status_code == 422 and r.json()["detail"].startswith(param)


def test_the_default_period_ends_a_horizon_before_now(store: Store) -> None:
    body = get(make_app(store), "/v1/reports/score-quality")[0].json()
    assert datetime.fromisoformat(body["to"]) == at_of(NOW - 30 * DAY)
    assert len(body["snapshots"]) == 3  # 90 days, every 30


def test_evaluated_picks_the_active_model_and_the_live_shadows() -> None:
    shadow_model = SimpleNamespace(version="shadow@1")
    live = [
        SimpleNamespace(namespace="app", model=DEFAULT_MODEL),
        SimpleNamespace(namespace="app-shadow", model=shadow_model),
    ]
    namespaces: Any = SimpleNamespace(live=lambda: live)
    both = evaluated(None, DEFAULT_MODEL, namespaces)
    assert [(e.version, e.namespace, e.role) for e in both] == [
        (DEFAULT_MODEL.version, "app", "active"),
        ("shadow@1", "app-shadow", "shadow"),
    ]
    one = evaluated("app-shadow", DEFAULT_MODEL, namespaces)
    assert [(e.version, e.role) for e in one] == [("shadow@1", "shadow")]
    retired = evaluated("old@2", DEFAULT_MODEL, namespaces)
    assert [(e.version, e.model, e.role) for e in retired] == [("old@2", DEFAULT_MODEL, "chosen")]
    assert isinstance(retired[0], sq.Evaluated)


def test_score_quality_of_a_score_group(store: Store) -> None:
    group = DEFAULT_MODEL.groups[0].id
    path = f"/v1/reports/score-quality?from={iso(qf.T)}&to={iso(qf.T + 1)}&every=1d&min_n=1&group={group}"
    body = get(make_app(store), path)[0].json()
    # the hand-built ledger keeps no group scores: every pair scores 0 in the group, one decile
    assert body["group"] == group and body["models"][0]["n"] == 8
    assert [(c["key"], c["max_score"]) for c in body["models"][0]["deciles"]] == [("1", 0.0)]
