"""The console's interests in process: the contact page's interests card shows what
``GET /v1/contacts/{id}/interests`` answers, and the interests page shows what
``GET /v1/reports/interests`` answers (against real chDB); bad input and a model without interests
get a message, never a 500."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI

from analytics.client import Store
from analytics.migrations import migrate
from analytics.rows import EVENT_COLUMNS
from api.app import create_api
from schemas.model_file import load_model
from schemas.settings import Settings
from scorestream import Model
from tests.analytics.test_interests import row
from tests.api.routers.test_interests import EVENTS, NOW
from tests.api.view_bytes import ready_replica
from tests.console.test_contacts import Browser, signed_in, values
from tests.factories import DAY

KEY = "console-interests-admin-0123456789"
READ = "console-interests-read-0123456789"
MODEL = load_model()


def build(model: Model = MODEL, store: Store | None = None) -> FastAPI:
    settings = Settings(api_keys=f"{KEY},{READ}:read:reader", console_secret="z" * 32)  # type: ignore[arg-type]
    app = create_api(settings, model=model, replica=ready_replica(model, {"u-1": EVENTS}, NOW), clock=lambda: NOW)
    if store is not None:

        async def get() -> Store:
            return store

        app.state.analytics = get
    return app


def api(app: FastAPI, path: str) -> object:
    answer = Browser(app).get(path, headers={"Authorization": f"Bearer {KEY}"})
    assert answer.status_code == 200, answer.text
    return answer.json()


@pytest.fixture
def store(chdb_path: Path) -> Iterator[Store]:
    s = Store(f"chdb://{chdb_path}?database=ci_{uuid.uuid4().hex[:8]}")

    async def setup() -> None:
        await migrate(s)
        rows = [
            row(1, NOW - DAY, "u-1", event="Product Added", properties={"category": "training"}),
            row(2, NOW - 8 * DAY, "u-2", event="Product Viewed", properties={"category": "hardware"}),
            row(3, NOW - 2 * DAY, "u-2", event="Product Viewed", properties={"category": "hardware"}),
        ]
        await s.insert("events", EVENT_COLUMNS, rows)

    asyncio.run(setup())
    yield s
    s.close_sync()


def test_the_contact_page_shows_the_interest_profile_of_the_api() -> None:
    app = build()
    body = api(app, "/v1/contacts/u-1/interests")
    assert isinstance(body, dict)
    page = signed_in(app, READ).get("/console/contacts/u-1")
    assert page.status_code == 200
    text = page.text
    assert 'data-testid="interests"' in text
    shown = values(text)
    for c in body["categories"]:
        assert float(shown[f"interest-categories-{c['key']}"]) == c["affinity"]
    for p in body["products"]:
        assert float(shown[f"interest-product-{p['id']}"]) == p["affinity"]
    assert "Seen, not bought" in text and "Boot" in text


def test_a_model_without_interests_shows_no_card_and_the_page_says_so() -> None:
    app = build(Model.from_dict({"name": "plain"}))
    client = signed_in(app, READ)
    assert 'data-testid="interests"' not in client.get("/console/contacts/u-1").text
    page = client.get("/console/interests")
    assert page.status_code == 200 and "keeps no interests" in page.text


def test_the_interests_page_shows_the_report_of_the_api(store: Store) -> None:
    app = build(store=store)
    body = api(app, "/v1/reports/interests?window=7d")
    assert isinstance(body, dict) and body["categories"]
    client = signed_in(app, READ)
    page = client.get("/console/interests")
    assert page.status_code == 200, page.text
    shown = values(page.text)
    for c in body["categories"]:
        assert float(shown[f"points-{c['category']}"]) == c["points"]
        assert float(shown[f"change-{c['category']}"]) == c["change"]
    assert client.get("/console/interests?window=5y").status_code == 400
    assert Browser(app).get("/console/interests").status_code == 303  # a session first
