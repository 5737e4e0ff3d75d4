"""The analytics sink: scorestream's topics into ClickHouse, batched, at least once, deduplicated.

What goes where (rows built by :mod:`analytics.rows`; tables by ``deploy/clickhouse/*.sql``)::

    events.web|email|store  --accepted-->  events            (refused ones: from the dead-letter topic)
    events.deadletter       --rejected-->  events            (reason, detail, source coordinates)
    triggers                ------------>  triggers  --MV-->  stage_transitions
    <app>.webhook-deliveries ----------->  webhook_deliveries (latest state per delivery)
    <app>-contacts-changelog ----------->  contacts (latest per contact), score_ledger (changes)
    <app>-accounts-changelog ----------->  account_changes
    anything it cannot read ----------->  sink_rejects      (with the reason; never stops the sink)

One consumer group (``<app_id>-sink``) reads every topic; any number of sink processes share the
partitions (with a ClickHouse server; embedded chDB allows one process, see below). Rows are
buffered per stream (the topics feeding a table) and inserted when a table has
``sink_batch_rows`` rows (or 64 MiB of records were read) or the oldest has waited
``sink_batch_s``. Offsets are committed only after the rows of those offsets are in ClickHouse,
so a crash or a rebalance re-reads what was not committed: delivery is at least once, and
duplicates are removed by the tables themselves:

- every table is a ReplacingMergeTree whose sorting key identifies the source record or the fact
  (``events``: event time + Kafka coordinates; ``triggers``: the trigger id; ``contacts``: the
  contact, versioned by changelog offset; ...), so a record read twice collapses to one row when
  parts merge. Until then, queries that need exact counts use ``FINAL`` (or ``argMax`` /
  ``GROUP BY`` the key);
- a retried insert of the same batch carries the same ``insert_deduplication_token`` (the batch's
  offset ranges), so ClickHouse drops it at once when the first attempt had in fact landed.

Insert deduplication alone would not do: after a restart the batches are cut differently, and
only the sorting keys recognise the same records again.

A slow or unavailable ClickHouse delays only the sink: inserts run in the client's thread
(:class:`analytics.client.Store`), a failed batch is kept and retried with backoff (0.5 s doubling
to 30 s, for ever, never skipped), and while it waits the consumer is paused (it keeps polling, so
it stays in the group) so memory stays bounded; the topics hold the backlog, and the sink catches
up when ClickHouse is back. Scoring (the worker) never waits for it. Decoding and scoring the
records (the ledger computes engagement and fit with the core) runs in a thread of its own too,
so the event loop, the API's in embedded mode, keeps serving requests meanwhile.

A source record the contract refuses is on the dead-letter topic as well (the worker puts it
there, with the reason): the sink skips it on the source topic and stores it once, from the
dead-letter record. Both decide with the same ``schemas.events.decode`` over the same bytes and
record time, so they agree.

Embedded chDB: one process may open a chDB directory, and only through the synchronous client.
With the default (``SCORESTREAM_CLICKHOUSE_URL`` unset, ``SCORESTREAM_SINK_IN_API`` auto) the API
process owns it and runs this sink in its lifespan; with a server URL, ``scorestream sink`` runs
as its own process(es) and the API only queries.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import signal
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError

from analytics.client import Store, clickhouse_url, redacted
from analytics.migrations import migrate
from analytics.rows import (
    ACCOUNT_COLUMNS,
    CONTACT_COLUMNS,
    DELIVERY_COLUMNS,
    EVENT_COLUMNS,
    LAST_LEDGER_ROWS,
    LEDGER_COLUMNS,
    REJECT_COLUMNS,
    TRIGGER_COLUMNS,
    ContactChange,
    Ledger,
    PurchaseFacts,
    Row,
    Unreadable,
    account_row,
    deadletter_row,
    delivery_row,
    event_row,
    last_rows_parameters,
    read_contact,
    reject_row,
    scores_of,
    trigger_row,
)
from schemas.model_file import load_model
from schemas.settings import Settings
from scorestream import Model

log = logging.getLogger(__name__)

COLUMNS: dict[str, tuple[str, ...]] = {
    "events": EVENT_COLUMNS,
    "triggers": TRIGGER_COLUMNS,
    "webhook_deliveries": DELIVERY_COLUMNS,
    "contacts": CONTACT_COLUMNS,
    "score_ledger": LEDGER_COLUMNS,
    "account_changes": ACCOUNT_COLUMNS,
    "sink_rejects": REJECT_COLUMNS,
}
MAX_RECORDS = 2000  # per poll
MAX_BATCH_BYTES = 64 << 20  # a batch is inserted at this many bytes of records, whatever its rows
RETRY_FIRST_S = 0.5
RETRY_MAX_S = 30.0


@dataclass
class SinkStats:
    """Counters since start (tests and logs read them)."""

    records: int = 0
    rows: dict[str, int] = field(default_factory=dict)  # table -> rows inserted
    inserts: int = 0
    failures: int = 0  # failed insert or lookup attempts (each retried)
    unreadable: int = 0  # records stored in sink_rejects
    skipped: int = 0  # records with no row: refused source records (stored from the dead-letter topic), tombstones
    commits: int = 0
    last_error: str | None = None


@dataclass
class Batch:
    """Rows read from one stream and not inserted yet, with the offsets they cover."""

    rows: dict[str, list[Row]] = field(default_factory=dict)
    changes: list[ContactChange] = field(default_factory=list)  # contacts: ledger rows are built at flush
    first: dict[TopicPartition, int] = field(default_factory=dict)
    next: dict[TopicPartition, int] = field(default_factory=dict)  # the offsets to commit
    since: float | None = None  # when the first record was added (monotonic)
    bytes: int = 0  # of the records read (a bound on memory besides the row count)
    done: set[str] = field(default_factory=set)  # tables inserted already (a retry inserts the others)
    attempts: int = 0
    retry_at: float = 0.0

    def add(self, table: str, row: Row) -> None:
        self.rows.setdefault(table, []).append(row)

    @property
    def size(self) -> int:
        return max([len(self.changes), *(len(r) for r in self.rows.values())])

    def full(self, rows: int) -> bool:
        return self.size >= rows or self.bytes >= MAX_BATCH_BYTES

    def covered(self) -> str:
        """The Kafka coordinates of the batch, for logs: ``topic[partition] first..last``."""
        return ", ".join(
            f"{tp.topic}[{tp.partition}] {self.first[tp]}..{self.next[tp] - 1}"
            for tp in sorted(self.next, key=lambda t: (t.topic, t.partition))
        )

    def token(self, table: str) -> str:
        """The insert deduplication token of ``table``'s rows: the same records, the same token."""
        ranges = ",".join(
            f"{tp.topic}:{tp.partition}:{self.first[tp]}-{self.next[tp]}"
            for tp in sorted(self.next, key=lambda t: (t.topic, t.partition))
        )
        return hashlib.sha256(f"{table}|{ranges}".encode()).hexdigest()[:32]


Add = Callable[[Batch, Any], None]


@dataclass
class Stream:
    """Topics whose records feed the same tables, batched together."""

    name: str
    topics: list[str]
    add: Add
    pending: Batch = field(default_factory=Batch)
    sealed: Batch | None = None  # a batch being inserted (or waiting to be retried)


class Sink:
    """The sink as an asyncio component: :meth:`start`, :meth:`stop`."""

    def __init__(
        self,
        settings: Settings,
        model: Model | None = None,
        store: Store | None = None,
        group_id: str | None = None,
        max_records: int = MAX_RECORDS,
    ) -> None:
        self.settings = settings
        self.model = model or load_model(settings.model)
        self.store = store or Store(clickhouse_url(settings))
        self.group_id = group_id or f"{settings.app_id}-sink"
        self.max_records = max_records
        self.batch_rows = settings.sink_batch_rows
        self.batch_s = settings.sink_batch_s
        self.stats = SinkStats()
        self.migrated = asyncio.Event()
        self.ledger = Ledger(self.model)
        self.purchases = PurchaseFacts()
        self.channels = settings.source_topics
        self.streams = [
            Stream("events", [*settings.source_topics, settings.topic_deadletter], self._add_event),
            Stream("triggers", [settings.topic_triggers], self._adder("triggers", trigger_row)),
            Stream("deliveries", [settings.deliveries_topic], self._adder("webhook_deliveries", delivery_row)),
            Stream("contacts", [settings.changelog_topic("contacts")], self._add_contact),
            Stream(
                "accounts",
                [settings.changelog_topic("accounts")],
                self._adder("account_changes", lambda r: account_row(r, self.model)),
            ),
        ]
        self._by_topic = {topic: s for s in self.streams for topic in s.topics}
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self._rows = ThreadPoolExecutor(max_workers=1, thread_name_prefix="analytics-rows")
        self._generation = 0  # counts drop_pending calls: records fetched before one are dropped

    @property
    def topics(self) -> list[str]:
        return list(self._by_topic)

    # --- records to rows ---------------------------------------------------------------------
    def _add_event(self, batch: Batch, record: Any) -> None:
        if record.topic == self.settings.topic_deadletter:
            batch.add("events", deadletter_row(record, self.channels))
            return
        row = event_row(record, self.channels[record.topic])
        if row is None:
            self.stats.skipped += 1  # refused: the worker dead-letters it, and it is stored from there
        else:
            batch.add("events", row)

    def _adder(self, table: str, build: Callable[[Any], Row | None]) -> Add:
        def add(batch: Batch, record: Any) -> None:
            row = build(record)
            if row is None:
                self.stats.skipped += 1
            else:
                batch.add(table, row)

        return add

    def _add_contact(self, batch: Batch, record: Any) -> None:
        change = read_contact(record, self.model, self.purchases)
        batch.add("contacts", change.snapshot)
        batch.changes.append(change)

    def _take_all(self, batches: dict[TopicPartition, list[Any]], generation: int) -> None:
        """Add fetched records to their streams' batches, unless a rebalance dropped the batches
        meanwhile (the records are read again from the committed offsets)."""
        for tp, records in batches.items():
            self._take(self._by_topic[tp.topic], tp, records, generation)

    def _take(self, stream: Stream, tp: TopicPartition, records: list[Any], generation: int) -> None:
        batch = stream.pending
        for record in records:
            if generation != self._generation:
                return
            try:
                stream.add(batch, record)
            except Unreadable as exc:
                self._reject(batch, record, exc)
            except Exception as exc:  # a bug must not stop the sink: the record goes to sink_rejects
                log.exception("sink: reading %s[%s] %s failed", record.topic, record.partition, record.offset)
                self._reject(batch, record, Unreadable("sink_error", repr(exc)))
        if records:
            batch.bytes += sum(len(r.value or b"") for r in records)
            batch.first.setdefault(tp, records[0].offset)
            batch.next[tp] = records[-1].offset + 1
            if batch.since is None:
                batch.since = time.monotonic()
            self.stats.records += len(records)

    def _reject(self, batch: Batch, record: Any, exc: Unreadable) -> None:
        log.warning(
            "sink: unreadable record %s[%s] %s: %s: %s",
            record.topic,
            record.partition,
            record.offset,
            exc.reason,
            exc.detail,
        )
        self.stats.unreadable += 1
        batch.add("sink_rejects", reject_row(record, exc))

    # --- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        """Start reading in the background (returns at once; ClickHouse and Kafka are waited for
        and retried there)."""
        self._stop.clear()
        self._task = asyncio.create_task(self._run(), name="analytics-sink")

    async def stop(self, timeout_s: float = 10.0) -> None:
        """Insert what is buffered (one attempt), commit, and stop; close the ClickHouse client."""
        self._stop.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout_s)
            except TimeoutError:
                log.warning("sink: not stopped in %.0f s; cancelled (uncommitted records are read again)", timeout_s)
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
            except Exception:
                log.exception("sink: stopped with an error")
            self._task = None
        await self.store.close()
        self._rows.shutdown(wait=True)

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    @property
    def idle(self) -> bool:
        """Nothing buffered or waiting to be retried."""
        return all(s.sealed is None and s.pending.since is None for s in self.streams)

    async def _sleep(self, seconds: float) -> None:
        """Wait ``seconds``, or less if the sink is stopped meanwhile."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)

    async def _run(self) -> None:
        delay = RETRY_FIRST_S
        while not self._stop.is_set() and not self.migrated.is_set():
            try:
                await migrate(self.store)
                self.migrated.set()
            except Exception as exc:
                self.stats.failures += 1
                self.stats.last_error = f"{type(exc).__name__}: {exc}"
                log.warning(
                    "sink: ClickHouse at %s not ready (%s); retrying in %.1f s",
                    redacted(self.store.url),
                    self.stats.last_error,
                    delay,
                )
                await self._sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)
        while not self._stop.is_set():
            consumer = AIOKafkaConsumer(
                bootstrap_servers=self.settings.kafka_bootstrap,
                group_id=self.group_id,
                client_id=self.group_id,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                fetch_max_wait_ms=200,
                max_partition_fetch_bytes=4 << 20,
                session_timeout_ms=int(self.settings.session_timeout_s * 1000),
                heartbeat_interval_ms=max(100, int(self.settings.session_timeout_s * 1000) // 4),
                metadata_max_age_ms=30_000,  # topics created after the sink started are found soon
            )
            try:
                await consumer.start()
                consumer.subscribe(self.topics, listener=_Revoked(self))
                await self._consume(consumer)
            except asyncio.CancelledError:
                raise
            except (KafkaError, OSError) as exc:
                self.stats.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("sink: Kafka error (%s); reconnecting in 1 s", self.stats.last_error)
                self.drop_pending()
                await self._sleep(1.0)
            except Exception as exc:  # a bug: start again from the committed offsets, not too often
                self.stats.last_error = f"{type(exc).__name__}: {exc}"
                log.exception("sink: unexpected error; starting again from the committed offsets in 5 s")
                self.drop_pending()
                await self._sleep(5.0)
            finally:
                await consumer.stop()

    def drop_pending(self) -> None:
        """Forget what is not committed (it is read again from the committed offsets)."""
        self._generation += 1
        for stream in self.streams:
            stream.pending = Batch()
            stream.sealed = None
        self.ledger.clear()

    # --- the loop ----------------------------------------------------------------------------
    async def _consume(self, consumer: AIOKafkaConsumer) -> None:
        while not self._stop.is_set():
            now = time.monotonic()
            assigned = consumer.assignment()
            if any(s.sealed is not None or s.pending.full(self.batch_rows) for s in self.streams):
                consumer.pause(*assigned)  # a batch waits for ClickHouse: hold the rest in Kafka
            else:
                consumer.resume(*assigned)
            batches = await consumer.getmany(timeout_ms=int(self._wait(now) * 1000), max_records=self.max_records)
            if batches:
                # decoding and scoring are CPU work: off the event loop (in embedded mode it is
                # the API's), so requests keep being served meanwhile
                await asyncio.get_running_loop().run_in_executor(self._rows, self._take_all, batches, self._generation)
            for stream in self.streams:
                if self._due(stream, time.monotonic()):
                    await self._flush(consumer, stream)
        for stream in self.streams:  # stopping: one last attempt at what is buffered
            for _ in range(2):
                if stream.sealed is not None or stream.pending.since is not None:
                    await self._flush(consumer, stream)

    def _due(self, stream: Stream, now: float) -> bool:
        if stream.sealed is not None:
            return now >= stream.sealed.retry_at
        batch = stream.pending
        return batch.since is not None and (batch.full(self.batch_rows) or now - batch.since >= self.batch_s)

    def _wait(self, now: float) -> float:
        """Seconds the next poll may wait: until the next batch is due (at most ``batch_s``)."""
        wait = self.batch_s
        for stream in self.streams:
            if stream.sealed is not None:
                wait = min(wait, stream.sealed.retry_at - now)
            elif stream.pending.since is not None:
                wait = min(wait, stream.pending.since + self.batch_s - now)
        return max(0.0, wait)

    async def _flush(self, consumer: AIOKafkaConsumer, stream: Stream) -> None:
        """Insert a stream's batch (table by table) and commit its offsets; on failure keep the
        batch for a retry with backoff."""
        if stream.sealed is None:
            stream.sealed, stream.pending = stream.pending, Batch()
        batch = stream.sealed
        try:
            if batch.changes:
                await self._ledger_rows(batch)
            for table, rows in batch.rows.items():
                if table in batch.done or not rows:
                    continue
                await self.store.insert(table, COLUMNS[table], rows, batch.token(table))
                batch.done.add(table)
                self.stats.rows[table] = self.stats.rows.get(table, 0) + len(rows)
                self.stats.inserts += 1
        except Exception as exc:
            batch.attempts += 1
            delay = min(RETRY_FIRST_S * 2 ** (batch.attempts - 1), RETRY_MAX_S)
            batch.retry_at = time.monotonic() + delay
            self.stats.failures += 1
            self.stats.last_error = f"{type(exc).__name__}: {exc}"
            log.warning(
                "sink: %s: insert failed (attempt %d: %s); holding %s, retrying in %.1f s",
                stream.name,
                batch.attempts,
                self.stats.last_error,
                batch.covered(),
                delay,
            )
            return
        if batch.attempts:
            log.info("sink: %s: inserted after %d failed attempts (%s)", stream.name, batch.attempts, batch.covered())
        if stream.sealed is batch:
            stream.sealed = None
        await self._commit(consumer, stream, batch)

    async def _ledger_rows(self, batch: Batch) -> None:
        """Build the batch's ledger rows (once: a retry inserts the same rows), after looking up
        the last row (before the batch) of the contacts the ledger does not remember."""
        unknown = self.ledger.unknown(batch.changes)
        if unknown:
            found = scores_of(await self.store.query(LAST_LEDGER_ROWS, last_rows_parameters(unknown)))
            self.ledger.prime(unknown, found)
        batch.rows.setdefault("score_ledger", []).extend(self.ledger.rows(batch.changes))
        batch.changes = []

    async def _commit(self, consumer: AIOKafkaConsumer, stream: Stream, batch: Batch) -> None:
        assigned = consumer.assignment()
        offsets = {tp: offset for tp, offset in batch.next.items() if tp in assigned}
        if not offsets:
            return
        try:
            await consumer.commit(offsets)
            self.stats.commits += 1
        except KafkaError as exc:
            # the rows are in ClickHouse; the records will be read again and deduplicated
            log.warning(
                "sink: %s: commit failed (%s: %s) for %s", stream.name, type(exc).__name__, exc, batch.covered()
            )


class _Revoked(ConsumerRebalanceListener):  # type: ignore[misc]
    """On a rebalance, drop what is buffered: every partition is read again from its committed
    offset (aiokafka revokes all partitions, then assigns)."""

    def __init__(self, sink: Sink) -> None:
        self.sink = sink

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        if any(s.sealed is not None or s.pending.since is not None for s in self.sink.streams):
            log.info("sink: partitions revoked; uncommitted records will be read again")
        self.sink.drop_pending()

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        log.info("sink: assigned %d partitions", len(list(assigned)))


def main(settings: Settings) -> None:
    """``scorestream sink``: run the sink until SIGTERM or SIGINT."""
    asyncio.run(_serve(settings))


async def _serve(settings: Settings) -> None:
    sink = Sink(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("sink: %s -> %s (group %s)", ", ".join(sink.topics), redacted(sink.store.url), sink.group_id)
    await sink.start()
    await stop.wait()
    await sink.stop()
