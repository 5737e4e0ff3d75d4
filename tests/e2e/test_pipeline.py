"""End to end: Segment JSON into real Kafka topics, scores out of the real API."""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson

from schemas.events import decode
from schemas.model_file import load_model
from scorestream import Event, apply_events, engagement_at, fit_of
from tests.e2e.service import Service

MODEL = load_model()
NOW = int(time.time() * 1000)


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat().replace("+00:00", "Z")


def msg(kind: str, mid: str, ts: int, **fields: Any) -> bytes:
    return orjson.dumps({"type": kind, "messageId": mid, "timestamp": iso(ts), **fields})


def as_of_ms(body: dict[str, Any]) -> int:
    return int(datetime.fromisoformat(body["engagement"]["as_of"]).timestamp() * 1000)


def expected_score(events: list[tuple[str, bytes]], contact_id: str, at_ms: int) -> float:
    decoded: list[Event] = [decode(raw, channel, at_ms) for channel, raw in events]
    return engagement_at(apply_events(None, contact_id, decoded, MODEL), MODEL, at_ms).score


def test_scores_from_every_channel(service: Service) -> None:
    t = NOW - 3_600_000
    events = [
        (
            "web",
            msg(
                "identify",
                "s1",
                t,
                userId="u-1",
                traits={"email": "Ann@Acme.com", "title": "VP Marketing", "industry": "software", "employees": 400},
            ),
        ),
        ("web", msg("page", "s2", t + 1000, userId="u-1", properties={"path": "/pricing"})),
        ("web", msg("track", "s3", t + 2000, userId="u-1", event="Demo Requested")),
        ("email", msg("track", "s4", t + 3000, userId="u-1", event="Email Link Clicked")),
        (
            "store",
            msg(
                "track",
                "s5",
                t + 4000,
                userId="u-1",
                event="Order Completed",
                properties={"order_id": "o1", "total": 620.0},
            ),
        ),
    ]
    service.publish((channel, None, raw) for channel, raw in events)
    with service.client() as http:
        body = service.wait_for(
            lambda: (
                (r := http.get("/v1/contacts/u-1")).status_code == 200
                and len(r.json()["engagement"]["top"]) >= 5
                and r.json()
            )
        )
    assert body["contact_id"] == "u-1"
    assert body["identity"]["email"] == "ann@acme.com"
    assert math.isclose(body["engagement"]["score"], expected_score(events, "u-1", as_of_ms(body)), abs_tol=1e-5)
    rules = {c["rule"] for c in body["engagement"]["top"]}
    assert {"demo-requested", "order-completed", "big-order", "store-visit"} <= rules
    assert body["fit"]["grade"] == "A"
    assert body["grade"][0] == "A"


def test_duplicates_and_redelivery_count_once(service: Service) -> None:
    t = NOW - 7_200_000
    raw = msg("track", "dup-1", t, userId="u-dup", event="Demo Requested")
    other = msg("page", "dup-2", t + 10, userId="u-dup", properties={"path": "/pricing"})
    service.publish([("web", b"u-dup", raw), ("web", None, raw), ("email", None, raw), ("web", None, other)])
    with service.client() as http:
        body = service.wait_for(
            lambda: (
                (r := http.get("/v1/contacts/u-dup")).status_code == 200
                and len(r.json()["engagement"]["top"]) == 3
                and r.json()
            )
        )
    expected = expected_score([("web", raw), ("web", other)], "u-dup", as_of_ms(body))
    assert math.isclose(body["engagement"]["score"], expected, abs_tol=1e-5)


def test_anonymous_history_counts_once_identified(service: Service) -> None:
    t = NOW - 86_400_000
    anon = [
        ("web", msg("page", f"a{i}", t + i * 1000, anonymousId="visitor-9", properties={"path": "/pricing"}))
        for i in range(3)
    ] + [("web", msg("track", "a9", t + 9000, anonymousId="visitor-9", event="Demo Requested"))]
    service.publish((c, b"visitor-9", r) for c, r in anon)
    with service.client() as http:
        service.wait_for(lambda: http.get("/v1/contacts/visitor-9").status_code == 200)
        before = http.get("/v1/contacts/visitor-9").json()
        assert before["contact_id"] == "anonymous:visitor-9"
        ident = (
            "web",
            msg(
                "identify", "a10", t + 20_000, userId="u-9", anonymousId="visitor-9", traits={"email": "nine@globex.io"}
            ),
        )
        later = ("email", msg("track", "a11", t + 30_000, userId="u-9", event="Demo Requested"))
        service.publish([(ident[0], b"u-9", ident[1]), (later[0], b"u-9", later[1])])
        body = service.wait_for(
            lambda: (
                (r := http.get("/v1/contacts/u-9")).status_code == 200
                and "anonymous:visitor-9" in r.json()["identity"]["merged_ids"]
                and r.json()
            )
        )
        by_anon = http.get("/v1/contacts/visitor-9").json()
        by_email = http.get("/v1/contacts/NINE@globex.io").json()
    assert by_anon["contact_id"] == by_email["contact_id"] == "u-9"
    assert "visitor-9" in body["identity"]["anonymous_ids"]
    all_events = [*anon, ident, later]
    expected = expected_score(all_events, "u-9", as_of_ms(body))
    assert math.isclose(body["engagement"]["score"], expected, abs_tol=1e-5)
    demo = [c for c in body["engagement"]["top"] if c["rule"] == "demo-requested"]
    assert len(demo) == 1 and demo[0]["points"] <= 40.0  # once-only across the merge


def test_alias_moves_a_previous_user_id(service: Service) -> None:
    t = NOW - 600_000
    service.publish(
        [
            ("web", b"old-id", msg("track", "al1", t, userId="old-id", event="Signed Up")),
        ]
    )
    with service.client() as http:
        service.wait_for(lambda: http.get("/v1/contacts/old-id").status_code == 200)
        service.publish([("web", b"old-id", msg("alias", "al2", t + 1000, previousId="old-id", userId="new-id"))])
        body = service.wait_for(
            lambda: (
                (r := http.get("/v1/contacts/new-id")).status_code == 200
                and "old-id" in r.json()["identity"]["merged_ids"]
                and r.json()
            )
        )
        assert http.get("/v1/contacts/old-id").json()["contact_id"] == "new-id"
    assert any(c["rule"] == "signed-up" for c in body["engagement"]["top"])


def test_bad_input_is_dead_lettered_and_the_stream_goes_on(service: Service) -> None:
    t = NOW - 60_000
    bad: list[tuple[str, bytes]] = [
        ("invalid_json", b"{not json"),
        ("too_large", msg("track", "big", t, userId="u-bad", event="E", properties={"x": "y" * 40_000})),
        ("unknown_type", msg("explode", "u1", t, userId="u-bad")),
        ("missing_identity", msg("track", "u2", t, userId=None, anonymousId=None, event="E")),
        ("invalid_field", msg("track", "u3", t, userId=42, event="E")),
        (
            "bad_timestamp",
            orjson.dumps(
                {
                    "type": "track",
                    "messageId": "u4",
                    "timestamp": "1999-01-01T00:00:00Z",
                    "userId": "u-bad",
                    "event": "E",
                }
            ),
        ),
    ]
    good = msg("track", "after-bad", t, userId="u-after", event="Demo Requested")
    service.publish([*[("web", b"k", raw) for _, raw in bad], ("web", b"k", good)])
    dead = service.read_topic(service.topic("dead"), expect=len(bad))
    by_value = {r.value: dict(r.headers) for r in dead}
    for reason, raw in bad:
        assert raw in by_value, f"{reason} not dead-lettered"
        headers = by_value[raw]
        assert headers["scorestream.reason"].decode() == reason
        assert headers["scorestream.source.topic"].decode() == service.topic("web")
        assert int(headers["scorestream.source.offset"].decode()) >= 0
        assert headers["scorestream.error"]
    with service.client() as http:
        service.wait_for(lambda: http.get("/v1/contacts/u-after").status_code == 200)


def test_api_contract(service: Service) -> None:
    with service.client() as http:
        service.wait_for(lambda: http.get("/v1/contacts/u-1").status_code == 200)
        missing = http.get("/v1/contacts/nobody-at-all")
        assert missing.status_code == 404
        assert missing.json()["code"] == "not_found"
        batch = http.post("/v1/contacts:batchGet", json={"ids": ["u-1", "nobody-at-all", "ann@acme.com"]}).json()
        assert [c["contact_id"] for c in batch["contacts"]] == ["u-1", "u-1"]
        assert batch["not_found"] == ["nobody-at-all"]
        too_many = http.post("/v1/contacts:batchGet", json={"ids": [str(i) for i in range(1001)]})
        assert too_many.status_code == 422 and too_many.json()["code"] == "invalid_request"
        model = http.get("/v1/model").json()
        assert model["version"] == MODEL.version
    unauthorised = [
        httpx.get(f"{service.url}/v1/contacts/u-1"),
        httpx.get(f"{service.url}/v1/contacts/u-1", headers={"Authorization": "Bearer wrong-key"}),
    ]
    assert all(r.status_code == 401 and r.json()["code"] == "unauthorized" for r in unauthorised)
    assert httpx.get(f"{service.url}/healthz").status_code == 200


def test_fit_only_from_traits(service: Service) -> None:
    t = NOW - 1000
    raw = msg("identify", "f1", t, userId="u-fit", traits={"title": "Student", "email": "kid@school.edu"})
    service.publish([("web", b"u-fit", raw)])
    with service.client() as http:
        body = service.wait_for(lambda: (r := http.get("/v1/contacts/u-fit")).status_code == 200 and r.json())
    state = apply_events(None, "u-fit", [decode(raw, "web", t)], MODEL)
    assert body["fit"]["score"] == fit_of(state, MODEL).score
    assert body["fit"]["grade"] == "D"
