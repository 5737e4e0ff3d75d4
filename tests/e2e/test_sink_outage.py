"""The analytics sink through a ClickHouse outage, on the real broker and real chDB.

Events flow into the source topics while the sink's inserts fail for a while (the fault is
injected at the client edge, :class:`FaultyStore`: every call fails while ClickHouse is "down",
and some inserts land and *then* fail, as a timeout after the server committed does). When
ClickHouse is back, every event is archived exactly once, counted per ``message_id`` without
``FINAL`` (the retried inserts carry the same deduplication tokens), and nothing was committed
past rows not archived. A row ClickHouse refuses on its own (while it answers everything else)
goes to ``sink_rejects`` alone; the other rows of its batch are archived.

The issue's case is an outage of a minute; here it lasts :data:`OUTAGE_S` seconds (the logic is
the same: retries with backoff, the consumer paused, offsets held).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from pydantic import SecretStr

from analytics.client import Store
from schemas.settings import Settings
from sink.service import Sink
from tests.e2e.test_analytics import Background, _committed, wait

OUTAGE_S = 8.0
POISON = "poison-row"


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat().replace("+00:00", "Z")


class FaultyStore(Store):
    """chDB behind a switch: ``down`` fails every call; while down, every other insert lands
    before failing (the client never learns it did). A row whose message id is :data:`POISON` is
    refused by every insert that carries it."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.down = False
        self.failed_inserts = 0
        self.landed_then_failed = 0
        self.refused = 0

    async def insert(
        self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], token: str | None = None
    ) -> None:
        poison = table == "events" and any(POISON in r for r in rows)
        if self.down:  # a server that is down refuses everything, the poison row included
            self.failed_inserts += 1
            if not poison and self.landed_then_failed < (self.failed_inserts + 1) // 2:
                # the first insert without the poison row lands (then every other): a late
                # duplicate is sure to be tried
                await super().insert(table, columns, rows, token)
                self.landed_then_failed += 1
            raise ConnectionError("ClickHouse is down")
        if poison:
            self.refused += 1
            raise ValueError(f"Code: 27. DB::Exception: Cannot parse input: {POISON}")
        await super().insert(table, columns, rows, token)

    async def query(self, sql: str, parameters: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
        if self.down:
            raise ConnectionError("ClickHouse is down")
        return await super().query(sql, parameters)


async def produce(bootstrap: str, topic: str, messages: list[bytes]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for m in messages:
            await producer.send(topic, m)
        await producer.flush()
    finally:
        await producer.stop()


def pages(prefix: str, n: int, start_ms: int) -> list[bytes]:
    return [
        orjson.dumps(
            {
                "type": "page",
                "messageId": f"{prefix}-{i}",
                "userId": f"u{i % 37}",
                "timestamp": iso(start_ms + i),
                "properties": {"path": "/pricing"},
            }
        )
        for i in range(n)
    ]


def test_a_clickhouse_outage_ends_with_every_row_archived_once(kafka_bootstrap: str, chdb_url: str) -> None:
    suffix = uuid.uuid4().hex[:8]
    settings = Settings(
        kafka_bootstrap=kafka_bootstrap,
        app_id=f"outage-{suffix}",
        topic_web=f"web-{suffix}",
        topic_email=f"email-{suffix}",
        topic_store=f"store-{suffix}",
        topic_deadletter=f"dead-{suffix}",
        topic_triggers=f"triggers-{suffix}",
        clickhouse_url=SecretStr(chdb_url),
        sink_batch_s=0.2,
        sink_batch_rows=100,
    )
    now = int(time.time() * 1000) - 3_600_000
    before, during, after = pages("a", 300, now), pages("b", 300, now + 10_000), pages("c", 300, now + 20_000)
    poison = orjson.dumps({"type": "page", "messageId": POISON, "userId": "u1", "timestamp": iso(now + 5)})
    # every topic the sink reads exists before it subscribes
    topics = [*settings.source_topics, settings.topic_deadletter, settings.topic_triggers, settings.deliveries_topic]
    asyncio.run(
        create_topics(kafka_bootstrap, [*topics, *(settings.changelog_topic(t) for t in ("contacts", "accounts"))])
    )
    asyncio.run(produce(kafka_bootstrap, settings.topic_web, before))

    store = FaultyStore(chdb_url)
    bg = Background(Sink(settings, store=store, max_records=50))
    try:

        def archived() -> int:
            return int(bg.query("SELECT count() FROM events")[0][0])

        wait(archived, 60, "the first events archived", until=lambda n: n >= 100)
        store.down = True
        down_at = time.monotonic()
        asyncio.run(produce(kafka_bootstrap, settings.topic_web, during))
        time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - down_at)))
        # on a busy machine the sink may not have tried yet: the outage lasts until it has
        # failed inserts (what the test is about)
        wait(lambda: store.failed_inserts, 90, "inserts failing during the outage", until=lambda n: n >= 3)
        offsets_during = committed_web(settings)[0]
        # what is in ClickHouse (read past the switch): the offsets committed never pass it
        in_clickhouse = bg.call(Store.query(store, "SELECT uniqExact(message_id) FROM events"))[0][0]
        refused_by_then = bg.call(Store.query(store, "SELECT count() FROM sink_rejects"))[0][0]
        store.down = False
        # the poison row after the outage: while down, the sink's batches hold valid rows only
        asyncio.run(produce(kafka_bootstrap, settings.topic_web, [*after[:150], poison, *after[150:]]))

        expected = {f"{p}-{i}" for p in "abc" for i in range(300)}
        wait(archived, 120, "every event archived", until=lambda n: n >= len(expected))
        wait(lambda: committed_web(settings), 60, "offsets committed", until=lambda c: c[0] == c[1])
        time.sleep(1.0)  # a late duplicate would show now
        rows = bg.query("SELECT message_id, count() FROM events GROUP BY message_id")
        rejects = bg.query("SELECT reason, value FROM sink_rejects")
        stats = bg.sink.stats
    finally:
        bg.stop()

    per_id = dict(rows)
    assert set(per_id) == expected  # every event, and not the refused row
    assert {n for n in per_id.values()} == {1}  # exactly once, without FINAL
    assert [(reason, orjson.loads(value)["messageId"]) for reason, value in rejects] == [("insert_refused", POISON)]
    assert store.landed_then_failed >= 1 and store.failed_inserts >= 3  # the outage did bite
    assert stats.failures >= 3 and stats.refused_rows == 1
    # while down, nothing was committed past the rows archived (or refused alone)
    assert offsets_during <= int(in_clickhouse) + int(refused_by_then)
    print(  # the figures for the report
        f"\noutage {OUTAGE_S:.0f} s: {store.failed_inserts} failed inserts ({store.landed_then_failed} landed then "
        f"failed), {len(expected)} events archived once each, 1 row refused alone"
    )


def committed_web(settings: Settings) -> tuple[int, int]:
    """(committed offsets of the sink's group, end offsets), summed over the web topic."""
    return asyncio.run(_committed(settings.kafka_bootstrap, f"{settings.app_id}-sink", [settings.topic_web]))


async def create_topics(bootstrap: str, names: list[str]) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(n, num_partitions=2, replication_factor=1) for n in names])
    finally:
        await admin.close()
