"""The HTTP collector and the privacy list: a restricted person's messages are answered as accepted
(as Segment answers for suppressed users) and published nowhere, not even as dead letters; the
others pass; the list is the one the API's regulation service keeps (no Kafka: a fake publisher)."""

from __future__ import annotations

import asyncio

import httpx
import orjson
import pytest
from prometheus_client import REGISTRY

import collector.service as collector_service
from scorestream.privacy import PrivacyList, Restriction, subject_key
from tests.collector.test_service import AUTH, NOW, FakePublisher, client, collector_of, make_app, post


def suppressed_count(decision: str = "suppressed", topic: str = "events.web") -> float:
    value = REGISTRY.get_sample_value(
        "scorestream_events_suppressed_total", {"door": "collector", "topic": topic, "decision": decision}
    )
    return value or 0.0


def restrict(privacy: PrivacyList, kind: str, value: str, **restriction: int) -> None:
    privacy.put(subject_key(kind, value), Restriction("reg-1", **restriction))  # type: ignore[arg-type]


def track(**fields: object) -> dict[str, object]:
    return {"type": "track", "event": "Viewed", "messageId": f"m-{len(fields)}-{sorted(fields)}", **fields}


def test_the_collector_uses_the_regulation_services_list() -> None:
    app = make_app(FakePublisher())
    assert collector_of(app).privacy is app.state.regulations.privacy_list


def test_a_suppressed_persons_message_is_answered_accepted_and_not_published() -> None:
    publisher = FakePublisher()
    app = make_app(publisher)
    privacy = collector_of(app).privacy
    restrict(privacy, "user", "gone", suppressed_from_ms=NOW)  # from the instant of this request on
    before = suppressed_count()

    single = post(app, "/v1/track", auth=AUTH, json=track(userId="gone"))
    assert single.status_code == 200 and single.json() == {"success": True}
    assert publisher.records == []

    batch = {
        "batch": [
            track(userId="gone", timestamp="2020-01-01T00:00:00Z"),  # an old event time: record time counts
            track(userId="kept"),
            {"type": "identify", "anonymousId": "a-1", "traits": {"email": "GONE@example.com"}},  # by email
            {"type": "track", "userId": "gone"},  # invalid (no event name): not dead-lettered either
            {"type": "track", "userId": "other"},  # invalid, not restricted: dead-lettered as ever
        ]
    }
    restrict(privacy, "email", "gone@example.com", suppressed_from_ms=NOW)
    answer = post(app, "/v1/batch", auth=AUTH, json=batch)
    assert answer.status_code == 200
    body = answer.json()
    assert body["accepted"] == 3  # the sender cannot tell suppressed messages from accepted ones
    assert [r["index"] for r in body["rejected"]] == [3, 4]
    published = [(r.topic, orjson.loads(r.value).get("userId")) for r in publisher.records]
    assert published == [("events.web", "kept"), ("events.deadletter", "other")]
    assert suppressed_count() == before + 4  # 1 + 3 (the invalid one counted too)


def test_lifted_or_later_restrictions_pass_and_erased_pasts_are_dropped() -> None:
    publisher = FakePublisher()
    app = make_app(publisher)
    privacy = collector_of(app).privacy
    restrict(privacy, "user", "later", suppressed_from_ms=NOW + 60_000)  # not yet
    restrict(privacy, "anonymous", "old-visitor", erased_before_ms=NOW - 3_600_000)
    before = suppressed_count("erased")

    assert post(app, "/v1/track", auth=AUTH, json=track(userId="later")).status_code == 200
    past = track(anonymousId="old-visitor", timestamp="2026-09-21T10:00:00Z")  # before the erasure
    new = track(anonymousId="old-visitor", timestamp="2026-09-21T14:00:00Z", event="Again")  # after it
    assert post(app, "/v1/batch", auth=AUTH, json={"batch": [past, new]}).json()["accepted"] == 2
    assert [orjson.loads(r.value)["event"] for r in publisher.records] == ["Viewed", "Again"]
    assert suppressed_count("erased") == before + 1

    privacy.put(subject_key("anonymous", "old-visitor"), None)  # lifted (a tombstone)
    assert post(app, "/v1/track", auth=AUTH, json=past).status_code == 200
    assert len(publisher.records) == 3


def test_an_empty_list_decides_nothing() -> None:
    publisher = FakePublisher()
    app = make_app(publisher)
    assert not collector_of(app).privacy
    messages = [track(userId=f"u{i}", event=f"E{i}") for i in range(20)]
    assert post(app, "/v1/batch", auth=AUTH, json={"batch": messages}).json()["accepted"] == 20
    assert len(publisher.records) == 20


def test_at_start_a_request_waits_for_the_privacy_list_then_503(monkeypatch: pytest.MonkeyPatch) -> None:
    publisher = FakePublisher()
    app = make_app(publisher)
    collector = collector_of(app)

    async def read_meanwhile() -> httpx.Response:
        collector.privacy_ready = ready = asyncio.Event()
        async with client(app) as http:
            request = asyncio.create_task(http.post("/v1/track", auth=AUTH, json=track(userId="gone")))
            await asyncio.sleep(0.2)
            assert not request.done() and publisher.records == []  # waiting for the list
            restrict(collector.privacy, "user", "gone", suppressed_from_ms=NOW)  # read meanwhile
            ready.set()
            return await request

    answer = asyncio.run(read_meanwhile())
    assert answer.status_code == 200 and publisher.records == []  # decided with the list read

    monkeypatch.setattr(collector_service, "PRIVACY_WAIT_S", 0.1)
    collector.privacy_ready = asyncio.Event()  # never read (Kafka unreachable)
    refused = post(app, "/v1/track", auth=AUTH, json=track(userId="kept"))
    assert refused.status_code == 503 and refused.headers["retry-after"] == "5"
    assert publisher.records == []


def test_a_batch_body_refused_whole_is_not_kept_when_it_shows_a_restricted_id() -> None:
    publisher = FakePublisher()
    app = make_app(publisher)
    restrict(collector_of(app).privacy, "user", "gone", suppressed_from_ms=NOW)
    broken = b'{"batch": [{"type": "track", "userId": "gone", "event": "E"}, {"type": "tr'
    too_many = orjson.dumps({"batch": [track(userId="gone")] * 2501})
    other = b'{"batch": [{"type": "track", "userId": "kept", "event": "E"}, {"type": "tr'
    for body in (broken, too_many, other):
        answer = post(app, "/v1/batch", auth=AUTH, content=body, headers={"content-type": "application/json"})
        assert answer.status_code == 400
    assert [r.value for r in publisher.records] == [other]  # only the other person's is dead-lettered
