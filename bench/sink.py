"""The analytics sink's throughput into embedded chDB (``bench.run`` scenario ``sink``).

Two runs on prefilled topics, each timed from the sink's start until every row is in ClickHouse:

- ``events``: synthetic Segment events (``deploy.traffic``) on the three source topics, into the
  ``events`` table (decode with the worker's contract, one row per event);
- ``contacts``: a contacts changelog (states folded by the core from the same kind of traffic in
  event-time order, one record every few events per contact), into ``contacts`` and
  ``score_ledger`` (decode the state, engagement and fit by the core, the ledger's change test).

Reported: rows/s (and records/s) after chDB's start and the migrations, inserts and rows per
insert, and the seconds the start took. Run alone: ``python -m bench.sink``.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from analytics.client import Store
from bench.harness import prefill, publish, standalone
from deploy.traffic import Traffic
from kafka_io.topics import ensure_topics
from schemas.events import InvalidMessage, decode
from schemas.model_file import load_model
from schemas.settings import Settings
from schemas.state import encode
from scorestream import ContactState, Event
from scorestream.fold import step
from sink.service import Sink

EVERY = 4  # a changelog record after every EVERY events of a contact (the worker writes one per batch)


def _settings(bootstrap: str, work: Path, suffix: str, batch_rows: int) -> Settings:
    return Settings(
        kafka_bootstrap=bootstrap,
        app_id=f"bs-{suffix}",
        topic_web=f"web-{suffix}",
        topic_email=f"email-{suffix}",
        topic_store=f"store-{suffix}",
        topic_deadletter=f"dead-{suffix}",
        topic_triggers=f"triggers-{suffix}",
        data_dir=work / f"sink-{suffix}",
        sink_batch_rows=batch_rows,
    )


def _changelog(settings: Settings, events: int, contacts: int, now_ms: int) -> Iterator[tuple[bytes, bytes]]:
    """(contact id, encoded state) records: each contact's state after every EVERY of its events."""
    model = load_model(settings.model)
    span = 30 * 86_400_000
    traffic = Traffic(contacts, seed=11, start_ms=now_ms - span, span_ms=span)
    states: dict[str, ContactState | None] = {}
    pending: dict[str, list[Event]] = {}
    channels = {"web": "web", "email": "email", "store": "store"}
    # in event-time order, as live traffic reaches the worker (its walks then cover the newest
    # event, and the sink reads engagement from the walk instead of recomputing it)
    ordered = sorted(traffic.records(events), key=lambda r: orjson.loads(r.value)["timestamp"])
    for record in ordered:
        try:
            event = decode(record.value, channels[record.channel], now_ms)
        except InvalidMessage:
            continue
        key = event.user_id or f"anonymous:{event.anonymous_id}"
        inbox = pending.setdefault(key, [])
        inbox.append(event)
        if len(inbox) >= EVERY:
            state, *_ = step(states.get(key), key, inbox, model)
            states[key] = state
            pending[key] = []
            if state is not None:
                yield key.encode(), encode(state)


async def _time_sink(settings: Settings, records: int, tables: tuple[str, ...]) -> dict[str, Any]:
    """Run a sink until it has read ``records`` records and inserted everything; the figures."""
    sink = Sink(settings, store=Store(f"chdb://{settings.data_dir / 'clickhouse'}"))
    started = time.perf_counter()
    await sink.start()
    await sink.migrated.wait()
    ready = time.perf_counter()
    try:
        while True:  # the sink has no "caught up" event: poll its counters
            if sink.stats.records >= records and sink.idle:
                break
            await asyncio.sleep(0.05)
        done = time.perf_counter()
        counts = {t: int((await sink.store.query(f"SELECT count() FROM {t} FINAL"))[0][0]) for t in tables}  # noqa: S608 (our table names)
    finally:
        await sink.stop()
    seconds = done - ready
    rows = sum(sink.stats.rows.get(t, 0) for t in tables)
    return {
        "records": records,
        "rows": rows,
        "rows_in_tables": counts,
        "seconds_after_start": round(seconds, 2),
        "start_s": round(ready - started, 2),
        "rows_per_s": round(rows / seconds),
        "records_per_s": round(records / seconds),
        "inserts": sink.stats.inserts,
        "rows_per_insert": round(rows / max(sink.stats.inserts, 1)),
        "inserts_per_s": round(sink.stats.inserts / seconds, 1),
    }


def sink_throughput(bootstrap: str, work: Path, events: int = 200_000, contacts: int = 20_000) -> dict[str, Any]:
    """The sink's throughput into chDB on ``events`` events and a changelog of the same traffic."""
    now_ms = int(time.time() * 1000)
    figures: dict[str, Any] = {}

    settings = _settings(bootstrap, work, uuid.uuid4().hex[:8], 50_000)
    asyncio.run(ensure_topics(settings))
    topics = {channel: topic for topic, channel in settings.source_topics.items()}
    publish_rate = asyncio.run(prefill(bootstrap, topics, events, contacts, seed=7, now_ms=now_ms))
    figures["events"] = {**asyncio.run(_time_sink(settings, events, ("events",))), "publish_per_s": round(publish_rate)}

    settings = _settings(bootstrap, work, uuid.uuid4().hex[:8], 50_000)
    asyncio.run(ensure_topics(settings))
    topic = settings.changelog_topic("contacts")
    changelog = [(topic, key, value) for key, value in _changelog(settings, events, contacts, now_ms)]
    asyncio.run(publish(bootstrap, changelog))
    records = len(changelog)
    figures["contacts_changelog"] = asyncio.run(_time_sink(settings, records, ("contacts", "score_ledger")))
    return figures


if __name__ == "__main__":
    import sys

    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200_000
    standalone("bench-sink", lambda bootstrap, work: sink_throughput(bootstrap, work, n, max(n // 10, 100)))
