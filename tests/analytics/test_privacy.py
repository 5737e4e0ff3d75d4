"""A person erased from, and exported from, the archive (``analytics.privacy``) against real chDB,
with rows made by the sink's own code (``analytics.rows``); and the archive's TTLs."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from analytics import privacy
from analytics.client import Store
from analytics.rows import (
    CONTACT_COLUMNS,
    DELIVERY_COLUMNS,
    EVENT_COLUMNS,
    LEDGER_COLUMNS,
    REJECT_COLUMNS,
    TRIGGER_COLUMNS,
    Ledger,
    Unreadable,
    deadletter_row,
    delivery_row,
    event_row,
    read_contact,
    reject_row,
    trigger_row,
)
from schemas.events import deadletter_headers
from schemas.settings import Settings
from schemas.webhooks import DeliveryRecord
from schemas.webhooks import encode as encode_webhook
from scorestream.triggers import make_trigger
from tests.analytics.test_client import with_store
from tests.analytics.test_rows import CHANNELS, History, rec
from tests.factories import DAY, DEFAULT_MODEL, HOUR, T0, iso, make_event, segment_json

MODEL = DEFAULT_MODEL
# the person erased: a user id, an anonymous id linked by an alias, an email (written in another case)
USER, ANON, EMAIL = "u-p1", "anon-p1", "Pat.One@Example.com"
# someone else, with an event whose properties hold the person's user id inside a longer string
OTHER, OTHER_ANON = "u-q2", "anon-q2"
DECOY = "m-decoy"


def event(offset: int, received: int = T0 + 5, **fields: Any) -> list[Any]:
    row = event_row(rec(segment_json(**fields), "events.web", offset, timestamp=received), "web")
    assert row is not None
    return row


def rejected(offset: int, raw: bytes) -> list[Any]:
    headers = tuple(deadletter_headers("invalid_json", "cut short", "events.web", 0, offset))
    return deadletter_row(rec(raw, "events.deadletter", offset, headers=headers), CHANNELS)


def trigger(offset: int, **fields: Any) -> list[Any]:
    return trigger_row(rec(orjson.dumps(make_trigger(model_version=MODEL.version, **fields)), "triggers", offset))


def delivery(offset: int, key: str, body: dict[str, Any]) -> list[Any]:
    d = DeliveryRecord(
        id=f"msg_{offset}",
        subscription_id="wh_1",
        type=str(body["type"]),
        key=key,
        partition=0,
        seq=offset,
        body=orjson.dumps(body).decode(),
        created_ms=T0,
        updated_ms=T0 + 5,
        status="succeeded",
        trigger_id=f"trg_{offset}",
    )
    row = delivery_row(rec(encode_webhook(d), "scorestream.webhook-deliveries", offset))
    assert row is not None
    return row


def contact_rows(contact_id: str, user: str, anon: str, email: str) -> tuple[list[Any], list[list[Any]]]:
    """A contact's ``contacts`` row and ``score_ledger`` rows, from its changelog records."""
    h, ledger = History(contact_id), Ledger(MODEL)
    records = [
        h.record(make_event(user_id=user, anonymous_id=anon, event="Demo Requested", timestamp_ms=T0)),
        h.record(
            make_event(user_id=user, kind="identify", event=None, traits={"email": email}, timestamp_ms=T0 + HOUR)
        ),
        h.record(make_event(user_id=user, kind="page", event=None, path="/pricing", timestamp_ms=T0 + DAY)),
    ]
    changes = [read_contact(r, MODEL) for r in records]
    ledger.prime(ledger.unknown(changes), {})
    return changes[-1].snapshot, ledger.rows(changes)


async def fill(store: Store) -> dict[str, int]:
    """The person's rows and someone else's, as the sink writes them; the person's counts per table."""
    mine = [
        event(1, type="identify", userId=USER, anonymousId=ANON, traits={"email": EMAIL}),
        event(2, userId=None, anonymousId=ANON, event="Whitepaper Downloaded"),
        event(3, type="alias", userId=USER, anonymousId=None, previousId=ANON),
        # someone else's event naming the person's email (a referral): about the person too
        event(4, userId=OTHER, anonymousId=OTHER_ANON, properties={"referred": " pat.one@example.COM"}),
        rejected(5, b'{"type":"track","userId":"u-p1","event":"Signed'),
        rejected(6, b'{"traits":{"email":"PAT.ONE@example.com"'),
    ]
    theirs = [
        event(10, userId=OTHER, anonymousId=OTHER_ANON, traits={"email": "q@example.com"}),
        event(11, userId=OTHER, anonymousId=OTHER_ANON, messageId=DECOY, properties={"ref": "xu-p1x", "n": "p1"}),
        rejected(12, b'{"userId":"u-q2","ref":"u-p1-not",'),
    ]
    await store.insert("events", EVENT_COLUMNS, mine + theirs)
    await store.insert("events", EVENT_COLUMNS, mine[:2])  # a re-read, not merged yet: two copies

    snapshot, ledger = contact_rows(USER, USER, ANON, EMAIL)
    other_snapshot, other_ledger = contact_rows(OTHER, OTHER, OTHER_ANON, "q@example.com")
    merged = list(snapshot)  # the person's anonymous contact, merged into them
    merged[CONTACT_COLUMNS.index("contact_id")] = f"anonymous:{ANON}"
    merged[CONTACT_COLUMNS.index("status")], merged[CONTACT_COLUMNS.index("merged_into")] = "merged", USER
    await store.insert("contacts", CONTACT_COLUMNS, [snapshot, merged, other_snapshot])
    await store.insert("score_ledger", LEDGER_COLUMNS, ledger + other_ledger)

    triggers = [
        trigger(1, kind="stage.changed", at_ms=T0, contact_id=USER, before="subscriber", after="lead", rule="r"),
        trigger(2, kind="score.threshold_crossed", at_ms=T0, contact_id=USER, before=10, after=60, rule="hot"),
        trigger(3, kind="stage.changed", at_ms=T0, contact_id=OTHER, before="subscriber", after="lead", rule="r"),
        trigger(4, kind="account.stage_changed", at_ms=T0, account_id="acct-1", before="target", after="engaged"),
    ]
    await store.insert("triggers", TRIGGER_COLUMNS, triggers)
    deliveries = [
        delivery(1, USER, {"type": "stage.changed", "data": {"contact_id": USER, "email": EMAIL.lower()}}),
        delivery(2, "acct-1", {"type": "account.stage_changed", "data": {"members": [USER, OTHER]}}),
        delivery(3, OTHER, {"type": "stage.changed", "data": {"contact_id": OTHER}}),
    ]
    await store.insert("webhook_deliveries", DELIVERY_COLUMNS, deliveries)
    rejects = [
        reject_row(rec(b"\x82\xa7user_id\xa4u-p1", "ss-contacts-changelog", 1, key=USER.encode()), Unreadable("x", "")),
        reject_row(rec(b'{"x": "u-p1"', "triggers", 2, key=b""), Unreadable("invalid_trigger", "")),
        reject_row(rec(b"\x81\xa1k\xa4u-q2", "ss-contacts-changelog", 3, key=OTHER.encode()), Unreadable("x", "")),
    ]
    await store.insert("sink_rejects", REJECT_COLUMNS, rejects)
    return {
        "events": len(mine) + 2,
        "score_ledger": len(ledger),
        "contacts": 2,
        "triggers": 2,
        "stage_transitions": 1,
        "webhook_deliveries": 2,
        "sink_rejects": 2,
    }


TABLES = [*privacy.TABLES, "account_changes"]


async def mentions(store: Store, needles: tuple[str, ...]) -> dict[str, list[str]]:
    """Table -> its rows (as text, every column) that hold any of ``needles``, any case."""
    out: dict[str, list[str]] = {}
    for table in TABLES:
        rows = await store.query(f"SELECT * FROM {table}")
        text = [repr(r).lower() for r in rows]
        found = [t for t in text if any(n.lower() in t for n in needles)]
        if found:
            out[table] = found
    return out


async def counts(store: Store) -> dict[str, int]:
    return {t: int((await store.query(f"SELECT count() FROM {t}"))[0][0]) for t in TABLES}


def test_erase_deletes_every_row_about_the_person_and_nothing_else(chdb_url: str) -> None:
    async def body(store: Store) -> None:
        expected = await fill(store)
        before = await counts(store)
        deleted = await privacy.erase(store, user_ids=[USER], anonymous_ids=[ANON], emails=[EMAIL], contact_ids=[USER])
        assert deleted == expected
        after = await counts(store)
        assert {t: before[t] - after[t] for t in TABLES} == {**expected, "account_changes": 0}
        # nothing left that names them, but the decoy (their id inside someone else's longer string)
        left = await mentions(store, (USER, ANON, "pat.one@"))
        assert list(left) == ["events"] and len(left["events"]) == 2
        assert all("xu-p1x" in row or "u-p1-not" in row for row in left["events"])
        # the other person is whole
        others = await store.query("SELECT count() FROM events WHERE user_id = {u:String}", {"u": OTHER})
        assert others == [(2,)]  # theirs, but the one naming the person's email
        assert await store.query("SELECT contact_id FROM contacts") == [(OTHER,)]
        # the staging table is gone, and ClickHouse's mutation list names it, not the person
        tables = await store.query("SELECT name FROM system.tables WHERE database = currentDatabase()")
        assert not [t for (t,) in tables if str(t).startswith("privacy_erase_")]
        commands = await store.query("SELECT command FROM system.mutations WHERE database = currentDatabase()")
        assert commands and not [c for (c,) in commands if USER in c or "pat.one" in c.lower() or ANON in c]
        # run again: nothing to delete
        again = await privacy.erase(store, user_ids=[USER], anonymous_ids=[ANON], emails=[EMAIL], contact_ids=[USER])
        assert again == dict.fromkeys(privacy.TABLES, 0)

    with_store(chdb_url, body)


def test_a_contact_id_alone_finds_the_user_and_anonymous_rows_it_stands_for(chdb_url: str) -> None:
    async def body(store: Store) -> None:
        await fill(store)
        deleted = await privacy.erase(store, contact_ids=[f"anonymous:{ANON}"])
        # the anonymous id's rows: the identify and the anonymous event (each twice), the alias; its merged row
        assert deleted["events"] == 5 and deleted["contacts"] == 1 and deleted["score_ledger"] == 0
        assert await store.query("SELECT count() FROM events WHERE anonymous_id = {a:String}", {"a": ANON}) == [(0,)]

    with_store(chdb_url, body)


def test_nothing_named_deletes_nothing(chdb_url: str) -> None:
    async def body(store: Store) -> None:
        await fill(store)
        before = await counts(store)
        assert await privacy.erase(store, emails=["  "]) == dict.fromkeys(privacy.TABLES, 0)
        assert await counts(store) == before

    with_store(chdb_url, body)


def test_many_people_in_one_call(chdb_url: str) -> None:
    """Ten thousand people in one call: the ids are staged, not spelled out in the SQL."""

    async def body(store: Store) -> None:
        await fill(store)
        users = [f"bulk-{i}" for i in range(10_000)]
        rows = [event(100 + i, userId=u, anonymousId=f"a-{u}") for i, u in enumerate(users[:50])]
        await store.insert("events", EVENT_COLUMNS, rows)
        deleted = await privacy.erase(store, user_ids=[*users, USER], emails=[f"{u}@example.com" for u in users])
        assert deleted["events"] == 50 + 3 + 1  # theirs; the identify (twice), the alias, a dead letter naming USER
        assert await store.query("SELECT count() FROM events WHERE startsWith(user_id, 'bulk-')") == [(0,)]

    with_store(chdb_url, body)


def test_export_reads_what_erase_would_delete(chdb_url: str) -> None:
    async def body(store: Store) -> None:
        await fill(store)
        ids: dict[str, Any] = {"user_ids": [USER], "anonymous_ids": [ANON], "emails": [EMAIL], "contact_ids": [USER]}
        out = await privacy.export(store, **ids, limit=100)
        assert out["truncated"] == []
        events = out["events"]
        assert len(events) == 6  # each record once (the re-read's copies collapse)
        identify = next(e for e in events if e["type"] == "identify")
        assert identify["traits"] == {"email": EMAIL} and identify["user_id"] == USER
        assert "context" in identify and identify["raw"] is None
        raws = sorted(e["raw"] for e in events if e["status"] == "rejected")
        assert raws == ['{"traits":{"email":"PAT.ONE@example.com"', '{"type":"track","userId":"u-p1","event":"Signed']
        assert {c["contact_id"] for c in out["contacts"]} == {USER, f"anonymous:{ANON}"}
        mine = next(c for c in out["contacts"] if c["contact_id"] == USER)
        assert mine["email"] == EMAIL.casefold() and mine["status"] == "active"
        assert next(r["cause"] for r in out["score_ledger"]) == "first"
        assert [t["to_stage"] for t in out["stage_transitions"]] == ["lead"]
        assert sorted(t["type"] for t in out["triggers"]) == ["score.threshold_crossed", "stage.changed"]
        assert {d["key"] for d in out["webhook_deliveries"]} == {USER, "acct-1"}
        assert out["webhook_deliveries"][0]["body"]["type"] in ("stage.changed", "account.stage_changed")
        orjson.dumps(out)  # all of it is JSON
        cut = await privacy.export(store, **ids, limit=2)
        assert len(cut["events"]) == 2 and "events" in cut["truncated"] and "contacts" not in cut["truncated"]
        await privacy.erase(store, **ids)
        empty = await privacy.export(store, **ids)
        assert all(empty[t] == [] for t in privacy.EXPORTS)

    with_store(chdb_url, body)


# --- retention ---------------------------------------------------------------------------------


async def create(store: Store, table: str) -> str:
    rows = await store.query(f"SHOW CREATE TABLE {table}")
    return str(rows[0][0])


def test_the_configured_ttls_are_applied_once_and_changed_when_the_settings_change(chdb_url: str) -> None:
    async def body(store: Store) -> None:
        settings = Settings()
        changed = await privacy.apply_retention(store, settings)
        assert sorted(changed) == sorted(t.table for t in privacy.ttls(settings))
        events = await create(store, "events")
        assert "TTL toDateTime(event_time) + toIntervalDay(760)" in events
        assert "toDateTime(event_time) + toIntervalDay(30) WHERE status = 'rejected'" in events
        assert "TTL toDateTime(updated_at) + toIntervalDay(90)" in await create(store, "webhook_deliveries")
        assert "TTL toDateTime(written_at) + toIntervalDay(30)" in await create(store, "sink_rejects")
        for table in ("score_ledger", "account_changes", "triggers", "stage_transitions"):
            assert "TTL toDateTime(at) + toIntervalDay(760)" in await create(store, table)
        assert await privacy.apply_retention(store, settings) == []  # idempotent
        shorter = settings.model_copy(
            update={"retention_archive_deliveries_days": 7, "retention_archive_ledger_days": 0}
        )
        assert sorted(await privacy.apply_retention(store, shorter)) == [
            "account_changes",
            "score_ledger",
            "webhook_deliveries",
        ]
        assert "toIntervalDay(7)" in await create(store, "webhook_deliveries")
        assert " TTL " not in await create(store, "score_ledger")
        assert await privacy.apply_retention(store, shorter) == []

    with_store(chdb_url, body)


def test_rows_older_than_their_ttl_disappear_at_a_merge(chdb_url: str) -> None:
    async def body(store: Store) -> None:
        settings = Settings(retention_archive_events_days=100, retention_archive_rejected_days=30)
        await privacy.apply_retention(store, settings)
        now = int((await store.query("SELECT toUnixTimestamp64Milli(now64(3))"))[0][0])
        rows = [
            event(1, now, userId="old", timestamp=iso(now - 101 * DAY)),
            event(2, now, userId="kept", timestamp=iso(now - 99 * DAY)),
            event(3, now, userId="recent", timestamp=iso(now - 40 * DAY)),
        ]
        old_reject = rejected(4, b"{")
        new_reject = rejected(5, b"[")
        t = EVENT_COLUMNS.index("event_time")
        old_reject[t] = now - 31 * DAY
        new_reject[t] = now - 29 * DAY
        await store.insert("events", EVENT_COLUMNS, [*rows, old_reject, new_reject])
        await store.command("OPTIMIZE TABLE events FINAL")
        left = await store.query("SELECT user_id, toString(status), kafka_offset FROM events ORDER BY kafka_offset")
        assert [(u, s, int(o)) for u, s, o in left] == [
            ("kept", "accepted", 2),
            ("recent", "accepted", 3),
            ("", "rejected", 5),
        ]

    with_store(chdb_url, body)


@pytest.mark.parametrize("days", [0, 1])
def test_ttl_clause(days: int) -> None:
    ttl = privacy.Ttl("events", "event_time", days, rejected=days)
    assert (ttl.clause() is None) == (days == 0)
