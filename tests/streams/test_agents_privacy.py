"""The worker's privacy gate (``streams.agents``), on the agents' fakes of Faust: ingest drops the
events of restricted people (and their refused records) without forwarding or dead-lettering
them; the contacts stage drops restricted events already in flight (merges and ticks pass); the
others go on as before; the drops are counted."""

from __future__ import annotations

from prometheus_client import REGISTRY

from schemas.state import Envelope, decode_state
from scorestream.fold import Tick
from scorestream.privacy import PrivacyList, Restriction, subject_key
from tests.factories import MINUTE, T0, iso, make_event, segment_json
from tests.streams.test_agents_isolation import Worker, contact_event, internal, page, record


def counted(door: str, topic: str, decision: str) -> float:
    labels = {"door": door, "topic": topic, "decision": decision}
    return REGISTRY.get_sample_value("scorestream_events_suppressed_total", labels) or 0.0


def restrict(privacy: PrivacyList, kind: str, value: str, **at: int) -> None:
    privacy.put(subject_key(kind, value), Restriction("reg-1", **at))  # type: ignore[arg-type]


def test_ingest_drops_restricted_events_and_their_refused_records_without_dead_letters() -> None:
    worker = Worker()
    privacy = worker.pipeline.privacy
    restrict(privacy, "user", "gone", suppressed_from_ms=T0)  # record times are T0: suppressed
    restrict(privacy, "anonymous", "old-anon", erased_before_ms=T0 - MINUTE)
    restrict(privacy, "email", "gone@example.com", suppressed_from_ms=T0)
    values = [
        page("gone"),
        page("kept"),
        segment_json(type="page", userId=None, anonymousId="old-anon", timestamp=iso(T0 - 2 * MINUTE)),  # erased
        segment_json(type="page", userId=None, anonymousId="old-anon", timestamp=iso(T0)),  # after: kept
        segment_json(type="identify", userId="new", anonymousId=None, traits={"email": "Gone@Example.com"}),
        b'{"type": "track", "userId": "gone"}',  # refused by the contract: not dead-lettered either
        b'{"type": "track", "userId": "other"}',  # refused, not restricted: dead-lettered as ever
        b"garbage",  # keyed by a restricted id: dropped
    ]
    batch = [record("events.web", i, v) for i, v in enumerate(values)]
    batch[-1] = record("events.web", 7, b"garbage", key=b"gone")
    before = counted("worker", "events.web", "suppressed"), counted("worker", "events.web", "erased")
    worker.run("ingest", batch)

    routed = sorted(item.key for topic in ("contacts", "identity") for item in worker.forwarded(topic))
    assert routed == ["kept", "old-anon"]
    assert [d.headers["scorestream.source.offset"] for d in worker.dead] == ["6"]
    assert counted("worker", "events.web", "suppressed") == before[0] + 4
    assert counted("worker", "events.web", "erased") == before[1] + 1


def test_a_suppression_in_the_future_or_lifted_drops_nothing() -> None:
    worker = Worker()
    privacy = worker.pipeline.privacy
    restrict(privacy, "user", "later", suppressed_from_ms=T0 + MINUTE)
    restrict(privacy, "user", "lifted", suppressed_from_ms=T0)
    privacy.put(subject_key("user", "lifted"), None)
    worker.run("ingest", [record("events.web", 0, page("later")), record("events.web", 1, page("lifted"))])
    assert sorted(item.key for item in worker.forwarded("contacts")) == ["later", "lifted"]
    assert worker.dead == []


def test_the_contacts_stage_drops_restricted_events_in_flight_but_not_merges_or_ticks() -> None:
    worker = Worker()
    gone_event = make_event(kind="page", event=None, channel="web", user_id="gone", path="/", timestamp_ms=T0)
    batch = [
        record("t.contacts", 0, internal("kept", contact_event("kept"))),
        record("t.contacts", 1, internal("gone", Envelope(kind="event", event=gone_event))),
    ]
    worker.run("contacts", batch)
    assert sorted(worker.tables["contacts"]) == ["gone", "kept"]
    hits = len(decode_state(worker.tables["contacts"]["gone"]).hits)

    # the regulation came while more of gone's events were on the contacts topic
    restrict(worker.pipeline.privacy, "user", "gone", erased_before_ms=T0 + MINUTE)
    late = make_event(kind="page", event=None, channel="web", user_id="gone", path="/x", timestamp_ms=T0 + 1)
    before = counted("contacts", "t.contacts", "erased")
    worker.run(
        "contacts",
        [
            record("t.contacts", 2, internal("gone", Envelope(kind="event", event=late))),
            record("t.contacts", 3, internal("gone", Envelope(kind="tick", tick=Tick(T0 + 2 * MINUTE)))),
            record("t.contacts", 4, internal("kept", contact_event("kept"))),
        ],
    )
    assert len(decode_state(worker.tables["contacts"]["gone"]).hits) == hits  # the late event was not folded
    assert len(decode_state(worker.tables["contacts"]["kept"]).hits) == 2
    assert counted("contacts", "t.contacts", "erased") == before + 1
    assert worker.dead == []


def test_an_empty_list_changes_nothing() -> None:
    worker = Worker()
    assert not worker.pipeline.privacy
    worker.run("ingest", [record("events.web", i, page(f"u{i}")) for i in range(5)])
    assert sorted(item.key for item in worker.forwarded("contacts")) == [f"u{i}" for i in range(5)]


def test_the_identity_stage_writes_no_link_for_a_restricted_event_in_flight() -> None:
    worker = Worker()
    restrict(worker.pipeline.privacy, "anonymous", "gone-anon", erased_before_ms=T0 + MINUTE)

    def linking(anonymous: str, user: str) -> Envelope:
        event = make_event(kind="identify", event=None, channel="web", user_id=user, anonymous_id=anonymous)
        return Envelope(kind="event", event=event)

    before = counted("identity", "t.identity", "erased")
    worker.run(
        "identity",
        [
            record("t.identity", 0, internal("gone-anon", linking("gone-anon", "gone-user"))),
            record("t.identity", 1, internal("kept-anon", linking("kept-anon", "kept-user"))),
        ],
    )
    assert sorted(worker.tables["identity"]) == ["kept-anon"]  # no link re-created for the erased id
    assert {item.key for item in worker.forwarded("contacts")} == {"kept-user", "anonymous:kept-anon"}
    assert counted("identity", "t.identity", "erased") == before + 1
    assert worker.dead == []
