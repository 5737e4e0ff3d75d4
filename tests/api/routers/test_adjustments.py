"""The adjustment routes in process, over ASGI: what ``POST`` publishes on the crm topic (and that
the worker's fold of it gives the contact the points), scopes, 422 problems, the list and the revert."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import orjson
import pytest
from fastapi import FastAPI

from api.app import create_api
from schemas.api_adjustments import AdjustmentListOut
from schemas.events import decode
from schemas.model_file import load_model
from schemas.settings import Settings
from scorestream import Event, apply_events, engagement_at
from tests.api.view_bytes import ready_replica
from tests.factories import DAY, HOUR, T0, make_event

WRITER = "writer-key-0123456789abcdef"
READER = "reader-key-0123456789abcdef"
MODEL = load_model()  # the default model: score groups product and content
NOW = T0 + DAY
EVENTS = [make_event(user_id="u-1", anonymous_id="a-1", timestamp_ms=T0)]


class Writer:
    """Records what the route publishes (the API's LazyProducer's ``send``)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, dict[str, Any]]] = []

    async def send(self, topic: str, key: bytes, value: bytes | None, partition: int | None = None) -> None:
        assert value is not None
        self.sent.append((topic, key, orjson.loads(value)))

    async def stop(self) -> None:
        return None


def make_app(contacts: dict[str, list[Event]] | None = None) -> tuple[FastAPI, Writer]:
    replica = ready_replica(MODEL, {"u-1": EVENTS} if contacts is None else contacts, NOW)
    settings = Settings(api_keys=f"{WRITER}:write:sales-desk,{READER}:read:dash", topic_crm="crm-test")  # type: ignore[arg-type]
    app = create_api(settings, model=MODEL, replica=replica, clock=lambda: NOW)
    writer = Writer()
    app.state.event_writer = writer
    return app, writer


def call(app: FastAPI, method: str, path: str, body: Any = None, key: str | None = WRITER) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}

    async def go() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as client:
            return await client.request(method, path, headers=headers, json=body)

    return asyncio.run(go())


def test_an_adjustment_is_published_on_the_crm_topic_and_answered_202() -> None:
    app, writer = make_app()
    body = {"points": 25, "group": "product", "reason": "Met at the trade fair"}
    r = call(app, "POST", "/v1/contacts/a-1/adjustments", body)
    assert r.status_code == 202, r.text
    out = r.json()
    aid = out["adjustment_id"]
    assert out["contact_id"] == "u-1" and out["points"] == 25 and out["group"] == "product"
    assert out["by"] == "sales-desk"  # the key's name when no `by`
    assert r.headers["location"] == f"/v1/contacts/u-1/adjustments/{aid}"
    [(topic, key, message)] = writer.sent
    assert topic == "crm-test" and key == b"u-1"
    assert message["messageId"] == aid and message["userId"] == "u-1" and message["event"] == "Score Adjusted"
    assert message["properties"] == {
        "adjustment_id": aid,
        "points": 25,
        "group": "product",
        "reason": "Met at the trade fair",
        "by": "sales-desk",
    }
    # what the worker makes of the record: the contract's decode, then the fold
    event = decode(orjson.dumps(message), "crm", NOW)
    state = apply_events(apply_events(None, "u-1", EVENTS, MODEL), "u-1", [event], MODEL)
    before = engagement_at(apply_events(None, "u-1", EVENTS, MODEL), MODEL, NOW).score
    assert engagement_at(state, MODEL, NOW).score == pytest.approx(before + 25, abs=1e-6)


def test_an_unknown_contact_is_created_under_its_id_and_an_anonymous_one_keeps_its_kind() -> None:
    app, writer = make_app()
    assert (
        call(app, "POST", "/v1/contacts/new-1/adjustments", {"points": 5, "reason": "x", "by": "Ann"}).status_code
        == 202
    )
    assert call(app, "POST", "/v1/contacts/anonymous:v-9/adjustments", {"points": -5, "reason": "x"}).status_code == 202
    first, second = (m for _, _, m in writer.sent)
    assert first["userId"] == "new-1" and first["anonymousId"] is None and first["properties"]["by"] == "Ann"
    assert second["userId"] is None and second["anonymousId"] == "v-9"


@pytest.mark.parametrize(
    "body",
    [
        {"points": 5},
        {"points": 5, "reason": "   "},
        {"points": 0, "reason": "x"},
        {"points": 1000.5, "reason": "x"},
        {"points": "NaN", "reason": "x"},
        {"points": 5, "reason": "x" * 501},
        {"points": 5, "reason": "x", "group": "Not A Group Id"},
        {"points": 5, "reason": "x", "extra": 1},
        {"points": 5, "reason": "x", "by": ""},
    ],
)
def test_a_malformed_body_is_a_422_problem(body: dict[str, Any]) -> None:
    app, writer = make_app()
    r = call(app, "POST", "/v1/contacts/u-1/adjustments", body)
    assert r.status_code == 422, r.text
    assert r.headers["content-type"].startswith("application/problem+json") and r.json()["code"] == "invalid_request"
    assert writer.sent == []


def test_a_group_the_active_model_does_not_declare_is_a_422_naming_the_groups() -> None:
    app, writer = make_app()
    r = call(app, "POST", "/v1/contacts/u-1/adjustments", {"points": 5, "reason": "x", "group": "hardware"})
    assert r.status_code == 422 and "product" in r.json()["detail"]
    assert r.json()["errors"][0]["pointer"] == "#/group"
    assert writer.sent == []


def test_writing_needs_the_write_scope_and_reading_the_read_scope() -> None:
    app, writer = make_app()
    body = {"points": 5, "reason": "x"}
    assert call(app, "POST", "/v1/contacts/u-1/adjustments", body, key=None).status_code == 401
    assert call(app, "POST", "/v1/contacts/u-1/adjustments", body, key=READER).status_code == 403
    assert call(app, "DELETE", "/v1/contacts/u-1/adjustments/x", key=READER).status_code == 403
    assert call(app, "GET", "/v1/contacts/u-1/adjustments", key=READER).status_code == 200
    assert writer.sent == []


def adjusted_contact() -> list[Event]:
    """u-1 with two adjustments folded, the first reverted."""
    app, writer = make_app()
    call(app, "POST", "/v1/contacts/u-1/adjustments", {"points": 30, "reason": "call went well", "by": "Ann"})
    call(app, "POST", "/v1/contacts/u-1/adjustments", {"points": -10, "group": "content", "reason": "spam"})
    first = writer.sent[0][2]["messageId"]
    call(app, "DELETE", f"/v1/contacts/u-1/adjustments/{first}")
    times = [T0 + HOUR, T0 + 2 * HOUR, T0 + 3 * HOUR]  # as if made then (the app's clock is fixed)
    events = []
    for (_, _, message), at in zip(writer.sent, times, strict=True):
        message["timestamp"] = None
        events.append(decode(orjson.dumps(message), "crm", at))
    return [*EVENTS, *events]


def test_the_list_shows_each_adjustment_newest_first_with_reverted_ones_marked() -> None:
    app, _ = make_app({"u-1": adjusted_contact()})
    r = call(app, "GET", "/v1/contacts/a-1/adjustments", key=READER)
    assert r.status_code == 200, r.text
    body = AdjustmentListOut.model_validate(r.json())
    assert body.contact_id == "u-1"
    spam, call_ = body.adjustments
    assert (spam.points, spam.group, spam.reverted_at) == (-10, "content", None)
    assert spam.points_now == pytest.approx(-10 * 2 ** (-(NOW - T0 - 2 * HOUR) / MODEL.half_life_ms), abs=1e-6)
    assert call_.by == "Ann" and call_.reverted_at is not None and call_.reverted_by == "sales-desk"
    assert call_.points_now == 0
    one = call(app, "GET", f"/v1/contacts/u-1/adjustments/{spam.adjustment_id}", key=READER)
    assert one.status_code == 200 and one.json()["reason"] == "spam"
    # the contact's explanation shows the adjustment's built-in rule
    contact = call(app, "GET", "/v1/contacts/u-1", key=READER).json()
    tops = {c["rule"]: c for c in contact["engagement"]["top"]}
    assert tops["adjustment:content"]["description"] == "Manual adjustment (content)"
    [note] = tops["adjustment:content"]["adjustments"]
    assert (note["adjustment_id"], note["reason"], note["by"]) == (spam.adjustment_id, "spam", "sales-desk")
    assert "adjustment" not in tops  # the reverted one earns nothing
    content = {g["id"]: g for g in contact["groups"]}["content"]
    assert content["top"][0]["rule"] == "adjustment:content" and content["top"][0]["adjustments"][0]["points"] == -10


def test_unknown_contacts_and_adjustments_are_404() -> None:
    app, writer = make_app()
    assert call(app, "GET", "/v1/contacts/nobody/adjustments", key=READER).status_code == 404
    assert call(app, "GET", "/v1/contacts/u-1/adjustments/nope", key=READER).status_code == 404
    assert call(app, "DELETE", "/v1/contacts/nobody/adjustments/x").status_code == 404
    assert writer.sent == []


def test_a_revert_is_published_for_the_contact_even_before_its_adjustment_is_folded() -> None:
    app, writer = make_app()
    r = call(app, "DELETE", "/v1/contacts/a-1/adjustments/not-folded-yet")
    assert r.status_code == 202, r.text
    assert r.json()["contact_id"] == "u-1" and r.json()["reverted_by"] == "sales-desk"
    [(topic, key, message)] = writer.sent
    assert (topic, key, message["event"]) == ("crm-test", b"u-1", "Score Adjustment Reverted")
    assert message["properties"] == {"adjustment_id": "not-folded-yet", "by": "sales-desk"}
    named = call(app, "DELETE", "/v1/contacts/u-1/adjustments/x?by=Bob%20Ray")
    assert named.status_code == 202 and named.json()["reverted_by"] == "Bob Ray"
    assert writer.sent[-1][2]["properties"]["by"] == "Bob Ray"
    assert call(app, "DELETE", "/v1/contacts/u-1/adjustments/x?by=").status_code == 422
