"""Report latency on a large generated archive (``bench.run`` scenario ``analytics``).

The archive is generated inside chDB (``INSERT ... SELECT`` over ``numbers()`` with seeded
``cityHash64``: deterministic, no Python loop, no Kafka) and is consistent the way the sink would
have left it:

- ``events``: ``events`` Segment events over ``DAYS`` days (web 70%, email 20%, store 10%; page,
  track and identify calls; 0.5% dead-lettered with a reason), spread over ``contacts`` contacts
  with a skew (a few busy contacts with thousands of events, the least active with about ten),
  each contact's events between its first visit and now; a JSON ``raw`` body like the sink's;
- ``contacts`` (one latest row per contact, plus about 5% stale versions that ``FINAL`` must
  drop): first/last seen, orders, revenue and first/last order from the contact's own events;
  a stage journey (``lead`` -> ``mql`` -> ... between first and last seen; contacts with orders
  become customers at their first order, evangelists after three), persona, flags, RFM segment;
  engagement and fit from its newest ledger row;
- ``triggers`` (``stage.changed``; the migration's view fills ``stage_transitions``): the
  journeys' transitions, about 10% under an older model version;
- ``score_ledger``: a row for two of every three accepted events of a contact (the worker writes
  one per changelog batch that changed a score), with the rule and message id of the event and
  the stage the journey was in then.

Then each report is timed as the API calls it (``analytics.reports`` through the process's
:class:`~analytics.client.Store`): wall time from the call to the response body (pydantic model),
so ClickHouse's work, moving the rows into Python and shaping them; not HTTP or JSON encoding.
Timed as the inserts left the parts (merges running in the background, as live), then after
``OPTIMIZE ... FINAL`` of the report tables (what a quiet archive converges to).

Sink rows/s (records through Kafka into chDB) is scenario ``sink`` (:mod:`bench.sink`).
Run alone: ``python -m bench.analytics [events] [contacts]``.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import statistics
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from analytics import reports
from analytics.client import Store
from analytics.migrations import migrate
from analytics.reports import ContactFilter, Position
from schemas.model_file import load_model
from scorestream import Model
from scorestream.identity import ANONYMOUS_PREFIX
from scorestream.rfm import RfmBoundaries, boundaries

log = logging.getLogger(__name__)
DAY_MS = 86_400_000
DAYS = 180
RUNS = 5
OLD_VERSION = "default@0ldversion0"
REPORT_TABLES = ("contacts", "score_ledger", "triggers", "stage_transitions")
# where a contact's journey goes (before any order): index by a hash; customers are appended
JOURNEYS = [
    [],
    [],
    [],
    ["lead"],
    ["lead"],
    ["lead"],
    ["lead", "mql"],
    ["lead", "mql"],
    ["lead", "mql"],
    ["lead", "mql", "sql"],
    ["lead", "mql", "sql"],
    ["lead", "mql", "sql", "opportunity"],
    ["lead", "mql", "sql", "opportunity"],
    ["lead", "sql", "opportunity"],
    ["lead", "disqualified"],
    ["lead", "disqualified", "lead"],
    ["lead", "mql", "recycled"],
    ["lead", "mql", "sql", "recycled", "mql"],
    ["lead", "mql", "sql", "opportunity", "recycled"],
    ["lead", "mql", "sql", "opportunity"],
]
BEFORE_ORDER = [[], ["lead"], ["lead", "mql"], ["lead", "mql", "sql", "opportunity"], ["lead", "sql", "opportunity"]]
SEGMENTS = ["Champions", "Loyal", "Potential Loyalist", "New Customers", "Promising", "Need Attention",
            "About To Sleep", "Can't Lose Them", "At Risk", "Lost", "Hibernating"]  # fmt: skip


def _array(values: list[str]) -> str:
    return "[" + ",".join("'" + v.replace("'", "\\'") + "'" for v in values) + "]"


def _nested(values: list[list[str]]) -> str:
    return "CAST([" + ",".join(_array(v) for v in values) + "], 'Array(Array(String))')"


def events_sql(events: int, contacts: int, now_ms: int) -> str:
    """``events`` rows ``0 .. events-1``; contact ``c`` = ``contacts * u^1.5`` (u uniform), so
    contact 0 is the busiest; an event falls between its contact's first visit and now."""
    start = now_ms - DAYS * DAY_MS
    return f"""
INSERT INTO events (event_time, received_at, status, channel, type, event, name, path, message_id, user_id,
                    anonymous_id, group_id, previous_id, reason, detail, source_topic, source_partition,
                    source_offset, source_http, kafka_topic, kafka_partition, kafka_offset, raw)
SELECT event_time, received_at, status, channel, type, event, name, path, message_id, user_id, anonymous_id,
       '', '', reason, detail, if(status = 'rejected', concat('events.', channel), ''),
       if(status = 'rejected', toInt32(partition), 0), if(status = 'rejected', toInt64(n), 0), '',
       if(status = 'rejected', 'scorestream-deadletter', concat('events.', channel)), partition, n,
       concat('{{"type":"', type, '","messageId":"', message_id, '",',
              if(user_id = '', '', concat('"userId":"', user_id, '",')), '"anonymousId":"', anonymous_id,
              '","timestamp":"', formatDateTime(event_time, '%Y-%m-%dT%H:%i:%S.%fZ', 'UTC'), '",',
              if(type = 'track', concat('"event":"', event, '",'), ''),
              if(type = 'page', concat('"name":"', name, '",'), ''),
              '"properties":{{', multiIf(type = 'page', concat('"path":"', path, '","url":"https://example.com', path, '"'),
                                        event = 'Order Completed', concat('"revenue":', toString(amount), ',"currency":"USD"'),
                                        type = 'identify', '', '"category":"engagement"'), '}},',
              if(type = 'identify', concat('"traits":{{"email":"person', toString(cityHash64(c, 9) % 100000000),
                                           '@example.com"}},'), ''),
              '"context":{{"ip":"10.', toString(cityHash64(c, 10) % 256), '.', toString(cityHash64(c, 11) % 256),
              '.1","userAgent":"Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0","library":{{"name":"analytics.js","version":"5.2.0"}}}}}}')
FROM (
    SELECT number AS n,
           toUInt64(floor({contacts} * pow((cityHash64(number, 1) % 1000000000) / 1e9, 1.5))) AS c,
           {start} + toInt64(cityHash64(c, 2) % {(DAYS - 1) * DAY_MS}) AS first_ms,
           first_ms + toInt64(cityHash64(number, 3) % toUInt64({now_ms} - first_ms)) AS t_ms,
           fromUnixTimestamp64Milli(t_ms, 'UTC') AS event_time,
           fromUnixTimestamp64Milli(t_ms + 50 + toInt64(cityHash64(number, 4) % 3000), 'UTC') AS received_at,
           cityHash64(number, 5) % 100 AS h,
           multiIf(h < 70, 'web', h < 90, 'email', 'store') AS channel,
           cityHash64(number, 6) % 100 AS k,
           multiIf(channel != 'web', 'track', k < 60, 'page', k < 92, 'track', 'identify') AS type,
           multiIf(type != 'track', '',
                   channel = 'web', ['Signed Up', 'Demo Requested', 'Content Downloaded', 'Pricing Viewed'][1 + k % 4],
                   channel = 'email', ['Email Opened', 'Email Opened', 'Email Clicked', 'Email Bounced'][1 + k % 4],
                   k % 8 = 0, 'Order Completed',
                   ['Product Viewed', 'Product Viewed', 'Product Added', 'Checkout Started'][1 + k % 4]) AS event,
           if(type = 'page', ['Home', 'Pricing', 'Demo', 'Blog', 'Careers', 'Docs'][1 + k % 6], '') AS name,
           if(type = 'page', ['/', '/pricing', '/demo', '/blog/post', '/careers', '/docs'][1 + k % 6], '') AS path,
           lower(hex(cityHash64(number, 7))) AS message_id,
           if(cityHash64(c, 8) % 10 < 7, concat('user-', toString(c)), '') AS user_id,
           concat('anon-', lower(hex(cityHash64(c, 12)))) AS anonymous_id,
           toUInt32(cityHash64(c, 13) % 12) AS partition,
           20 + cityHash64(number, 14) % 400 AS amount,
           if(cityHash64(number, 15) % 200 = 0, 'rejected', 'accepted') AS status,
           if(status = 'rejected', ['invalid_json', 'missing_identity', 'invalid_timestamp'][1 + k % 3], '') AS reason,
           if(status = 'rejected', 'generated', '') AS detail
    FROM numbers({events})
)
"""  # noqa: S608 (numbers only)


def people_sql(now_ms: int) -> str:
    """A scratch table: one row per contact with its facts from its accepted events and journey
    (stages entered after the initial one, and when)."""
    return f"""
CREATE TABLE bench_people ENGINE = MergeTree ORDER BY contact AS
SELECT contact, uid AS user_id, aid AS anonymous_id, first_ms, last_ms, orders, revenue, first_order_ms, last_order_ms,
       cityHash64(contact, 20) AS hc,
       if(orders > 0,
          arrayConcat({_nested(BEFORE_ORDER)}[1 + hc % {len(BEFORE_ORDER)}], ['customer'],
                      if(orders >= 3, ['evangelist'], CAST([], 'Array(String)'))),
          {_nested(JOURNEYS)}[1 + hc % {len(JOURNEYS)}]) AS stages,
       length(stages) AS k,
       indexOf(stages, 'customer') AS won,
       arrayMap(j -> toInt64(multiIf(
           won = 0, first_ms + (last_ms - first_ms) * j / (k + 1),
           j < won, first_ms + (first_order_ms - first_ms) * j / won,
           j = won, first_order_ms,
           first_order_ms + (greatest(last_ms, first_order_ms) - first_order_ms) / 2)), range(1, k + 1)) AS times
FROM (
    SELECT if(user_id != '', user_id, concat('{ANONYMOUS_PREFIX}', anonymous_id)) AS contact,
           any(user_id) AS uid, any(anonymous_id) AS aid,
           toUnixTimestamp64Milli(min(event_time)) AS first_ms,
           least(toUnixTimestamp64Milli(max(event_time)), toInt64({now_ms} - 1)) AS last_ms,
           countIf(event = 'Order Completed') AS orders,
           sumIf(toFloat64(JSONExtractInt(properties, 'revenue')), event = 'Order Completed') AS revenue,
           toUnixTimestamp64Milli(minIf(event_time, event = 'Order Completed')) AS first_order_ms,
           toUnixTimestamp64Milli(maxIf(event_time, event = 'Order Completed')) AS last_order_ms
    FROM events
    WHERE status = 'accepted'
    GROUP BY contact
)
"""  # noqa: S608 (constants only)


def triggers_sql(model_version: str) -> str:
    return f"""
INSERT INTO triggers (id, type, at, subject, contact_id, account_id, before, after, rule, cause, model_version,
                      kafka_topic, kafka_partition, kafka_offset, written_at)
SELECT concat('trg_', lower(hex(cityHash64(contact, j)))), 'stage.changed', fromUnixTimestamp64Milli(t, 'UTC'),
       contact, contact, '', concat('"', if(j = 1, 'subscriber', stages[j - 1]), '"'), concat('"', stages[j], '"'),
       concat('to-', stages[j]), lower(hex(cityHash64(contact, j, 1))),
       if(cityHash64(contact, 21) % 10 = 0, '{OLD_VERSION}', '{model_version}'),
       'scorestream-triggers', toUInt32(cityHash64(contact) % 12), rowNumberInAllBlocks(),
       fromUnixTimestamp64Milli(t + 20, 'UTC')
FROM bench_people
ARRAY JOIN arrayEnumerate(stages) AS j, times AS t
"""  # noqa: S608 (constants only)


RULES = (
    "transform(if(type = 'page', name, event), "
    "['Pricing', 'Demo', 'Careers', 'Signed Up', 'Demo Requested', 'Content Downloaded', 'Pricing Viewed', "
    "'Email Opened', 'Email Clicked', 'Email Bounced', 'Product Viewed', 'Product Added', 'Checkout Started', "
    "'Order Completed'], "
    "['pricing-page', 'demo-page', 'careers-page', 'signed-up', 'demo-requested', 'content-download', 'pricing-page', "
    "'email-opened', 'email-clicked', 'email-bounced', 'product-viewed', 'product-added', 'checkout-started', "
    "'order-completed'], 'page-view')"
)


def ledger_sql(model_version: str) -> str:
    """Two of every three accepted events of a contact get a ledger row at their time."""
    return f"""
INSERT INTO score_ledger (contact_id, at, kind, cause, engagement, engagement_band, fit, fit_grade, stage, rules,
                          message_ids, merged_into, model_version, kafka_topic, kafka_partition, kafka_offset,
                          written_at)
SELECT contact, event_time, 'score', if(t = p.first_ms, 'first', 'events'), e,
       multiIf(e >= 60, '1', e >= 30, '2', e >= 10, '3', '4'), fit,
       multiIf(fit >= 60, 'A', fit >= 35, 'B', fit >= 15, 'C', 'D'),
       arrayLast((s, x) -> x <= t, arrayPushFront(p.stages, 'subscriber'), arrayPushFront(p.times, p.first_ms)),
       [{RULES}], [message_id], '', '{model_version}', 'scorestream-contacts-changelog',
       toUInt32(cityHash64(contact) % 12), kafka_offset, fromUnixTimestamp64Milli(t + 1000, 'UTC')
FROM (
    SELECT if(user_id != '', user_id, concat('{ANONYMOUS_PREFIX}', anonymous_id)) AS contact, event_time,
           toUnixTimestamp64Milli(event_time) AS t, type, name, event, message_id, kafka_offset,
           round((cityHash64(message_id, 30) % 13000) / 100 - 5, 2) AS e,
           [0., 15., 20., 45., 70.][1 + cityHash64(contact, 31) % 5] AS fit
    FROM events
    WHERE status = 'accepted' AND cityHash64(message_id, 32) % 3 != 0
) AS l
INNER JOIN bench_people AS p USING (contact)
"""  # noqa: S608 (constants only)


def contacts_sql(model_version: str, stale: bool) -> str:
    """The latest row per contact (engagement and fit of its newest ledger row); ``stale``: an
    older version of about 5% of them (lower changelog offset), which ``FINAL`` must drop."""
    where = "WHERE cityHash64(contact, 40) % 20 = 0" if stale else ""
    offset = "kafka_offset - 7" if stale else "kafka_offset"
    return f"""
INSERT INTO contacts (contact_id, updated_at, status, merged_into, user_id, email, account_id, first_seen, last_seen,
                      stage, stage_since, persona, flags, engagement, engagement_band, fit, fit_grade, rfm_segment,
                      orders, revenue, first_order_at, last_order_at, model_version, kafka_partition, kafka_offset,
                      inserted_at)
SELECT contact, fromUnixTimestamp64Milli(updated_ms, 'UTC'), status, if(status = 'merged', 'user-0', ''), user_id,
       if(user_id != '' AND hc % 3 != 0, concat('person', toString(cityHash64(contact, 41) % 100000000), '@example.com'), ''),
       '', fromUnixTimestamp64Milli(first_ms, 'UTC'), fromUnixTimestamp64Milli(last_ms, 'UTC'),
       {"'mql'" if stale else "if(k = 0, 'subscriber', stages[k])"},
       fromUnixTimestamp64Milli(if(k = 0, first_ms, times[k]), 'UTC'),
       ['executive', 'practitioner', 'shopper', ''][1 + cityHash64(contact, 42) % 4],
       [[], [], [], ['job_seeker'], ['student', 'bot'], []][1 + cityHash64(contact, 43) % 6],
       e, multiIf(e >= 60, '1', e >= 30, '2', e >= 10, '3', '4'), fit,
       multiIf(fit >= 60, 'A', fit >= 35, 'B', fit >= 15, 'C', 'D'),
       if(orders > 0, {_array(SEGMENTS)}[1 + cityHash64(contact, 44) % {len(SEGMENTS)}], ''),
       orders, revenue,
       if(orders > 0, fromUnixTimestamp64Milli(first_order_ms, 'UTC'), NULL),
       if(orders > 0, fromUnixTimestamp64Milli(last_order_ms, 'UTC'), NULL),
       '{model_version}', toUInt32(cityHash64(contact) % 12), {offset},
       fromUnixTimestamp64Milli(updated_ms + 2000, 'UTC')
FROM (
    SELECT p.*, l.e AS e, l.fit AS fit, l.kafka_offset AS kafka_offset, l.at_ms + 1000 AS updated_ms,
           multiIf(cityHash64(contact, 45) % 400 = 0, 'deleted', cityHash64(contact, 45) % 200 = 0, 'merged',
                   'active') AS status
    FROM bench_people AS p
    INNER JOIN (
        SELECT contact_id AS contact, argMax(engagement, at) AS e, argMax(fit, at) AS fit,
               max(kafka_offset) + 1000000000 AS kafka_offset, toUnixTimestamp64Milli(max(at)) AS at_ms
        FROM score_ledger
        GROUP BY contact_id
    ) AS l USING (contact)
    {where}
)
"""  # noqa: S608 (constants only)


async def _sizes(store: Store) -> dict[str, dict[str, int]]:
    rows = await store.query(
        "SELECT table, sum(rows), sum(bytes_on_disk), sum(data_uncompressed_bytes), count() FROM system.parts "
        "WHERE active AND database = currentDatabase() AND table NOT LIKE 'bench_%' GROUP BY table ORDER BY table"
    )
    return {
        str(t): {"rows": int(r), "bytes_on_disk": int(b), "bytes_uncompressed": int(u), "parts": int(p)}
        for t, r, b, u, p in rows
    }


async def _timed(fn: Callable[[], Awaitable[Any]], runs: int) -> dict[str, Any]:
    """Wall milliseconds of ``runs`` calls (the first one included: nothing is warmed before)."""
    ms: list[float] = []
    for _ in range(runs):
        started = time.perf_counter()
        await fn()
        ms.append((time.perf_counter() - started) * 1000)
    return {"first_ms": round(ms[0], 1), "p50_ms": round(statistics.median(ms), 1), "max_ms": round(max(ms), 1)}


async def _generate(store: Store, model: Model, events: int, contacts: int, now_ms: int) -> dict[str, Any]:
    """Fill the archive; the seconds and rows/s of each step."""
    steps: dict[str, Any] = {}

    async def step(name: str, sql: str, table: str | None) -> None:
        before = int((await store.query(f"SELECT count() FROM {table}"))[0][0]) if table else 0  # noqa: S608
        started = time.perf_counter()
        await store.command(sql)
        seconds = time.perf_counter() - started
        after = int((await store.query(f"SELECT count() FROM {table}"))[0][0]) if table else 0  # noqa: S608
        rows = after - before
        steps[name] = {"rows": rows, "seconds": round(seconds, 2)}
        if table:
            steps[name]["rows_per_s"] = round(rows / seconds)
        log.info("generated %s: %d rows in %.1f s", name, rows, seconds)

    await step("events", events_sql(events, contacts, now_ms), "events")
    await step("people_scratch", people_sql(now_ms), None)
    await step("triggers", triggers_sql(model.version), "triggers")
    await step("score_ledger", ledger_sql(model.version), "score_ledger")
    await step("contacts", contacts_sql(model.version, stale=False), "contacts")
    await step("contacts_stale_versions", contacts_sql(model.version, stale=True), "contacts")
    await store.command("DROP TABLE bench_people")
    total_rows = sum(s["rows"] for s in steps.values())
    total_s = sum(s["seconds"] for s in steps.values())
    steps["total"] = {"rows": total_rows, "seconds": round(total_s, 2), "rows_per_s": round(total_rows / total_s)}
    return steps


async def _rfm_bounds(store: Store) -> RfmBoundaries:
    """The population's quintile boundaries, as the API's population model holds them."""
    rows = await store.query(
        "SELECT toUnixTimestamp64Milli(last_order_at), orders, revenue FROM contacts FINAL "
        "WHERE status = 'active' AND orders > 0 AND last_order_at IS NOT NULL"
    )
    return RfmBoundaries(
        last_order_ms=boundaries(float(r[0]) for r in rows),
        frequency=boundaries(float(r[1]) for r in rows),
        monetary=boundaries(float(r[2]) for r in rows),
        customers=len(rows),
    )


async def _reports(store: Store, model: Model, now_ms: int, runs: int) -> dict[str, Any]:
    """Each report timed ``runs`` times, called as :mod:`api.routers.reports` calls it."""
    busy = str(
        (await store.query("SELECT contact_id FROM score_ledger GROUP BY contact_id ORDER BY count() DESC LIMIT 1"))[0][
            0
        ]
    )
    email = str(
        (await store.query("SELECT email FROM contacts FINAL WHERE email != '' ORDER BY contact_id LIMIT 1"))[0][0]
    )
    active = int((await store.query("SELECT count() FROM contacts FINAL WHERE status = 'active'"))[0][0])
    deep = await store.query(
        "SELECT toUnixTimestamp64Milli(inserted_at), contact_id FROM contacts FINAL WHERE status = 'active' "
        "ORDER BY inserted_at, contact_id LIMIT 1 OFFSET {skip:UInt64}",
        {"skip": int(active * 0.8)},
    )
    cursor = Position(int(deep[0][0]), str(deep[0][1]))
    bounds = await _rfm_bounds(store)
    pipeline = ContactFilter(stages=("mql", "sql", "opportunity"), min_engagement=10.0)
    stages = reports.default_funnel(model)
    window = (now_ms - 90 * DAY_MS, now_ms)  # the route's default window
    cases: dict[str, Callable[[], Awaitable[Any]]] = {
        "contacts_first_page": lambda: reports.contact_list(
            store, model, ContactFilter(), reports.START, 100, now_ms, 0
        ),
        "contacts_first_page_filtered": lambda: reports.contact_list(
            store, model, pipeline, reports.START, 100, now_ms, 0
        ),
        "contacts_deep_page_filtered": lambda: reports.contact_list(store, model, pipeline, cursor, 100, now_ms, 0),
        "contacts_deep_page_1000": lambda: reports.contact_list(store, model, ContactFilter(), cursor, 1000, now_ms, 0),
        "history_busy_contact": lambda: reports.history(store, model, busy, None, now_ms, now_ms, 1000),
        "resolve_contact_by_email": lambda: reports.resolve_contact(store, email),
        "funnel_cumulative_90d": lambda: reports.funnel(store, model, stages, *window, sequential=False),
        "funnel_sequential_90d": lambda: reports.funnel(store, model, stages, *window, sequential=True),
        "funnel_cumulative_90d_one_model": lambda: reports.funnel(
            store, model, stages, *window, sequential=False, model_version=model.version
        ),
        "rfm": lambda: reports.rfm(store, model, bounds),
        "personas": lambda: reports.personas(store, model, now_ms),
        "forecast_180d": lambda: reports.forecast(store, model, now_ms, 180 * DAY_MS),
    }
    out: dict[str, Any] = {}
    for name, fn in cases.items():
        out[name] = await _timed(fn, runs)
        log.info("%s: %s", name, out[name])
    history = await reports.history(store, model, busy, None, now_ms, now_ms, 1000)
    out["history_busy_contact"]["rows"] = {
        "ledger_in_window": len(history.ledger),
        "truncated": history.truncated,
        "transitions": len(history.transitions),
    }
    return out


async def _run(url: str, events: int, contacts: int, runs: int, optimize: bool) -> dict[str, Any]:
    model = load_model()
    now_ms = int(time.time() * 1000)
    store = Store(url)
    try:
        await migrate(store)
        figures: dict[str, Any] = {"events": events, "contacts_target": contacts, "days": DAYS}
        figures["generation"] = await _generate(store, model, events, contacts, now_ms)
        figures["sizes"] = await _sizes(store)
        figures["reports_as_inserted"] = await _reports(store, model, now_ms, runs)
        if optimize:
            started = time.perf_counter()
            for table in REPORT_TABLES:
                await store.command(f"OPTIMIZE TABLE {table} FINAL")
            figures["optimize_final_s"] = round(time.perf_counter() - started, 1)
            figures["reports_merged"] = await _reports(store, model, now_ms, runs)
            figures["sizes_merged"] = {t: v for t, v in (await _sizes(store)).items() if t in REPORT_TABLES}
        return figures
    finally:
        await store.close()


def analytics_figures(
    bootstrap: str,
    work: Path,
    events: int = 10_000_000,
    contacts: int = 500_000,
    runs: int = RUNS,
    optimize: bool = True,
) -> dict[str, Any]:
    """Report latency on a generated archive of ``events`` events (see the module docstring). The
    archive lives in ``work`` only while measured. ``bootstrap`` is unused: no Kafka is needed,
    the archive is generated in chDB itself (the sink's rows/s is scenario ``sink``)."""
    directory = work / "analytics-archive"
    try:
        return asyncio.run(_run(f"chdb://{directory / 'clickhouse'}", events, contacts, runs, optimize))
    finally:
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    import json
    import sys
    import tempfile

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000_000
    m = int(sys.argv[2]) if len(sys.argv) > 2 else max(n // 20, 100)
    root = Path(tempfile.mkdtemp(prefix="scorestream-bench-analytics-"))
    try:
        print(json.dumps(analytics_figures("", root, n, m), indent=2))
    finally:
        shutil.rmtree(root, ignore_errors=True)
