"""Score groups in the console (in process, the replica fed directly): the contact page's groups
(score, band and rules as ``GET /v1/contacts/{id}`` answers them) and the personas & forecast
page's groups report (as ``GET /v1/reports/groups`` from a chDB archive); nothing for a model
without groups."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

from fastapi import FastAPI

from analytics.client import Store
from analytics.migrations import migrate
from analytics.rows import CONTACT_COLUMNS
from api.app import create_api
from api.replica import Replica
from kafka_io.clients import KafkaConnection
from schemas.settings import Settings
from scorestream import Model, apply_events
from tests.analytics.archive import NOW as ARCHIVE_NOW
from tests.analytics.test_groups import CONTACTS
from tests.api.view_bytes import view_bytes
from tests.console.test_contacts import KEY, READ, api, signed_in, values
from tests.factories import DAY, make_event
from tests.grouped import GROUPED_MODEL

NOW = 1_790_000_000_000


def app_of(model: Model) -> FastAPI:
    replica = Replica(kafka=KafkaConnection("127.0.0.1:1"), views_topic="c", status_topic="s")
    events = [
        make_event(kind="page", event=None, channel="web", user_id="u-1", path="/hardware/a", timestamp_ms=NOW - DAY),
        make_event(event="Hardware Quote Requested", channel="web", user_id="u-1", timestamp_ms=NOW - DAY),
        make_event(kind="page", event=None, channel="web", user_id="u-1", path="/pricing", timestamp_ms=NOW - 2 * DAY),
    ]
    replica.apply(b"u-1", view_bytes(apply_events(None, "u-1", events, model), model))
    replica.caught_up.set()
    settings = Settings(api_keys=f"{KEY},{READ}:read:reader", console_secret="x" * 32)  # type: ignore[arg-type]
    return create_api(settings, model=model, replica=replica, clock=lambda: NOW)


def test_the_contact_page_shows_every_group_as_the_api_does() -> None:
    app = app_of(GROUPED_MODEL)
    page = signed_in(app).get("/console/contacts/u-1")
    assert page.status_code == 200, page.text
    shown = values(page.text)
    body = api(app, "/v1/contacts/u-1")
    groups = body["groups"]
    assert [g["id"] for g in groups] == [g.id for g in GROUPED_MODEL.groups]
    assert page.text.count('data-testid="group" ') == len(groups)
    for g in groups:
        assert float(shown[f"group-{g['id']}"]) == g["score"]
        for t in g["top"]:
            assert float(shown[f"group-{g['id']}-{t['rule']}"]) == t["points"]
    hardware = next(g for g in groups if g["id"] == "hardware")
    assert hardware["score"] > 40 and [t["rule"] for t in hardware["top"]] == ["hardware-quote", "hardware-page"]
    card = page.text.split('data-group="training"')[1].split("</li>")[0]
    assert "No points in this group yet" in card and "halves every 7" in card


def test_no_groups_no_card() -> None:
    bare = Model.from_dict(
        {"name": "bare", "engagement": {"rules": [{"id": "p", "match": {"type": "page"}, "points": 1}]}}
    )
    page = signed_in(app_of(bare)).get("/console/contacts/u-1")
    assert page.status_code == 200 and 'data-testid="groups"' not in page.text


def test_the_pipeline_page_shows_the_groups_report_as_the_api_does(chdb_path: Path) -> None:
    store = Store(f"chdb://{chdb_path}?database=console_groups_{uuid.uuid4().hex[:8]}")

    async def setup() -> None:
        await migrate(store)
        await store.insert("contacts", CONTACT_COLUMNS, [c.row() for c in CONTACTS])

    asyncio.run(setup())
    try:
        settings = Settings(api_keys=f"{KEY},{READ}:read:reader", console_secret="z" * 32)  # type: ignore[arg-type]
        replica = Replica(kafka=KafkaConnection("127.0.0.1:1"), views_topic="c", status_topic="s")
        replica.caught_up.set()
        app = create_api(settings, model=GROUPED_MODEL, replica=replica, clock=lambda: ARCHIVE_NOW)

        async def get() -> Store:
            return store

        app.state.analytics = get
        page = signed_in(app).get("/console/pipeline")
        assert page.status_code == 200, page.text
        shown = values(page.text)
        report = api(app, "/v1/reports/groups")
        assert [g["id"] for g in report["groups"]] == [g.id for g in GROUPED_MODEL.groups]
        assert page.text.count('data-testid="group-report"') == len(report["groups"])
        for g in report["groups"]:
            assert int(shown[f"group-{g['id']}-contacts"]) == g["contacts"]
            assert int(shown[f"group-{g['id']}-without"]) == g["without_points"]
            for b in g["bands"]:
                assert int(shown[f"group-{g['id']}-{b['band']}-contacts"]) == b["contacts"]
                assert float(shown[f"group-{g['id']}-{b['band']}-mean"]) == b["avg_score"]
        hardware = next(g for g in report["groups"] if g["id"] == "hardware")
        assert hardware["contacts"] > 10
    finally:
        store.close_sync()


def test_no_groups_no_groups_report() -> None:
    bare = Model.from_dict(
        {"name": "bare", "engagement": {"rules": [{"id": "p", "match": {"type": "page"}, "points": 1}]}}
    )
    page = signed_in(app_of(bare)).get("/console/pipeline")
    assert page.status_code == 200 and 'data-testid="groups-report"' not in page.text
