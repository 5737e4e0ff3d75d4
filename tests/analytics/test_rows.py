"""Kafka records to ClickHouse rows (``analytics.rows``), without ClickHouse or Kafka."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import orjson
import pytest

from analytics.rows import (
    ACCOUNT_COLUMNS,
    CONTACT_COLUMNS,
    DELIVERY_COLUMNS,
    EVENT_COLUMNS,
    LEDGER_COLUMNS,
    TRIGGER_COLUMNS,
    Ledger,
    Scores,
    Unreadable,
    account_row,
    deadletter_row,
    delivery_row,
    engagement_changed,
    event_row,
    groups_changed,
    last_rows_parameters,
    read_contact,
    reject_row,
    trigger_row,
)
from schemas.accounts import encode as encode_account
from schemas.events import deadletter_headers
from schemas.state import encode as encode_state
from schemas.webhooks import AttemptRecord, DeliveryRecord
from schemas.webhooks import encode as encode_webhook
from scorestream import ContactState, engagement_at, fit_of
from scorestream.accounts import apply_member_updates, member_update
from scorestream.fold import step
from scorestream.scoring import group_scores
from scorestream.triggers import make_trigger
from sink.service import RowBatch
from tests.factories import DAY, DEFAULT_MODEL, HOUR, OMIT, T0, make_event, segment_json
from tests.grouped import GROUPED_MODEL

MODEL = DEFAULT_MODEL
CHANNELS = {"events.web": "web", "events.email": "email", "events.store": "store"}


class Rec(NamedTuple):
    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...] = ()


def rec(value: bytes | None, topic: str = "events.web", offset: int = 7, key: bytes | None = None, **kw: Any) -> Rec:
    return Rec(topic, kw.get("partition", 1), offset, kw.get("timestamp", T0 + 5), key, value, kw.get("headers", ()))


def as_dict(columns: tuple[str, ...], row: list[Any] | None) -> dict[str, Any]:
    assert row is not None and len(row) == len(columns)
    return dict(zip(columns, row, strict=True))


# --- events ------------------------------------------------------------------------------------


def test_an_accepted_event_keeps_its_fields_coordinates_and_bytes() -> None:
    raw = segment_json(type="page", messageId="m-1", userId="u-1", properties={"path": "/pricing"})
    row = as_dict(EVENT_COLUMNS, event_row(rec(raw), "web"))
    assert row["status"] == "accepted" and row["channel"] == "web" and row["type"] == "page"
    assert row["message_id"] == "m-1" and row["user_id"] == "u-1" and row["anonymous_id"] == "anon-1"
    assert row["path"] == "/pricing" and row["event_time"] == T0 and row["received_at"] == T0 + 5
    assert (row["kafka_topic"], row["kafka_partition"], row["kafka_offset"]) == ("events.web", 1, 7)
    assert row["raw"] == raw and row["reason"] == ""


def test_an_event_without_a_timestamp_takes_the_record_time_as_the_worker_does() -> None:
    raw = segment_json(timestamp=OMIT, event="Demo Requested")
    row = as_dict(EVENT_COLUMNS, event_row(rec(raw, timestamp=T0 + 999), "email"))
    assert row["event_time"] == T0 + 999 and row["event"] == "Demo Requested" and row["channel"] == "email"


@pytest.mark.parametrize(
    "raw", [b"not json", segment_json(userId=None, anonymousId=None), segment_json(type="nope"), None]
)
def test_a_refused_source_record_gives_no_row_it_is_stored_from_the_dead_letter_topic(raw: bytes | None) -> None:
    assert event_row(rec(raw), "web") is None


def test_a_dead_letter_record_keeps_reason_detail_source_and_readable_ids() -> None:
    raw = segment_json(userId=None, anonymousId=None, messageId="m-bad", event="Signed Up")
    headers = tuple(deadletter_headers("missing_identity", "one of userId ...", "events.store", 2, 41))
    row = as_dict(EVENT_COLUMNS, deadletter_row(rec(raw, "events.deadletter", 3, headers=headers), CHANNELS))
    assert row["status"] == "rejected" and row["reason"] == "missing_identity" and row["detail"] == "one of userId ..."
    assert (row["source_topic"], row["source_partition"], row["source_offset"]) == ("events.store", 2, 41)
    assert row["channel"] == "store" and row["message_id"] == "m-bad" and row["type"] == "track"
    assert row["event"] == "Signed Up" and row["user_id"] == "" and row["raw"] == raw
    assert row["event_time"] == row["received_at"] == T0 + 5 and row["kafka_topic"] == "events.deadletter"


def test_any_bytes_on_the_dead_letter_topic_make_a_rejected_row() -> None:
    headers = (*deadletter_headers("invalid_json", "x", "events.web", -1, -1), ("scorestream.source.http", b"/v1/b[3]"))
    row = as_dict(EVENT_COLUMNS, deadletter_row(rec(b"\x00\xff[", "events.deadletter", headers=headers), CHANNELS))
    assert row["message_id"] == "" and row["type"] == "" and row["source_http"] == "/v1/b[3]"
    assert row["source_partition"] == -1 and row["channel"] == "web"
    bare = as_dict(EVENT_COLUMNS, deadletter_row(rec(None, "events.deadletter"), CHANNELS))
    assert bare["reason"] == "unknown" and bare["raw"] == b"" and bare["source_offset"] == -1


# --- triggers, deliveries, rejects ------------------------------------------------------------


def test_a_trigger_keeps_before_and_after_as_json() -> None:
    t = make_trigger(
        "stage.changed",
        at_ms=T0,
        model_version="m@1",
        contact_id="c-1",
        before="lead",
        after="mql",
        rule="r",
        cause="x",
    )
    row = as_dict(TRIGGER_COLUMNS, trigger_row(rec(orjson.dumps(t), "triggers", 9)))
    assert row["id"] == t["id"] and row["subject"] == "c-1" and row["account_id"] == ""
    assert orjson.loads(row["before"]) == "lead" and orjson.loads(row["after"]) == "mql"
    assert row["at"] == T0 and row["cause"] == "x" and row["written_at"] == T0 + 5
    account = make_trigger("account.stage_changed", at_ms=T0, model_version="m@1", account_id="a-1", after="engaged")
    arow = as_dict(TRIGGER_COLUMNS, trigger_row(rec(orjson.dumps(account), "triggers")))
    assert arow["subject"] == "a-1" and arow["contact_id"] == "" and arow["before"] == "null"


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"{", "invalid_trigger"),
        (b'{"id": "trg_1", "type": "x", "at_ms": 1}', "invalid_trigger"),  # no subject
        (b'{"id": "trg_1", "type": "x", "at_ms": 1, "contact_id": "c", "v": 2}', "unsupported_version"),
        (None, "empty"),
    ],
)
def test_an_unreadable_trigger_says_why(value: bytes | None, reason: str) -> None:
    with pytest.raises(Unreadable) as caught:
        trigger_row(rec(value, "triggers"))
    assert caught.value.reason == reason
    row = reject_row(rec(value, "triggers", 4, key=b"c"), caught.value)
    assert row[:3] == ["triggers", 1, 4] and row[4] == b"c" and row[6] == reason


def test_a_delivery_keeps_its_latest_state_and_attempts() -> None:
    d = DeliveryRecord(
        id="msg_1",
        subscription_id="wh_1",
        type="stage.changed",
        key="c-1",
        partition=2,
        seq=40,
        body='{"x":1}',
        created_ms=T0,
        updated_ms=T0 + 10,
        status="succeeded",
        trigger_id="trg_1",
        attempt_count=1,
        attempts=[AttemptRecord(at_ms=T0 + 9, outcome="success", latency_ms=3.5, status_code=200)],
    )
    row = as_dict(DELIVERY_COLUMNS, delivery_row(rec(encode_webhook(d), "deliveries", 3)))
    assert row["status"] == "succeeded" and row["updated_at"] == T0 + 10 and row["next_attempt_at"] is None
    assert orjson.loads(row["attempts"])[0]["status_code"] == 200 and row["body"] == '{"x":1}'
    assert (row["source_partition"], row["seq"], row["kafka_offset"]) == (2, 40, 3)
    assert delivery_row(rec(None, "deliveries")) is None
    with pytest.raises(Unreadable):
        delivery_row(rec(b"[]", "deliveries"))


# --- accounts ----------------------------------------------------------------------------------


def member(user: str, *events: Any) -> ContactState:
    state, *_ = step(None, user, list(events), MODEL)
    assert state is not None
    return state


def test_an_account_change_has_the_scores_the_api_computes_at_its_latest_report() -> None:
    ceo = member(
        "ceo-1",
        make_event(user_id="ceo-1", kind="identify", event=None, traits={"title": "CEO"}, timestamp_ms=T0),
        make_event(user_id="ceo-1", kind="group", event=None, group_id="acct-1", traits={"industry": "software"}),
        make_event(user_id="ceo-1", event="Demo Requested", timestamp_ms=T0 + 1000),
    )
    update = member_update(ceo, MODEL)
    assert update is not None
    account, _ = apply_member_updates(None, "acct-1", [update], MODEL)
    row = as_dict(ACCOUNT_COLUMNS, account_row(rec(encode_account(account), "accounts-changelog", 5), MODEL))
    assert row["account_id"] == "acct-1" and row["at"] == account.updated_ms == T0 + 1000
    assert row["members"] == 1 and row["engaged_members"] == 1 and row["roles_engaged"] == ["decision_maker"]
    assert row["stage"] == account.stage and row["fit"] > 0 and row["engagement"] > 0
    assert account_row(rec(None, "accounts-changelog"), MODEL) is None
    with pytest.raises(Unreadable):
        account_row(rec(b"\xc1", "accounts-changelog"), MODEL)


# --- contacts and the ledger -------------------------------------------------------------------


class History:
    """One contact's changelog: each step folds events and writes a record."""

    def __init__(self, contact_id: str = "user-1") -> None:
        self.contact_id = contact_id
        self.state: ContactState | None = None
        self.offset = 100

    def record(self, *events: Any) -> Rec:
        self.state, *_ = step(self.state, self.contact_id, list(events), MODEL)
        assert self.state is not None
        self.offset += 1
        return rec(encode_state(self.state), "ss-contacts-changelog", self.offset, key=self.contact_id.encode())


def ledger_rows(ledger: Ledger, *records: Rec) -> list[dict[str, Any]]:
    changes = [read_contact(r, MODEL) for r in records]
    ledger.prime(ledger.unknown(changes), {})
    return [as_dict(LEDGER_COLUMNS, row) for row in ledger.rows(changes)]


def test_the_ledger_writes_a_row_when_points_fit_or_stage_change_not_when_time_passes() -> None:
    h, ledger = History(), Ledger(MODEL)
    first = h.record(make_event(event="Whitepaper Downloaded", message_id="wp", timestamp_ms=T0))
    (row,) = ledger_rows(ledger, first)
    assert row["cause"] == "first" and row["kind"] == "score" and row["message_ids"] == ["wp"]
    assert row["rules"] == ["content-download"] and row["at"] == T0 and row["kafka_offset"] == 101
    assert h.state is not None
    assert row["engagement"] == engagement_at(h.state, MODEL, T0).score == 15.0

    # the same record again, and an event that scores nothing a day later: no row (decay only)
    later = h.record(make_event(kind="identify", event=None, message_id="id-1", timestamp_ms=T0 + DAY))
    assert ledger_rows(ledger, first, later) == []

    # two scoring events: one row naming both
    scored = h.record(
        make_event(event="Demo Requested", message_id="demo", timestamp_ms=T0 + DAY + HOUR),
        make_event(kind="page", event=None, path="/pricing", message_id="pr", timestamp_ms=T0 + DAY + 2 * HOUR),
    )
    (row,) = ledger_rows(ledger, scored)
    assert row["cause"] == "events" and row["message_ids"] == ["demo", "pr"]
    assert row["rules"] == ["demo-requested", "page-view", "pricing-page"]
    assert row["at"] == T0 + DAY + 2 * HOUR and h.state is not None
    assert math.isclose(row["engagement"], engagement_at(h.state, MODEL, row["at"]).score)

    # a title: fit changes (and the stage with it) without new points
    titled = h.record(
        make_event(kind="identify", event=None, message_id="t", traits={"title": "CEO"}, timestamp_ms=T0 + 2 * DAY)
    )
    (row,) = ledger_rows(ledger, titled)
    assert row["cause"] == "fit" and row["fit"] == fit_of(h.state, MODEL).score == 25.0 and row["message_ids"] == []
    assert row["stage"] == (h.state.journey.stage if h.state.journey else "")


def test_merges_and_deletions_are_recorded_once() -> None:
    h, ledger = History("anonymous:a-1"), Ledger(MODEL)
    ledger_rows(ledger, h.record(make_event(user_id=None, anonymous_id="a-1", event="Signed Up", timestamp_ms=T0)))
    assert h.state is not None
    h.state.merged_into = "user-9"
    merged = rec(encode_state(h.state), "cl", 200, key=h.contact_id.encode())
    again = rec(encode_state(h.state), "cl", 201, key=h.contact_id.encode())
    (row,) = ledger_rows(ledger, merged, again)
    assert (row["kind"], row["cause"], row["merged_into"]) == ("merged", "merged", "user-9")
    gone = rec(None, "cl", 202, key=h.contact_id.encode(), timestamp=T0 + 77)
    (row,) = ledger_rows(ledger, gone)
    assert (row["kind"], row["at"]) == ("deleted", T0 + 77)
    snapshot = as_dict(CONTACT_COLUMNS, read_contact(gone, MODEL).snapshot)
    assert snapshot["status"] == "deleted" and snapshot["kafka_offset"] == 202
    with pytest.raises(Unreadable):
        read_contact(rec(b"\xc1", "cl", key=b"x"), MODEL)
    with pytest.raises(Unreadable):
        read_contact(rec(b"", "cl", key=None), MODEL)


def test_a_contact_not_remembered_is_compared_with_what_clickhouse_holds() -> None:
    h = History()
    record = h.record(make_event(event="Signed Up", message_id="su", timestamp_ms=T0))
    change = read_contact(record, MODEL)
    ledger = Ledger(MODEL, capacity=1)
    again = read_contact(rec(record.value, record.topic, record.offset + 5, key=record.key), MODEL)
    assert ledger.unknown([again, change]) == {"user-1": record.offset}
    assert last_rows_parameters({"b": 7, "a": 3}, "cl") == {"ids": ["a", "b"], "before": [3, 7], "topic": "cl"}
    ledger.prime(["user-1"], {"user-1": change.scores})  # a restart: the row is already there
    assert ledger.rows([change]) == []
    other = read_contact(History("user-2").record(make_event(user_id="user-2", timestamp_ms=T0)), MODEL)
    ledger.prime(ledger.unknown([other]), {})
    assert len(ledger.rows([other])) == 1
    assert list(ledger.unknown([change])) == ["user-1"]  # capacity 1: user-1 was dropped


def test_the_contact_snapshot_summarises_the_state() -> None:
    h = History()
    record = h.record(
        make_event(kind="identify", event=None, traits={"email": "Ada@Example.com", "title": "VP"}, timestamp_ms=T0),
        make_event(event="Order Completed", properties={"order_id": "o1", "revenue": 120.0}, timestamp_ms=T0 + 5),
    )
    row = as_dict(CONTACT_COLUMNS, read_contact(record, MODEL).snapshot)
    assert row["status"] == "active" and row["email"] == "ada@example.com" and row["user_id"] == "user-1"
    assert row["last_seen"] == T0 + 5 and row["first_seen"] == T0 and row["orders"] == 1 and row["revenue"] == 120.0
    assert row["last_order_at"] == T0 + 5 and row["stage"] == "customer" and row["updated_at"] == T0 + 5
    assert row["fit_grade"] in "ABCD" and row["model_version"] == MODEL.version


def test_the_snapshot_keeps_each_groups_raw_score_at_last_seen() -> None:
    """Raw: decayed at the group's half-life, not clamped by its ``max`` (training's is 30), so the
    archive can decay it to any later instant and clamp it then, as the core does."""
    grouped = GROUPED_MODEL
    events = [
        make_event(kind="page", event=None, channel="web", path=f"/training/{i}", timestamp_ms=T0 + i * HOUR)
        for i in range(5)
    ] + [make_event(kind="page", event=None, channel="web", path="/hardware/x", timestamp_ms=T0 + 5 * HOUR)]
    state, *_ = step(None, "user-1", events, grouped)
    assert state is not None
    at = T0 + 5 * HOUR
    row = as_dict(CONTACT_COLUMNS, read_contact(rec(encode_state(state), key=b"user-1"), grouped).snapshot)
    raw = row["groups"]
    assert set(raw) == {"hardware", "training"}
    assert raw["hardware"] == pytest.approx(10.0)
    week = grouped.group("training").half_life_ms  # type: ignore[union-attr]
    expected = math.fsum(8 * math.pow(2.0, -(at - (T0 + i * HOUR)) / week) for i in range(5))
    assert raw["training"] == pytest.approx(expected, rel=1e-12) and raw["training"] > 30
    shown = {g.id: g.score for g in group_scores(state, grouped, at)}
    assert shown["training"] == 30.0 and shown["hardware"] == pytest.approx(raw["hardware"])
    # a model without groups, and a contact without group points: an empty map
    assert (
        as_dict(CONTACT_COLUMNS, read_contact(rec(encode_state(state), key=b"user-1"), MODEL).snapshot)["groups"] == {}
    )


def test_a_score_group_apart_from_the_overall_score_writes_its_own_ledger_rows() -> None:
    """training has weight 0: its page views change no overall points, only its own score (a row,
    with the groups' raw scores); the same views a day later, decayed at 7 days, are no change."""
    grouped = GROUPED_MODEL
    state: ContactState | None = None
    offset = 0

    def record(*events: Any) -> Rec:
        nonlocal state, offset
        state, *_ = step(state, "user-1", list(events), grouped)
        assert state is not None
        offset += 1
        return rec(encode_state(state), "ss-contacts-changelog", offset, key=b"user-1")

    def rows(*records: Rec) -> list[dict[str, Any]]:
        changes = [read_contact(r, grouped) for r in records]
        ledger.prime(ledger.unknown(changes), {})
        return [as_dict(LEDGER_COLUMNS, row) for row in ledger.rows(changes)]

    ledger = Ledger(grouped)
    page = make_event(kind="page", event=None, channel="web", path="/hardware/a", message_id="h", timestamp_ms=T0)
    (first,) = rows(record(page))
    assert first["cause"] == "first" and first["groups"] == {"hardware": 10.0}
    # training capped at 0 weight: the overall score moves only by the page view rule's point
    view = make_event(kind="page", event=None, channel="web", path="/training/a", message_id="t1", timestamp_ms=T0 + 1)
    (row,) = rows(record(view))
    assert row["cause"] == "events" and row["rules"] == ["page-view", "training-page"]
    assert row["groups"] == {"hardware": pytest.approx(10.0), "training": 8.0}
    # a day later, an identify: every score only decayed (each group at its own half-life): no row
    assert rows(record(make_event(kind="identify", event=None, message_id="i", timestamp_ms=T0 + DAY))) == []
    # only the weight-0 group changes (page-view's daily cap is spent): still a row
    capped = [
        make_event(kind="page", event=None, channel="web", path="/x", message_id=f"p{i}", timestamp_ms=T0 + DAY + i)
        for i in range(10)
    ]
    (spent,) = rows(record(*capped))
    more = make_event(
        kind="page", event=None, channel="web", path="/training/b", message_id="t2", timestamp_ms=T0 + DAY + 20
    )
    (row,) = rows(record(more))
    assert "training-page" in row["rules"] and row["cause"] == "events"
    before = Scores("score", spent["at"], spent["engagement"])
    assert not engagement_changed(before, Scores("score", row["at"], row["engagement"]), grouped.half_life_ms)
    week = 7 * DAY
    assert row["groups"]["training"] == pytest.approx(8 * math.pow(2, -(DAY + 19) / week) + 8, rel=1e-12)
    assert groups_changed(Scores("score", T0, groups=(("training", 8.0),)), Scores("score", T0 + week), grouped)
    unchanged = Scores("score", T0 + week, groups=(("training", 4.0),))
    assert not groups_changed(Scores("score", T0, groups=(("training", 8.0),)), unchanged, grouped)


def test_decay_alone_is_not_a_change() -> None:
    half = MODEL.half_life_ms
    assert not engagement_changed(Scores("score", T0, 40.0), Scores("score", T0 + half, 20.0), half)
    assert engagement_changed(Scores("score", T0, 40.0), Scores("score", T0 + half, 20.01), half)


def test_a_batch_token_names_its_offset_ranges() -> None:
    from aiokafka import TopicPartition

    a, b = RowBatch(), RowBatch()
    for batch in (a, b):
        batch.first[TopicPartition("t", 0)] = 10
        batch.next[TopicPartition("t", 0)] = 20
    assert a.token("events") == b.token("events") != a.token("triggers")
    b.next[TopicPartition("t", 0)] = 21
    assert a.token("events") != b.token("events")
    assert a.covered() == "t[0] 10..19"
