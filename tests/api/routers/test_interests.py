"""The interest routes in process, over ASGI: a contact's profile from its view (decayed to now, by
any of its ids), the model without interests, and the rising-categories report over real chDB."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from analytics.client import Store
from analytics.migrations import migrate
from analytics.rows import EVENT_COLUMNS
from api.app import create_api
from api.replica import Replica
from schemas.api_interests import InterestsOut, InterestsReportOut
from schemas.model_file import load_model
from schemas.settings import Settings
from scorestream import Event, Model
from tests.analytics.test_interests import row
from tests.api.view_bytes import ready_replica
from tests.factories import DAY, HOUR, T0, make_event

KEY = "unit-test-key-0123456789"
MODEL = load_model()
NOW = T0 + 30 * DAY  # one half-life of the default model's interests after T0


def product(event: str, pid: str, at: int, category: str, **props: object) -> Event:
    properties = {"product_id": pid, "category": category, "brand": "acme", "name": pid.title(), **props}
    return make_event(
        event=event, channel="web", user_id="u-1", anonymous_id="a-1", timestamp_ms=at, properties=properties
    )


EVENTS = [
    product("Product Viewed", "boot", T0, "hardware"),
    product("Product Added", "boot", T0 + HOUR, "hardware"),
    product("Product Viewed", "cap", T0, "apparel"),
    make_event(
        event="Order Completed",
        channel="store",
        user_id="u-1",
        timestamp_ms=T0 + 2 * HOUR,
        properties={"revenue": 0, "products": [{"product_id": "cap", "category": "apparel"}]},
    ),
    make_event(kind="page", event=None, channel="web", user_id="u-1", path="/training/intro", timestamp_ms=T0),
]


def make_app(model: Model = MODEL, store: Store | None = None) -> FastAPI:
    replica: Replica = ready_replica(model, {"u-1": EVENTS}, NOW)
    app = create_api(Settings(api_keys=KEY), model=model, replica=replica, clock=lambda: NOW)  # type: ignore[arg-type]
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


def test_the_profile_is_decayed_to_now_and_found_by_any_id() -> None:
    responses = get(make_app(), "/v1/contacts/u-1/interests", "/v1/contacts/a-1/interests")
    assert [r.status_code for r in responses] == [200, 200]
    body = InterestsOut.model_validate(responses[0].json())
    assert responses[1].json() == responses[0].json()
    assert body.contact_id == "u-1" and body.half_life_days == 30
    assert body.as_of.timestamp() * 1000 == NOW
    half = 2 ** (-(NOW - T0) / (30 * DAY))  # 0.5
    categories = {c.key: c.affinity for c in body.categories}
    # hardware: 1 at T0 + 3 an hour later; apparel: 1 + 5 (the free order); training: a page path
    assert categories["hardware"] == pytest.approx(half * (1 + 3 * 2 ** (HOUR / (30 * DAY))), abs=1e-6)
    assert categories["apparel"] == pytest.approx(half * 1 + 5 * 2 ** (-(NOW - T0 - 2 * HOUR) / (30 * DAY)), abs=1e-6)
    assert categories["training"] == pytest.approx(half, abs=1e-6)
    assert [c.key for c in body.categories] == ["apparel", "hardware", "training"]
    assert [(p.id, p.name) for p in body.seen_not_bought] == [("boot", "Boot")]  # cap was ordered, for free
    assert {p.id for p in body.products} == {"boot", "cap"}


def test_errors_are_problems() -> None:
    no_interests = Model.from_dict({"name": "plain"})
    missing = get(make_app(), "/v1/contacts/nobody/interests")[0]
    assert missing.status_code == 404 and missing.json()["code"] == "not_found"
    no_key = get(make_app(), "/v1/contacts/u-1/interests", key=False)[0]
    assert no_key.status_code == 401
    plain = get(make_app(no_interests), "/v1/contacts/u-1/interests", "/v1/reports/interests")
    assert [r.status_code for r in plain] == [404, 404]
    assert "interests" in plain[0].json()["detail"]


@pytest.fixture
def store(chdb_path: Path) -> Iterator[Store]:
    s = Store(f"chdb://{chdb_path}?database=int_{uuid.uuid4().hex[:8]}")

    async def setup() -> None:
        await migrate(s)
        rows = [
            row(1, NOW - DAY, "u-1", event="Product Viewed", properties={"category": "training"}),
            row(2, NOW - DAY, "u-2", event="Product Added", properties={"category": "training"}),
            row(3, NOW - 9 * DAY, "u-1", event="Product Viewed", properties={"category": "hardware"}),
            row(4, NOW - 2 * DAY, "u-1", type="page", name="T", properties={"path": "/training/x"}),
        ]
        await s.insert("events", EVENT_COLUMNS, rows)

    asyncio.run(setup())
    yield s
    s.close_sync()


def test_the_report_route_reads_the_archive_and_checks_the_window(store: Store) -> None:
    app = make_app(store=store)
    ok, short, bad, too_long = get(
        app,
        "/v1/reports/interests",
        "/v1/reports/interests?window=3d",
        "/v1/reports/interests?window=soon",
        "/v1/reports/interests?window=400d",
    )
    assert ok.status_code == 200, ok.text
    body = InterestsReportOut.model_validate(ok.json())
    assert [(c.category, c.points, c.previous, c.contacts) for c in body.categories] == [
        ("training", 5.0, 0.0, 2),  # 1 + 3 + a page of /training*
        ("hardware", 0.0, 1.0, 0),
    ]
    assert [c["category"] for c in short.json()["categories"]] == ["training"]  # 3d: hardware is older than 6 days
    assert bad.status_code == 422 and bad.json()["code"] == "invalid_request"
    assert too_long.status_code == 422
    assert get(app, "/v1/reports/interests", key=False)[0].status_code == 401


def test_the_export_holds_the_interest_profile() -> None:
    """A person's export (right of access) gives the profile as the route does (the archive not
    readable here: the live part is still given)."""
    app = make_app()
    export, profile = get(app, "/v1/contacts/a-1/export", "/v1/contacts/u-1/interests")
    assert export.status_code == 200, export.text
    assert export.json()["archive"]["status"] == "unavailable"
    assert export.json()["interests"] == profile.json()
    assert profile.json()["seen_not_bought"]
