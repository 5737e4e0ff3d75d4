"""Score groups in the console's contact page (in process, the replica fed directly, no archive):
each group's score, band and rules as ``GET /v1/contacts/{id}`` answers them; nothing for a model
without groups."""

from __future__ import annotations

from fastapi import FastAPI

from api.app import create_api
from api.replica import Replica
from kafka_io.clients import KafkaConnection
from schemas.settings import Settings
from scorestream import Model, apply_events
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
