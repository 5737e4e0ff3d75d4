"""``GET /v1/contacts/{id}/export`` in process, over ASGI, against real chDB filled by the sink's
own row code (``tests/analytics/test_privacy.py``): admin scope, audited without the id, the live
view and the archive in one attachment, 404 and the archive's absence."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from fastapi import FastAPI

from analytics.client import Store
from analytics.migrations import migrate
from analytics.rows import EVENT_COLUMNS
from api.app import create_api
from api.replica import Replica, WorkerStatus
from kafka_io.clients import KafkaConnection
from schemas.settings import Settings
from scorestream import apply_events
from scorestream.privacy import contact_key
from tests.analytics.test_privacy import ANON, EMAIL, OTHER, USER, event, fill
from tests.api.view_bytes import view_bytes
from tests.factories import DEFAULT_MODEL, HOUR, T0, iso, make_event

MODEL = DEFAULT_MODEL
READ, ADMIN = "read-key-0123456789abcdef", "admin-key-0123456789abcdef"
KEYS = f"{READ}:read:crm,{ADMIN}:admin:dpo"
NOW = T0 + 30 * 24 * HOUR


@pytest.fixture(scope="module")
def store(chdb_path: Path) -> Iterator[Store]:
    s = Store(f"chdb://{chdb_path}?database=export_{uuid.uuid4().hex[:8]}")

    async def setup() -> None:
        await migrate(s)
        await fill(s)
        order = event(
            50,
            userId=USER,
            anonymousId=None,
            event="Order Completed",
            properties={"order_id": "o-1", "revenue": 120.0, "currency": "EUR"},
            timestamp=iso(T0 + 2 * HOUR),
        )
        await s.insert("events", EVENT_COLUMNS, [order])

    asyncio.run(setup())
    yield s
    s.close_sync()


def replica() -> Replica:
    """The live view of the person (the other person is known to the archive only)."""
    r = Replica(kafka=KafkaConnection("127.0.0.1:1"), views_topic="v", status_topic="s")
    events = [
        make_event(kind="identify", user_id=USER, anonymous_id=ANON, traits={"email": EMAIL, "title": "CEO"}),
        make_event(user_id=USER, event="Demo Requested", timestamp_ms=T0 + HOUR),
    ]
    r.apply(USER.encode(), view_bytes(apply_events(None, USER, events, MODEL), MODEL))
    r.caught_up.set()
    r.workers["w1"] = WorkerStatus(state="ready", model=MODEL.version, at_ms=NOW)
    return r


def make_app(store: Store | None) -> FastAPI:
    settings = Settings(api_keys=KEYS)  # type: ignore[arg-type]
    app = create_api(settings, model=MODEL, replica=replica(), clock=lambda: NOW)
    if store is not None:

        async def get() -> Store:
            return store

        app.state.analytics = get
    return app


def get(app: FastAPI, path: str, key: str | None = ADMIN) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}

    async def go() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as client:
            return await client.get(path, headers=headers)

    return asyncio.run(go())


def test_admin_scope_only(store: Store) -> None:
    app = make_app(store)
    assert get(app, f"/v1/contacts/{USER}/export", key=None).status_code == 401
    refused = get(app, f"/v1/contacts/{USER}/export", key=READ)
    assert refused.status_code == 403 and refused.headers["content-type"] == "application/problem+json"


def test_everything_held_about_the_person_as_an_audited_attachment(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="scorestream.audit"):
        r = get(make_app(store), "/v1/contacts/pat.one@example.com/export")  # by email, another case
    assert r.status_code == 200, r.text
    assert r.headers["content-disposition"].startswith('attachment; filename="scorestream-export-')
    assert USER not in r.headers["content-disposition"] and r.headers["cache-control"] == "no-store"
    body: dict[str, Any] = r.json()
    assert body["contact_id"] == USER and body["export_version"] == 1
    assert body["identity"] == {
        "contact_id": USER,
        "user_id": USER,
        "anonymous_ids": [ANON],
        "email": EMAIL.casefold(),
        "merged_ids": [],
    }
    assert body["traits"]["title"] == "CEO"
    current = body["current"]  # what GET /v1/contacts/{id} shows, explanation included
    assert current["contact_id"] == USER and current["engagement"]["top"][0]["rule"] == "demo-requested"
    assert "stage" in current and "rfm" in current and current["fit"]["score"] > 0
    archive = body["archive"]
    assert archive["status"] == "complete" and archive["truncated"] == []
    assert len(archive["events"]) == 7  # fill()'s six about them (each once) and the order
    assert {c["contact_id"] for c in archive["contacts"]} == {USER, f"anonymous:{ANON}"}
    assert archive["score_ledger"] and archive["stage_transitions"] and archive["triggers"]
    assert {d["key"] for d in archive["webhook_deliveries"]} == {USER, "acct-1"}
    (order,) = body["orders"]
    assert order["event"] == "Order Completed" and order["properties"]["order_id"] == "o-1"

    lines = [rec.__dict__ for rec in caplog.records if rec.name == "scorestream.audit"]
    export = next(line for line in lines if line["audit"] == "export")
    assert export["key_name"] == "dpo" and export["subject_keys"] == [contact_key(USER)]
    assert export["route"] == "/v1/contacts/{contact_id}/export"
    text = " ".join(repr(rec.getMessage()) + repr(rec.__dict__) for rec in caplog.records)
    assert USER not in text and "pat.one" not in text.lower() and ADMIN not in text


def test_the_limit_cuts_each_list_and_says_so(store: Store) -> None:
    body = get(make_app(store), f"/v1/contacts/{ANON}/export?limit=2").json()
    assert body["archive"]["status"] == "truncated" and "events" in body["archive"]["truncated"]
    assert len(body["archive"]["events"]) == 2


def test_a_person_only_the_archive_knows(store: Store) -> None:
    body = get(make_app(store), f"/v1/contacts/{OTHER}/export").json()
    assert body["current"] is None and body["identity"]["user_id"] == OTHER
    assert body["identity"]["email"] == "q@example.com" and body["archive"]["status"] == "complete"
    events = body["archive"]["events"]
    assert [e["user_id"] for e in events if e["status"] == "accepted"] == [OTHER] * 3
    assert [OTHER in e["raw"] for e in events if e["status"] == "rejected"] == [True]  # a dead letter naming them
    orjson.dumps(body)


def test_unknown_is_404(store: Store) -> None:
    r = get(make_app(store), "/v1/contacts/nobody-at-all/export")
    assert r.status_code == 404 and r.json()["code"] == "not_found"


def test_without_the_archive_the_live_part_is_given_and_says_what_is_missing() -> None:
    app = make_app(None)  # embedded chDB this process does not run: the archive is unavailable
    r = get(app, f"/v1/contacts/{USER}/export")
    assert r.status_code == 200
    archive = r.json()["archive"]
    assert archive["status"] == "unavailable" and "SCORESTREAM_SINK_IN_API" in archive["detail"]
    assert archive["events"] == [] and r.json()["current"]["contact_id"] == USER
    # someone the live state does not know: it cannot tell whether the archive does
    missing = get(app, f"/v1/contacts/{OTHER}/export")
    assert missing.status_code == 503 and missing.json()["code"] == "not_ready"
