"""The archive's erasure (``analytics.privacy.erase``): one person, and 10,000 people in one call,
against an archive of a million events, beside a plain count over the same table.

    .venv/bin/python -m bench.privacy_archive [--events 1000000] [--contacts 200000] [--people 10000]
    .venv/bin/python -m bench.run --only privacy_archive

A fresh embedded chDB in a temporary directory, in a process of its own (chDB: one engine per
process). The archive is filled with SQL (``INSERT ... SELECT`` from ``numbers()``: a million rows
through the sink's Python row code would take most of the run), shaped as the sink writes it:
events with raw JSON (user id, anonymous id, an email trait on identifies, 1% dead letters),
the score ledger, contacts, triggers (hence stage transitions) and webhook deliveries.

Figures: ``count_s`` (a count over ``events`` that searches its ``raw`` column for a text: the
floor of any search through the raw bytes), ``lookup_s`` (a count of one user id's events), ``erase_one_s`` (the median of three erasures of one person each),
``erase_many_s`` (``--people`` people in one call), ``calls_of_ten_s`` (ten people, one call
each: the cost per call that 10,000 separate calls would pay), ``purge_s`` (until ClickHouse's
background ``APPLY DELETED MASK`` mutations finished after the big erasure), rows deleted per table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

from analytics import privacy
from analytics.client import Store
from analytics.migrations import migrate

EVENTS = """
INSERT INTO events (event_time, received_at, status, channel, type, event, message_id, user_id, anonymous_id,
                    reason, source_partition, source_offset, kafka_topic, kafka_partition, kafka_offset, raw)
SELECT t, t, if(n = 99, 'rejected', 'accepted'), 'web', if(n % 10 = 0, 'identify', 'track'),
       if(n % 10 = 0, '', 'Page Viewed'), concat('m-', toString(number)),
       if(n = 99, '', concat('user-', toString(p))), if(n = 99, '', concat('anon-', toString(p))),
       if(n = 99, 'invalid_json', ''), -1, -1, if(n = 99, 'events.deadletter', 'events.web'), 0, number,
       concat('{"type":"', if(n % 10 = 0, 'identify', 'track'), '","userId":"user-', toString(p),
              '","anonymousId":"anon-', toString(p), '","messageId":"m-', toString(number), '"',
              if(n % 10 = 0, concat(',"traits":{"email":"Person', toString(p), '@Example.com","plan":"pro"}'),
                 concat(',"event":"Page Viewed","properties":{"path":"/p/', toString(number % 997), '"}')),
              if(n = 99, '', '}'))
FROM (SELECT number, number % {contacts:UInt64} AS p, number % 100 AS n,
             now64(3) - toIntervalSecond(number % 25920000) AS t
      FROM numbers({events:UInt64}))
"""
LEDGER = """
INSERT INTO score_ledger (contact_id, at, kind, cause, engagement, engagement_band, fit, fit_grade, stage, rules,
                          message_ids, model_version, kafka_topic, kafka_partition, kafka_offset, written_at)
SELECT concat('user-', toString(number % {contacts:UInt64})), now64(3) - toIntervalSecond(number % 25920000),
       'score', 'events', 10 + number % 90, '3', 20, 'C', 'lead', ['page-view'], [concat('m-', toString(number))],
       'default@bench', 'ss-contacts-changelog', 0, number, now64(3)
FROM numbers({rows:UInt64})
"""
CONTACTS = """
INSERT INTO contacts (contact_id, updated_at, status, user_id, email, stage, engagement, fit, model_version,
                      kafka_partition, kafka_offset)
SELECT concat('user-', toString(number)), now64(3), 'active', concat('user-', toString(number)),
       concat('person', toString(number), '@example.com'), 'lead', 40, 20, 'default@bench', 0, number
FROM numbers({contacts:UInt64})
"""
TRIGGERS = """
INSERT INTO triggers (id, type, at, subject, contact_id, before, after, rule, cause, model_version, kafka_topic,
                      kafka_partition, kafka_offset, written_at)
SELECT concat('trg_', toString(number)), 'stage.changed', now64(3) - toIntervalSecond(number % 25920000),
       concat('user-', toString(number % {contacts:UInt64})), concat('user-', toString(number % {contacts:UInt64})),
       '"subscriber"', '"lead"', 'to-lead', concat('m-', toString(number)), 'default@bench', 'triggers', 0, number,
       now64(3)
FROM numbers({rows:UInt64})
"""
DELIVERIES = """
INSERT INTO webhook_deliveries (id, subscription_id, type, key, trigger_id, status, created_at, updated_at,
                                attempt_count, scheduled_attempts, attempts, body, source_partition, seq,
                                kafka_topic, kafka_partition, kafka_offset)
SELECT concat('msg_', toString(number)), 'wh_1', 'stage.changed', concat('user-', toString(number % {contacts:UInt64})),
       concat('trg_', toString(number)), 'succeeded', now64(3), now64(3), 1, 0, '[]',
       concat('{"type":"stage.changed","data":{"contact_id":"user-', toString(number % {contacts:UInt64}), '"}}'),
       0, number, 'deliveries', 0, number
FROM numbers({rows:UInt64})
"""


def person(i: int) -> dict[str, Any]:
    return {
        "user_ids": [f"user-{i}"],
        "anonymous_ids": [f"anon-{i}"],
        "emails": [f"person{i}@example.com"],
        "contact_ids": [f"user-{i}"],
    }


def people(ids: range) -> dict[str, Any]:
    out: dict[str, list[str]] = {"user_ids": [], "anonymous_ids": [], "emails": [], "contact_ids": []}
    for i in ids:
        for key, values in person(i).items():
            out[key] += values
    return out


async def timed(coro: Any) -> tuple[float, Any]:
    started = time.perf_counter()
    result = await coro
    return time.perf_counter() - started, result


async def mutations_done(store: Store, limit_s: float = 600.0) -> None:
    """Until ClickHouse's background mutations (the erasures' ``APPLY DELETED MASK``) are done."""
    for _ in range(int(limit_s / 0.2)):
        if not (await store.query("SELECT count() FROM system.mutations WHERE NOT is_done"))[0][0]:
            return
        await asyncio.sleep(0.2)


async def run(events: int, contacts: int, many: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="privacy-archive-") as data:
        store = Store(f"chdb://{data}")
        try:
            await migrate(store)
            started = time.perf_counter()
            await store.query(EVENTS, {"events": events, "contacts": contacts})
            await store.query(LEDGER, {"rows": events // 3, "contacts": contacts})
            await store.query(CONTACTS, {"contacts": contacts})
            await store.query(TRIGGERS, {"rows": contacts // 2, "contacts": contacts})
            await store.query(DELIVERIES, {"rows": contacts // 10, "contacts": contacts})
            await store.command("OPTIMIZE TABLE events FINAL")
            fill_s = time.perf_counter() - started
            sizes = {t: int((await store.query(f"SELECT count() FROM {t}"))[0][0]) for t in privacy.TABLES}  # noqa: S608
            count_s, _ = await timed(store.query("SELECT count() FROM events WHERE position(raw, 'no such text') > 0"))
            lookup_s, _ = await timed(store.query("SELECT count() FROM events WHERE user_id = 'user-7'"))
            one = []
            for i in (1, 2, 3):
                took, _ = await timed(privacy.erase(store, **person(i)))
                one.append(took)
                await mutations_done(store)
            ten_s, _ = await timed(asyncio.gather(*(privacy.erase(store, **person(i)) for i in range(10, 20))))
            await mutations_done(store)
            start = 100
            many_s, deleted = await timed(privacy.erase(store, **people(range(start, start + many))))
            purge_s, _ = await timed(mutations_done(store))
            return {
                "events": sizes["events"],
                "contacts": contacts,
                "rows": sizes,
                "fill_s": round(fill_s, 1),
                "count_s": round(count_s, 3),
                "lookup_s": round(lookup_s, 3),
                "erase_one_s": round(statistics.median(one), 3),
                "erase_one_each_s": [round(t, 3) for t in one],
                "calls_of_ten_s": round(ten_s, 3),
                "people_many": many,
                "erase_many_s": round(many_s, 3),
                "purge_s": round(purge_s, 3),
                "deleted_many": deleted,
            }
        finally:
            await store.close()


def measure(events: int = 1_000_000, contacts: int = 200_000, many: int = 10_000) -> dict[str, Any]:
    """:func:`run` in a process of its own (``bench.run``'s other scenarios may hold chDB)."""
    command = [sys.executable, "-m", "bench.privacy_archive", "--json"]
    command += ["--events", str(events), "--contacts", str(contacts), "--people", str(many)]
    out = subprocess.run(command, check=True, capture_output=True, text=True, timeout=3600)
    figures: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return figures


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--contacts", type=int, default=200_000)
    parser.add_argument("--people", type=int, default=10_000)
    parser.add_argument("--json", action="store_true", help="one JSON line (for bench.run)")
    args = parser.parse_args()
    figures = asyncio.run(run(args.events, args.contacts, args.people))
    print(json.dumps(figures) if args.json else json.dumps(figures, indent=2))
