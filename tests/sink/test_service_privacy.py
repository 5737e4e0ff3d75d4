"""The analytics sink and the privacy list (``sink.service``), without Kafka or ClickHouse: rows of a
restricted person's events and dead letters, and every contacts, ledger, trigger and delivery row
about an erased contact id, never reach a batch; other rows do; counted."""

from __future__ import annotations

from typing import Any, NamedTuple, cast

import orjson
from aiokafka import TopicPartition
from prometheus_client import REGISTRY

from analytics.client import Store
from schemas.events import deadletter_headers
from schemas.regulations import PrivacyEntry, encode_json
from schemas.settings import Settings
from schemas.state import Batch, Envelope, Item, encode
from schemas.webhooks import DeliveryRecord
from schemas.webhooks import encode as encode_webhook
from scorestream.privacy import PrivacyList, Restriction, contact_key, subject_key
from scorestream.triggers import make_trigger
from sink.service import RowBatch, Sink
from tests.analytics.test_rows import History, rec
from tests.factories import T0, make_event, segment_json
from tests.sink.test_service_isolation import MODEL, FakeStore

SETTINGS = Settings()


def sink(privacy: PrivacyList) -> Sink:
    return Sink(SETTINGS, model=MODEL, store=cast(Store, FakeStore()), privacy=privacy)


def counted(topic: str, decision: str) -> float:
    labels = {"door": "sink", "topic": topic, "decision": decision}
    return REGISTRY.get_sample_value("scorestream_events_suppressed_total", labels) or 0.0


def take(s: Sink, stream: str, *records: Any) -> RowBatch:
    batch = RowBatch()
    add = next(x for x in s.streams if x.name == stream).add
    for record in records:
        add(batch, record)
    return batch


def user_ids(batch: RowBatch) -> list[str]:
    return [row[9] for row in batch.rows.get("events", [])]


def test_events_of_restricted_people_are_not_archived() -> None:
    privacy = PrivacyList()
    s = sink(privacy)
    assert s.privacy is privacy and s.privacy_follower.privacy is privacy
    privacy.put(subject_key("user", "gone"), Restriction("r", suppressed_from_ms=T0))
    privacy.put(subject_key("anonymous", "old-anon"), Restriction("r", erased_before_ms=T0))
    privacy.put(subject_key("email", "x@example.com"), Restriction("r", suppressed_from_ms=T0))
    privacy.put(subject_key("user", "old-id"), Restriction("r", suppressed_from_ms=T0))
    records = [
        rec(segment_json(userId="gone", anonymousId=None), offset=1),  # suppressed (record time T0 + 5)
        rec(segment_json(userId="kept", anonymousId="old-anon", timestamp="2026-09-21T14:00:00Z"), offset=2),  # erased
        rec(segment_json(userId="kept", anonymousId="old-anon"), offset=3),  # after the erasure: new collection
        rec(segment_json(type="identify", userId="kept", traits={"email": "X@Example.com"}), offset=4),
        rec(segment_json(type="alias", userId="kept", previousId="old-id", anonymousId=None), offset=5),
        rec(segment_json(userId="kept", anonymousId=None), offset=6),
    ]
    before = counted("events.web", "suppressed"), counted("events.web", "erased")
    batch = take(s, "events", *records)
    assert [row[-2] for row in batch.rows["events"]] == [3, 6]  # kafka offsets of what is kept
    assert s.stats.suppressed == 4
    assert counted("events.web", "suppressed") == before[0] + 3 and counted("events.web", "erased") == before[1] + 1


def dead(value: bytes, key: bytes | None = None, offset: int = 1) -> Any:
    headers = tuple(deadletter_headers("invalid_field", "no", "events.web", 0, 9))
    return rec(value, SETTINGS.topic_deadletter, offset, key=key, headers=headers)


def test_dead_letters_of_restricted_people_are_not_archived() -> None:
    privacy = PrivacyList({subject_key("user", "gone"): Restriction("r", suppressed_from_ms=T0)})
    s = sink(privacy)
    internal = encode(
        Batch(items=[Item(key="gone", env=Envelope(kind="event", event=make_event(user_id="gone", timestamp_ms=T0)))])
    )
    records = [
        dead(b'{"type": "track", "userId": "gone"}', offset=1),  # by its bytes
        dead(b"not json at all", key=b"gone", offset=2),  # by its key
        dead(internal, offset=3),  # an internal batch the worker parked
        dead(b'{"type": "track", "userId": "other"}', offset=4),
        dead(b"\xff\xfe", offset=5),  # unreadable, no key: kept as before
    ]
    batch = take(s, "events", *records)
    assert [row[-2] for row in batch.rows["events"]] == [4, 5]
    assert s.stats.suppressed == 3


def test_rows_about_an_erased_contact_are_not_archived() -> None:
    privacy = PrivacyList()
    s = sink(privacy)
    gone, kept = History("gone"), History("kept")
    gone_record = gone.record(make_event(user_id="gone", timestamp_ms=T0))
    kept_record = kept.record(make_event(user_id="kept", timestamp_ms=T0))
    privacy.put(contact_key("gone"), Restriction("r", erased_before_ms=T0 + 1))
    tombstone = rec(None, "ss-contacts-changelog", 99, key=b"gone")
    before = counted("ss-contacts-changelog", "erased")
    batch = take(s, "contacts", gone_record, kept_record, tombstone)
    assert [row[0] for row in batch.rows["contacts"]] == ["kept"]
    assert [c.contact_id for c in batch.changes] == ["kept"]  # no ledger row, not even "deleted"
    assert counted("ss-contacts-changelog", "erased") == before + 2

    triggers = [
        rec(orjson.dumps(make_trigger("stage.changed", at_ms=T0, model_version="m", contact_id=c)), "triggers", i)
        for i, c in enumerate(["gone", "kept"])
    ]
    assert [r[4] for r in take(s, "triggers", *triggers).rows["triggers"]] == ["kept"]
    deliveries = [
        rec(encode_webhook(delivery(c)), SETTINGS.deliveries_topic, i) for i, c in enumerate(["gone", "kept"])
    ]
    assert [r[3] for r in take(s, "deliveries", *deliveries).rows["webhook_deliveries"]] == ["kept"]
    assert s.stats.suppressed == 4

    # suppressed only (not erased): its rows stay
    privacy.put(contact_key("gone"), Restriction("r", suppressed_from_ms=T0))
    assert [row[0] for row in take(s, "contacts", gone_record).rows["contacts"]] == ["gone"]


def delivery(key: str) -> DeliveryRecord:
    return DeliveryRecord(
        id=f"msg_{key}",
        subscription_id="wh_1",
        type="stage.changed",
        key=key,
        partition=0,
        seq=1,
        body="{}",
        created_ms=T0,
        updated_ms=T0,
    )


def test_an_empty_list_keeps_every_row() -> None:
    s = sink(PrivacyList())
    records = [rec(segment_json(userId=f"u{i}"), offset=i) for i in range(10)]
    assert len(take(s, "events", *records).rows["events"]) == 10
    assert s.stats.suppressed == 0


class Entry(NamedTuple):
    key: bytes
    value: bytes | None


def test_rows_read_before_a_regulation_arrived_are_decided_again_before_insert() -> None:
    s = sink(PrivacyList())
    kept_history, gone_history = History("kept"), History("gone")
    events = take(s, "events", rec(segment_json(userId="gone"), offset=1), rec(segment_json(userId="kept"), offset=2))
    contacts = take(
        s,
        "contacts",
        gone_history.record(make_event(user_id="gone", timestamp_ms=T0)),
        kept_history.record(make_event(user_id="kept", timestamp_ms=T0)),
    )
    events.privacy_seen = contacts.privacy_seen = s.privacy_follower.applied
    assert len(events.rows["events"]) == 2 and len(contacts.changes) == 2
    s._recheck(events)  # nothing new on the list: untouched
    assert len(events.rows["events"]) == 2

    # the regulation's entries arrive while the rows wait to be inserted (ClickHouse slow, say)
    entry = encode_json(PrivacyEntry("r", suppressed_from_ms=T0, erased_before_ms=T0 + 10))
    s.privacy_follower.apply(Entry(contact_key("gone").encode(), entry))
    s._recheck(events)
    s._recheck(contacts)
    assert [row[9] for row in events.rows["events"]] == ["kept"]
    assert [row[0] for row in contacts.rows["contacts"]] == ["kept"]
    assert [c.contact_id for c in contacts.changes] == ["kept"]  # no ledger row for it either
    assert s.stats.suppressed == 2


def test_an_unreadable_record_about_an_erased_contact_keeps_no_bytes() -> None:
    privacy = PrivacyList({contact_key("gone"): Restriction("r", erased_before_ms=T0)})
    s = sink(privacy)
    stream = next(x for x in s.streams if x.name == "triggers")
    records = [rec(b"{not a trigger", "triggers", 1, key=b"gone"), rec(b"{not a trigger", "triggers", 2, key=b"kept")]
    s._take(stream, TopicPartition("triggers", 1), records, s._generation)
    assert [row[4] for row in stream.pending.rows["sink_rejects"]] == [b"kept"]
