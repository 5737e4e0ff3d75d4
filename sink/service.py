"""The analytics sink: scorestream's topics into ClickHouse, batched, at least once, deduplicated.

What goes where (rows built by :mod:`analytics.rows`; tables by ``deploy/clickhouse/*.sql``)::

    events.web|email|store  --accepted-->  events            (refused ones: from the dead-letter topic)
    events.deadletter       --rejected-->  events            (reason, detail, source coordinates)
    triggers                ------------>  triggers  --MV-->  stage_transitions
    <app>.webhook-deliveries ----------->  webhook_deliveries (latest state per delivery)
    <ns>-contacts-changelog  ----------->  contacts (latest per contact), score_ledger (changes)
    <ns>-accounts-changelog  ----------->  account_changes
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
up when ClickHouse is back (``tests/e2e/test_sink_outage.py``: inserts failing for a while, some
of them after landing, end with every event archived exactly once). A batch that keeps failing
while ClickHouse answers a probe (``SELECT 1``) after :data:`SPLIT_AFTER` attempts holds a row
ClickHouse refuses: its rows are then inserted in halves, down to single rows, each part with a
token derived from the batch's; a row refused alone goes to ``sink_rejects`` (reason
``insert_refused``) and every other row is archived. Scoring (the worker) never waits for it. Decoding and scoring the
records (the ledger computes engagement and fit with the core) runs in a thread of its own too,
so the event loop, the API's in embedded mode, keeps serving requests meanwhile.

Privacy: the sink follows the privacy list (``kafka_io.privacy``; read to its end before the first
fetch) and archives nothing of a restricted person: a source or dead-letter row whose event (or,
for a dead letter, whatever identifiers its bytes and key show) the list restricts, and any
``contacts``, ``score_ledger``, ``triggers`` or ``webhook_deliveries`` row about a contact id it
holds as erased (a tombstone of an erased contact writes no "deleted" ledger row naming it). Each
is counted in ``scorestream_events_suppressed_total{door="sink"}`` and ``SinkStats.suppressed``.

A source record the contract refuses is on the dead-letter topic as well (the worker puts it
there, with the reason): the sink skips it on the source topic and stores it once, from the
dead-letter record. Both decide with the same ``schemas.events.decode`` over the same bytes and
record time, so they agree.

The changelogs are those of the models registry's *active* namespace ``<ns>`` (``schemas/registry.py``;
the app id until a ``scorestream promote``), scored with the model registered for it. The sink
reads the registry (``<app>.models``, :mod:`analytics.registry`) before it subscribes, then every
``registry_poll_s`` seconds. On a promotion it stops fetching, inserts and commits what it has
read, and subscribes to the new namespace's changelogs instead (the other topics are public and
stay). A changelog partition's commits carry ``<ns>@<promoted_ms>:<since>``: the promotion being
followed, and when (ClickHouse's clock) this sink started to follow it. A partition whose commit
is not of the current promotion is read from its beginning (a namespace followed for the first
time, or again after it was left), else from the commit (a restart). Across namespaces:

- ``score_ledger`` and ``account_changes`` rows of both namespaces stay, told apart by
  ``kafka_topic`` and ``model_version``; the ledger compares a record with the last row of *its*
  changelog; the insert deduplication tokens of changelog batches include ``<since>`` (a batch
  read again after a switch is inserted again, never dropped as a duplicate of an older one);
- ``contacts`` keeps one row per contact, the one with the highest changelog offset, and offsets
  do not compare across namespaces: once the sink has inserted every contacts partition it holds
  up to the end offsets it saw when they were assigned, it deletes the rows of those partitions
  inserted before ``<since>`` (the previous namespace's). Until then a contact may show either
  namespace's row.

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
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError

from analytics.client import Store, clickhouse_url, redacted
from analytics.migrations import migrate
from analytics.privacy import apply_retention
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
from kafka_io import clients
from kafka_io.privacy import PrivacyFollower
from kafka_io.registry import RegistryReader
from schemas.model_file import load_model
from schemas.privacy import archived_subjects, key_subjects, raw_subjects
from schemas.registry import Registry
from schemas.settings import Settings
from schemas.state import decode_batch
from schemas.times import at_of
from scorestream import Model
from scorestream.privacy import PrivacyList
from sink.errors import SinkError
from telemetry import metrics
from telemetry.logs import kafka_fields

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
SPLIT_AFTER = 3  # failed attempts of a batch, with ClickHouse answering, before its rows are inserted apart
REGISTRY_POLL_S = 5.0  # how often the models registry is read again (a promotion is followed within that)


@dataclass
class SinkStats:
    """Counters since start (tests and logs read them)."""

    records: int = 0
    rows: dict[str, int] = field(default_factory=dict)  # table -> rows inserted
    inserts: int = 0
    failures: int = 0  # failed insert or lookup attempts (each retried)
    unreadable: int = 0  # records stored in sink_rejects
    refused_rows: int = 0  # rows ClickHouse refused alone (stored in sink_rejects instead)
    skipped: int = 0  # records with no row: refused source records (stored from the dead-letter topic), tombstones
    suppressed: int = 0  # records not archived because the privacy list restricts their person
    commits: int = 0
    last_error: str | None = None
    namespace: str = ""  # the model namespace whose changelogs are archived (the registry's active one)
    switches: int = 0  # promotions followed since start


@dataclass
class RowBatch:
    """Rows read from one stream and not inserted yet, with the offsets they cover."""

    rows: dict[str, list[Row]] = field(default_factory=dict)
    changes: list[ContactChange] = field(default_factory=list)  # contacts: ledger rows are built at flush
    first: dict[TopicPartition, int] = field(default_factory=dict)
    next: dict[TopicPartition, int] = field(default_factory=dict)  # the offsets to commit
    since: float | None = None  # when the first record was added (monotonic)
    bytes: int = 0  # of the records read (a bound on memory besides the row count)
    done: set[str] = field(default_factory=set)  # tables inserted already (a retry inserts the others)
    privacy_seen: int = 0  # privacy records the sink had applied when this batch's first record was read
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

    def token(self, table: str, since: Mapping[TopicPartition, int] | None = None) -> str:
        """The insert deduplication token of ``table``'s rows: the same records, the same token
        (``since``: of changelog partitions, when the sink started following their namespace)."""
        ranges = ",".join(
            f"{tp.topic}:{tp.partition}:{self.first[tp]}-{self.next[tp]}"
            + (f"@{s}" if (s := (since or {}).get(tp)) else "")
            for tp in sorted(self.next, key=lambda t: (t.topic, t.partition))
        )
        return hashlib.sha256(f"{table}|{ranges}".encode()).hexdigest()[:32]


Add = Callable[[RowBatch, Any], None]


@dataclass
class Stream:
    """Topics whose records feed the same tables, batched together."""

    name: str
    topics: list[str]
    add: Add
    pending: RowBatch = field(default_factory=RowBatch)
    sealed: RowBatch | None = None  # a batch being inserted (or waiting to be retried)


class _ClickHouseDown(SinkError):
    """A ClickHouse call failed (the cause) where the sink cannot go on without it."""


@dataclass(frozen=True)
class Namespace:
    """The model namespace whose changelogs the sink archives, since which promotion, by which model."""

    name: str
    epoch_ms: int  # ``promoted_ms`` of the promotion that made it active (0: never promoted)
    model_version: str
    model: Model = field(compare=False)

    @property
    def marker(self) -> str:
        """What the commits of its changelog partitions carry (before ``:<since>``)."""
        return f"{self.name}@{self.epoch_ms}"

    def __str__(self) -> str:
        promoted = f"promoted {at_of(self.epoch_ms).isoformat()}" if self.epoch_ms else "never promoted"
        return f"{self.name} ({promoted}, model {self.model_version})"


def epoch_of(registry: Registry) -> int:
    """When the active namespace became active: the first of the last promotions to it (0: never
    promoted). Promoting the active namespace again changes nothing."""
    promotions = registry.promotions
    if not promotions:
        return 0
    first = len(promotions) - 1
    while first > 0 and promotions[first - 1].namespace == promotions[-1].namespace:
        first -= 1
    return promotions[first].promoted_ms


class Sink:
    """The sink as an asyncio component: :meth:`start`, :meth:`stop`."""

    def __init__(
        self,
        settings: Settings,
        model: Model | None = None,
        store: Store | None = None,
        group_id: str | None = None,
        max_records: int = MAX_RECORDS,
        registry_poll_s: float = REGISTRY_POLL_S,
        privacy: PrivacyList | None = None,
    ) -> None:
        self.settings = settings
        # who may not be archived: followed from the privacy topic (``privacy``: a list to keep current)
        self.privacy_follower = PrivacyFollower(settings, settings.privacy_topic, privacy)
        self.privacy = self.privacy_follower.privacy
        self.model = model or load_model(settings.model)
        self.configured = self.model  # the model of the default namespace while it has no registry record
        self.store = store or Store(clickhouse_url(settings))
        self.group_id = group_id or f"{settings.app_id}-sink"
        self.max_records = max_records
        self.batch_rows = settings.sink_batch_rows
        self.batch_s = settings.sink_batch_s
        self.stats = SinkStats()
        self.migrated = asyncio.Event()
        self.channels = settings.source_topics
        # until the registry is read: the default namespace
        self.namespace = Namespace(settings.app_id, 0, self.model.version, self.model)
        self.stats.namespace = self.namespace.name
        self.registry = RegistryReader(settings)
        self.registry_poll_s = registry_poll_s
        self._wanted = self.namespace  # the registry's active namespace (followed once drained)
        self._registry_read = False
        self._watcher: asyncio.Task[None] | None = None
        self._models: dict[str, Model] = {}  # registered models by version
        self._refused: set[str] = set()  # registered models that do not load (logged once)
        self.contacts = Stream("contacts", [], self._add_contact)
        self.accounts = Stream("accounts", [], self._adder("account_changes", lambda r: account_row(r, self.model)))
        self.streams = [
            Stream("events", [*settings.source_topics, settings.topic_deadletter], self._add_event),
            Stream("triggers", [settings.topic_triggers], self._adder("triggers", trigger_row, about=4)),
            Stream("deliveries", [settings.deliveries_topic], self._adder("webhook_deliveries", delivery_row, about=3)),
            self.contacts,
            self.accounts,
        ]
        self._by_topic: dict[str, Stream] = {}
        self._follow(self.namespace)
        # per changelog partition of the current assignment
        self._since: dict[TopicPartition, int] = {}  # when this namespace's promotion began to be followed
        self._catch_up: dict[TopicPartition, int] = {}  # contacts: end offset to reach before the cleanup
        self._undecided: set[TopicPartition] = set()  # assigned, start offset not chosen yet (paused)
        self._assignments = 0
        self._fresh_since = 0  # ``since`` of partitions read from their beginning (ClickHouse's clock)
        self._clean_at = 0.0  # the cleanup's next attempt (monotonic) after a failure
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self._rows = ThreadPoolExecutor(max_workers=1, thread_name_prefix="analytics-rows")
        self._generation = 0  # counts drop_pending calls: records fetched before one are dropped

    @property
    def topics(self) -> list[str]:
        return list(self._by_topic)

    # --- the model namespace -----------------------------------------------------------------
    def _follow(self, namespace: Namespace) -> None:
        """Archive ``namespace``'s changelogs, scored with its model, from now on (nothing read
        may be pending)."""
        self.namespace = namespace
        self.stats.namespace = namespace.name
        self.model = namespace.model
        self.ledger = Ledger(namespace.model)
        self.purchases = PurchaseFacts()
        topics = self.settings.in_namespace(namespace.name)
        self.contacts.topics = [topics.changelog_topic("contacts")]
        self.accounts.topics = [topics.changelog_topic("accounts")]
        self._by_topic = {topic: s for s in self.streams for topic in s.topics}

    def _consider(self, registry: Registry) -> None:
        """Follow the registry's active namespace (once drained), unless its model does not load."""
        name = registry.active
        model = self._model_of(registry, name)
        if model is not None:
            self._wanted = Namespace(name, epoch_of(registry), model.version, model)

    def _model_of(self, registry: Registry, name: str) -> Model | None:
        """The model registered for namespace ``name`` (the configured one when it has no record),
        or None when it does not load."""
        record = registry.namespaces.get(name)
        if record is None:
            return self.configured
        model = self._models.get(record.model_version)
        if model is None:
            try:
                model = self._models[record.model_version] = record.load_model()
            except Exception as exc:
                if record.model_version not in self._refused:
                    self._refused.add(record.model_version)
                    log.error(
                        "sink: model namespace %s is active but its model %s does not load (%s); "
                        "still archiving namespace %s",
                        name,
                        record.model_version,
                        exc,
                        self.namespace.name,
                    )
        return model

    async def _watch_registry(self) -> None:
        """Read the registry again every ``registry_poll_s`` seconds, for ever."""
        while True:
            await asyncio.sleep(self.registry_poll_s)
            try:
                self._consider(await self.registry.read())
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning(
                    "sink: models registry %s not read (%s: %s)", self.settings.models_topic, type(exc).__name__, exc
                )

    async def _clickhouse_now(self) -> int:
        """A millisecond after ClickHouse's clock now (``inserted_at``'s): rows inserted before
        are earlier, rows inserted from now on are not."""
        try:
            rows = await self.store.query("SELECT toUnixTimestamp64Milli(now64(3))")
        except Exception as exc:
            raise _ClickHouseDown from exc
        await asyncio.sleep(0.005)
        return int(rows[0][0]) + 1

    async def _since_of_fresh(self) -> int:
        """``since`` of the partitions read from their beginning: none before any promotion (the
        tables only ever held the default namespace), else ClickHouse's clock now."""
        return 0 if self.namespace.epoch_ms == 0 else await self._clickhouse_now()

    async def _switch(self, consumer: AIOKafkaConsumer) -> None:
        """Follow ``self._wanted`` (everything read is inserted and committed)."""
        old, new = self.namespace, self._wanted
        if old.name == new.name:  # a new model for the namespace, or promoted again: same changelogs
            self._follow(new)
            log.info("sink: model namespace %s is active", new)
            return
        self._follow(new)
        try:
            self._fresh_since = await self._since_of_fresh()
        except BaseException:
            self._follow(old)
            raise
        self.stats.switches += 1
        log.info(
            "sink: model namespace %s is active: archiving %s and %s instead of namespace %s's "
            "(each partition from its beginning unless already read since this promotion)",
            new,
            self.contacts.topics[0],
            self.accounts.topics[0],
            old.name,
        )
        consumer.subscribe(self.topics, listener=_Rebalance(self, consumer))

    # --- records to rows ---------------------------------------------------------------------
    def _add_event(self, batch: RowBatch, record: Any) -> None:
        if record.topic == self.settings.topic_deadletter:
            if not (self.privacy.entries and self._restricted_dead_letter(record)):
                batch.add("events", deadletter_row(record, self.channels))
            return
        row = event_row(record, self.channels[record.topic])
        if row is None:
            self.stats.skipped += 1  # refused: the worker dead-letters it, and it is stored from there
        elif not (self.privacy.entries and self._restricted_event(row, record)):
            batch.add("events", row)

    def _dropped(self, topic: str, decision: str | None) -> bool:
        """Count a record the privacy list keeps out of the archive (``decision`` not None)."""
        if decision is None:
            return False
        self.stats.suppressed += 1
        metrics.suppressed("sink", topic, decision)
        return True

    def _restricted_event(self, row: Row, record: Any) -> bool:
        """An accepted event's row, decided by the ids it holds (and the email of its traits)."""
        subjects = archived_subjects(row[_KIND_AT], row[_USER_AT], row[_ANONYMOUS_AT], row[_PREVIOUS_AT], record.value)
        return self._dropped(record.topic, self.privacy.decide_subjects(subjects, row[0], row[1]))

    def _restricted_dead_letter(self, record: Any) -> bool:
        """A dead letter, decided by what identifiers its bytes show (a Segment message, or an
        internal batch of the worker's) and its key, at its record time."""
        at = record.timestamp
        subjects = [*raw_subjects(record.value), *key_subjects(record.key)]
        events = []
        if record.value and record.value[:1] != b"{":
            try:
                for item in decode_batch(record.value).items:
                    subjects += key_subjects(item.key)
                    if item.env.event is not None:
                        events.append(item.env.event)
            except Exception:  # not an internal batch: the ids shown above are all there are
                log.debug("sink: dead letter %s[%s] %s is no batch", record.topic, record.partition, record.offset)
        decision = self.privacy.decide_subjects(subjects, at, at)
        for event in events:
            decision = decision or self.privacy.decide(event, at)
        return self._dropped(record.topic, decision)

    def _erased(self, contact_id: str, topic: str) -> bool:
        """A row about a contact id the privacy list holds as erased (never archived)."""
        return self._dropped(topic, "erased" if self.privacy.contact_erased(contact_id) else None)

    def _recheck(self, batch: RowBatch) -> None:
        """A batch about to be inserted whose rows were read before the latest privacy records:
        its rows are decided again, so a row read before its person's regulation arrived is not
        inserted after the regulation deleted the archive's rows."""
        if not self.privacy.entries or batch.privacy_seen == self.privacy_follower.applied:
            return
        privacy = self.privacy
        for table, rows in batch.rows.items():
            about = _ABOUT.get(table)
            if table == "events":
                kept = [row for row in rows if not self._restricted_row(row)]
            elif about is not None:
                at = _TOPIC_AT.get(table)
                kept = [
                    row
                    for row in rows
                    if not self._erased(row[about], str(row[at]) if at is not None else self.contacts.topics[0])
                ]
            else:
                continue
            rows[:] = kept
        # the ledger rows are built from the changes at insert (their snapshot rows were counted)
        batch.changes = [c for c in batch.changes if not privacy.contact_erased(c.contact_id)]

    def _restricted_row(self, row: Row) -> bool:
        """An ``events`` row (accepted or rejected), decided again by the ids it holds."""
        topic = str(row[_KAFKA_TOPIC_AT])
        raw = row[-1] if isinstance(row[-1], bytes) else None
        subjects = archived_subjects(row[_KIND_AT], row[_USER_AT], row[_ANONYMOUS_AT], row[_PREVIOUS_AT], raw)
        if row[_STATUS_AT] != "accepted":
            subjects += raw_subjects(raw)
        return self._dropped(topic, self.privacy.decide_subjects(subjects, row[0], row[1]))

    def _adder(self, table: str, build: Callable[[Any], Row | None], about: int | None = None) -> Add:
        """Rows of ``table`` built by ``build``; ``about``: the column of the contact id a row is
        about (not archived when erased)."""

        def add(batch: RowBatch, record: Any) -> None:
            row = build(record)
            if row is None:
                self.stats.skipped += 1
            elif about is None or not (self.privacy.entries and self._erased(row[about], record.topic)):
                batch.add(table, row)

        return add

    def _add_contact(self, batch: RowBatch, record: Any) -> None:
        if self.privacy.entries and record.key is not None and self._erased(record.key.decode(), record.topic):
            return  # neither its snapshot nor its ledger row (a tombstone's "deleted" one included)
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
                log.exception(
                    "sink: reading %s[%s] %s failed",
                    record.topic,
                    record.partition,
                    record.offset,
                    extra=kafka_fields(record.topic, record.partition, record.offset),
                )
                self._reject(batch, record, Unreadable("sink_error", repr(exc)))
        if records:
            batch.bytes += sum(len(r.value or b"") for r in records)
            batch.first.setdefault(tp, records[0].offset)
            batch.next[tp] = records[-1].offset + 1
            if batch.since is None:
                batch.since = time.monotonic()
                batch.privacy_seen = self.privacy_follower.applied
            self.stats.records += len(records)

    def _reject(self, batch: RowBatch, record: Any, exc: Unreadable) -> None:
        if self.privacy.entries and record.key and self._erased(record.key.decode("utf-8", "replace"), record.topic):
            return  # an unreadable record about an erased contact: its bytes are not kept either
        log.warning(
            "sink: unreadable record %s[%s] %s: %s: %s",
            record.topic,
            record.partition,
            record.offset,
            exc.reason,
            exc.detail,
            extra=kafka_fields(record.topic, record.partition, record.offset),
        )
        self.stats.unreadable += 1
        batch.add("sink_rejects", reject_row(record, exc))

    # --- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        """Start reading in the background (returns at once; ClickHouse and Kafka are waited for
        and retried there)."""
        self._stop.clear()
        self._registry_read = False  # read it again: start on the active namespace
        self.privacy_follower.start()
        metrics.scraped(metrics.SINK_REJECTS, lambda: [(self.stats.unreadable,)])
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
        await self.privacy_follower.stop()
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
                await apply_retention(self.store, self.settings)
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
        try:
            await self._privacy_read()
            await self._read_kafka()
        finally:
            await self.registry.close()

    async def _privacy_read(self) -> None:
        """Wait until the privacy list was read to its end (or the sink stops): nothing is archived
        before the sink knows whom not to archive."""
        if self.privacy_follower.ready:
            return
        waits = [asyncio.ensure_future(self.privacy_follower.caught_up()), asyncio.ensure_future(self._stop.wait())]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()

    async def _read_kafka(self) -> None:
        try:
            while not self._stop.is_set():
                await self._connect()
        finally:
            if self._watcher is not None:
                self._watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._watcher
                self._watcher = None

    async def _connect(self) -> None:
        """One consumer, until the sink stops or reading fails."""
        consumer = clients.consumer(
            self.settings,
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
            if not self._registry_read:  # start on the active namespace
                self._consider(await self.registry.read())
                self._follow(self._wanted)
                self._registry_read = True
                self._watcher = asyncio.create_task(self._watch_registry(), name="analytics-sink-registry")
                log.info(
                    "sink: model namespace %s is active: archiving %s and %s",
                    self.namespace,
                    self.contacts.topics[0],
                    self.accounts.topics[0],
                )
            self._fresh_since = await self._since_of_fresh()
            await consumer.start()
            consumer.subscribe(self.topics, listener=_Rebalance(self, consumer))
            await self._consume(consumer)
        except asyncio.CancelledError:
            raise
        except _ClickHouseDown as exc:
            self.stats.failures += 1
            self.stats.last_error = f"{type(exc.__cause__).__name__}: {exc.__cause__}"
            log.warning("sink: ClickHouse unavailable (%s); trying again in 1 s", self.stats.last_error)
            self.drop_pending()
            await self._sleep(1.0)
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
            stream.pending = RowBatch()
            stream.sealed = None
        self.ledger.clear()

    # --- the loop ----------------------------------------------------------------------------
    async def _consume(self, consumer: AIOKafkaConsumer) -> None:
        switch_at = 0.0  # after a failed switch: when to try again
        while not self._stop.is_set():
            now = time.monotonic()
            if self._undecided:
                await self._decide(consumer)
            switching = self._wanted != self.namespace
            assigned = consumer.assignment()
            if switching or any(s.sealed is not None or s.pending.full(self.batch_rows) for s in self.streams):
                # a batch waits for ClickHouse, or a promotion for what was read to be inserted:
                # hold the rest in Kafka
                consumer.pause(*assigned)
            else:
                consumer.resume(*(assigned - self._undecided))
            if switching and self.idle and now >= switch_at:
                try:
                    await self._switch(consumer)
                except _ClickHouseDown as exc:
                    self.stats.failures += 1
                    self.stats.last_error = f"{type(exc.__cause__).__name__}: {exc.__cause__}"
                    log.warning("sink: ClickHouse unavailable (%s); switching in 1 s", self.stats.last_error)
                    switch_at = now + 1.0
                continue
            batches = await consumer.getmany(
                timeout_ms=int(self._wait(now, switching) * 1000), max_records=self.max_records
            )
            if batches:
                _observe_lag(consumer, batches)
                # decoding and scoring are CPU work: off the event loop (in embedded mode it is
                # the API's), so requests keep being served meanwhile
                await asyncio.get_running_loop().run_in_executor(self._rows, self._take_all, batches, self._generation)
            for stream in self.streams:
                if self._due(stream, time.monotonic(), switching):
                    await self._flush(consumer, stream)
            if self._catch_up and self.contacts.sealed is None and self.contacts.pending.since is None:
                await self._clean(consumer)
        for stream in self.streams:  # stopping: one last attempt at what is buffered
            for _ in range(2):
                if stream.sealed is not None or stream.pending.since is not None:
                    await self._flush(consumer, stream)

    def _assigned(self, consumer: AIOKafkaConsumer, assigned: set[TopicPartition]) -> None:
        """A new assignment: hold the changelog partitions until :meth:`_decide` chose where
        each starts (called before the consumer can fetch from them)."""
        self._assignments += 1
        metrics.SINK_LAG.clear()  # the revoked partitions' lag is their next owner's
        self._since, self._catch_up = {}, {}
        changelogs = {*self.contacts.topics, *self.accounts.topics}
        self._undecided = {tp for tp in assigned if tp.topic in changelogs}
        if self._undecided:
            consumer.pause(*self._undecided)

    def _since_in(self, metadata: str) -> int | None:
        """``since`` of a changelog partition whose commit carries ``metadata``, when that commit is
        of the namespace and promotion followed now (else None: the partition is read again)."""
        marker = f"{self.namespace.marker}:"
        if metadata.startswith(marker) and metadata[len(marker) :].isdigit():
            return int(metadata[len(marker) :])
        if not metadata and self.namespace.epoch_ms == 0 and self.namespace.name == self.settings.app_id:
            return 0  # committed by a sink that did not know namespaces: the default one's
        return None

    async def _decide(self, consumer: AIOKafkaConsumer) -> None:
        """Where each newly assigned changelog partition starts: at its committed offset when that
        was committed while following the current promotion, else at its beginning."""
        assignments, tps = self._assignments, sorted(self._undecided, key=lambda t: (t.topic, t.partition))
        committed = await consumer._coordinator.fetch_committed_offsets(tps)  # committed() drops the metadata
        since = {tp: self._since_in(committed[tp].metadata) if tp in committed else None for tp in tps}
        fresh = [tp for tp in tps if since[tp] is None]
        contacts = [tp for tp in tps if tp.topic == self.contacts.topics[0]]
        ends = await consumer.end_offsets(contacts) if contacts else {}
        if assignments != self._assignments:
            return  # assigned again meanwhile: decided anew
        if fresh:
            await consumer.seek_to_beginning(*fresh)
            log.info(
                "sink: reading %s from the beginning (not read since model namespace %s became active)",
                ", ".join(f"{tp.topic}[{tp.partition}]" for tp in fresh),
                self.namespace,
            )
        for tp in tps:
            known = since[tp]
            self._since[tp] = self._fresh_since if known is None else known
        self._catch_up = {tp: ends[tp] for tp in contacts if self._since[tp] > 0}
        self._undecided = set()

    async def _clean(self, consumer: AIOKafkaConsumer) -> None:
        """Once the contacts partitions held are in ClickHouse up to the end offsets they had when
        assigned: delete their rows inserted before this namespace was followed (the previous
        namespace's; its offsets are not comparable with this one's)."""
        if time.monotonic() < self._clean_at:
            return
        for tp, end in self._catch_up.items():  # what was read is inserted: read up to the end?
            if tp not in consumer.assignment() or await consumer.position(tp) < end:
                return
        topic = self.contacts.topics[0]
        by_since: dict[int, list[int]] = {}
        for tp in self._catch_up:
            by_since.setdefault(self._since[tp], []).append(tp.partition)
        every = len(by_since) == 1 and set(next(iter(by_since.values()))) >= (
            consumer.partitions_for_topic(topic) or set()
        )
        try:
            for since, partitions in sorted(by_since.items()):
                where = f"inserted_at < fromUnixTimestamp64Milli({int(since)}, 'UTC')"
                if not every:  # another sink holds the other partitions (same count in every namespace)
                    where += f" AND kafka_partition IN ({', '.join(str(int(p)) for p in sorted(partitions))})"
                stale = int((await self.store.query(f"SELECT count() FROM contacts WHERE {where}"))[0][0])  # noqa: S608
                if stale:
                    await self.store.command(f"DELETE FROM contacts WHERE {where}")  # noqa: S608 (integers)
                log.info(
                    "sink: contacts: %s read up to its end offsets at assignment (partitions %s); "
                    "deleted %d rows archived before following namespace %s",
                    topic,
                    "all" if every else ", ".join(map(str, sorted(partitions))),
                    stale,
                    self.namespace.name,
                )
        except Exception as exc:
            self.stats.failures += 1
            self.stats.last_error = f"{type(exc).__name__}: {exc}"
            log.warning("sink: contacts: deleting the previous namespace's rows failed (%s); retrying in 5 s", exc)
            self._clean_at = time.monotonic() + 5.0
            return
        self._catch_up = {}

    def _due(self, stream: Stream, now: float, switching: bool = False) -> bool:
        """Whether to insert a stream's batch now (all of them, when switching namespaces)."""
        if stream.sealed is not None:
            return now >= stream.sealed.retry_at
        batch = stream.pending
        return batch.since is not None and (
            switching or batch.full(self.batch_rows) or now - batch.since >= self.batch_s
        )

    def _wait(self, now: float, switching: bool = False) -> float:
        """Seconds the next poll may wait: until the next batch is due (at most ``batch_s``)."""
        wait = self.batch_s
        for stream in self.streams:
            if stream.sealed is not None:
                wait = min(wait, stream.sealed.retry_at - now)
            elif stream.pending.since is not None:
                wait = min(wait, 0.0 if switching else stream.pending.since + self.batch_s - now)
        return max(0.0, wait)

    async def _flush(self, consumer: AIOKafkaConsumer, stream: Stream) -> None:
        """Insert a stream's batch (table by table) and commit its offsets; on failure keep the
        batch for a retry with backoff."""
        if stream.sealed is None:
            stream.sealed, stream.pending = stream.pending, RowBatch()
            self._recheck(stream.sealed)
        batch = stream.sealed
        try:
            if batch.changes:
                await self._ledger_rows(batch)
            for table, rows in list(batch.rows.items()):
                if table in batch.done or not rows:
                    continue
                token = batch.token(table, self._since)
                if batch.attempts >= SPLIT_AFTER and await self._reachable():
                    # ClickHouse answers but this insert keeps failing: some rows are refused
                    inserted = await self._insert_apart(table, rows, token)
                else:
                    started = time.perf_counter()
                    await self.store.insert(table, COLUMNS[table], rows, token)
                    metrics.SINK_DURATION.labels(table).observe(time.perf_counter() - started)
                    inserted = len(rows)
                batch.done.add(table)
                self.stats.rows[table] = self.stats.rows.get(table, 0) + inserted
                metrics.SINK_ROWS.labels(table).inc(inserted)
                self.stats.inserts += 1
        except Exception as exc:
            batch.attempts += 1
            delay = min(RETRY_FIRST_S * 2 ** (batch.attempts - 1), RETRY_MAX_S)
            batch.retry_at = time.monotonic() + delay
            self.stats.failures += 1
            metrics.SINK_ERRORS.labels(stream.name).inc()
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

    async def _reachable(self) -> bool:
        """Whether ClickHouse answers a query now (an outage, not the rows, failed the insert)."""
        try:
            await self.store.query("SELECT 1")
        except Exception:
            return False
        return True

    async def _insert_apart(self, table: str, rows: list[Row], token: str) -> int:
        """Insert ``rows`` in halves, down to single rows: a row ClickHouse refuses alone goes to
        ``sink_rejects`` with the reason, and the others are archived. Each part has a token of its
        own derived from the batch's (the same parts on a retry, so a part that landed is not
        inserted twice). Raises when ClickHouse stops answering (the batch is retried whole).
        Returns the rows inserted into ``table``."""
        columns = COLUMNS[table]
        inserted = 0
        todo = [(0, len(rows))]
        while todo:
            lo, hi = todo.pop()
            try:
                await self.store.insert(table, columns, rows[lo:hi], f"{token}:{lo}-{hi}")
                inserted += hi - lo
                continue
            except Exception as exc:
                if not await self._reachable():
                    raise
                if hi - lo > 1:
                    mid = (lo + hi) // 2
                    todo += [(mid, hi), (lo, mid)]
                    continue
                reject = refused_row(table, columns, rows[lo], exc)
            log.error(
                "sink: %s: a row ClickHouse refuses (%s[%s] %s) goes to sink_rejects: %s",
                table,
                reject[0],
                reject[1],
                reject[2],
                reject[-1],
            )
            await self.store.insert("sink_rejects", REJECT_COLUMNS, [reject], f"{token}:{lo}-{hi}:rejected")
            self.stats.unreadable += 1
            self.stats.refused_rows += 1
        return inserted

    async def _ledger_rows(self, batch: RowBatch) -> None:
        """Build the batch's ledger rows (once: a retry inserts the same rows), after looking up
        the last row (before the batch) of the contacts the ledger does not remember."""
        for topic in sorted({c.record[0] for c in batch.changes}):  # one: the namespace's changelog
            unknown = self.ledger.unknown(c for c in batch.changes if c.record[0] == topic)
            if unknown:
                found = scores_of(await self.store.query(LAST_LEDGER_ROWS, last_rows_parameters(unknown, topic)))
                self.ledger.prime(unknown, found)
        ledger = batch.rows.setdefault("score_ledger", [])
        for change in batch.changes:  # one change the ledger fails on costs that change only
            try:
                ledger.extend(self.ledger.rows([change]))
            except Exception as exc:
                topic, partition, offset, written = change.record
                log.exception("sink: score_ledger: %s[%s] %s failed", topic, partition, offset)
                self.stats.unreadable += 1
                reject = [
                    topic,
                    partition,
                    offset,
                    written,
                    change.contact_id.encode(),
                    b"",
                    "ledger_error",
                    repr(exc)[:1000],
                ]
                batch.rows.setdefault("sink_rejects", []).append(reject)
        batch.changes = []

    async def _commit(self, consumer: AIOKafkaConsumer, stream: Stream, batch: RowBatch) -> None:
        assigned = consumer.assignment()
        offsets = {tp: offset for tp, offset in batch.next.items() if tp in assigned}
        if not offsets:
            return
        marker = self.namespace.marker
        try:
            # a changelog partition's commit says which promotion it follows, and since when
            await consumer.commit(
                {tp: (o, f"{marker}:{self._since[tp]}") if tp in self._since else o for tp, o in offsets.items()}
            )
            self.stats.commits += 1
        except KafkaError as exc:
            # the rows are in ClickHouse; the records will be read again and deduplicated
            log.warning(
                "sink: %s: commit failed (%s: %s) for %s", stream.name, type(exc).__name__, exc, batch.covered()
            )


_KIND_AT, _USER_AT, _ANONYMOUS_AT, _PREVIOUS_AT, _STATUS_AT, _KAFKA_TOPIC_AT = (
    EVENT_COLUMNS.index(name) for name in ("type", "user_id", "anonymous_id", "previous_id", "status", "kafka_topic")
)
# the column of the contact id a row is about, by table (rows about an erased contact are not archived)
_ABOUT = {
    "contacts": CONTACT_COLUMNS.index("contact_id"),
    "score_ledger": LEDGER_COLUMNS.index("contact_id"),
    "triggers": TRIGGER_COLUMNS.index("contact_id"),
    "webhook_deliveries": DELIVERY_COLUMNS.index("key"),
}
# where a table's rows name their Kafka topic (for the count's label)
_TOPIC_AT = {
    "score_ledger": LEDGER_COLUMNS.index("kafka_topic"),
    "triggers": TRIGGER_COLUMNS.index("kafka_topic"),
    "webhook_deliveries": DELIVERY_COLUMNS.index("kafka_topic"),
}


def refused_row(table: str, columns: tuple[str, ...], row: Row, exc: BaseException) -> Row:
    """A ``sink_rejects`` row for a row ``table`` refuses: its Kafka coordinates when the table
    has them, the record's bytes when it keeps them (else the row as text), the reason."""
    values = dict(zip(columns, row, strict=False))

    def number(name: str) -> int:
        value = values.get(name)
        return value if isinstance(value, int) and value >= 0 else 0

    raw = values.get("raw")
    value = raw if isinstance(raw, bytes) else repr(row).encode(errors="replace")[:100_000]
    written = values.get("written_at", values.get("received_at", 0))
    return [
        str(values.get("kafka_topic") or table),
        number("kafka_partition"),
        number("kafka_offset"),
        written if isinstance(written, int) else 0,
        b"",
        value,
        "insert_refused",
        f"{table}: {type(exc).__name__}: {exc}"[:1000],
    ]


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    """On a rebalance, drop what is buffered: every partition is read again from its committed
    offset (aiokafka revokes all partitions, then assigns); the changelog partitions wait until the
    sink chose where each starts."""

    def __init__(self, sink: Sink, consumer: AIOKafkaConsumer) -> None:
        self.sink = sink
        self.consumer = consumer

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        if any(s.sealed is not None or s.pending.since is not None for s in self.sink.streams):
            log.info("sink: partitions revoked; uncommitted records will be read again")
        self.sink.drop_pending()

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        partitions = set(assigned)
        self.sink._assigned(self.consumer, partitions)  # before anything is fetched from them
        log.info("sink: assigned %d partitions", len(partitions))


def _observe_lag(consumer: AIOKafkaConsumer, batches: dict[TopicPartition, list[Any]]) -> None:
    """The fetched partitions' lag (highwater minus the next offset to read), once per fetch."""
    for tp, records in batches.items():
        if not records:
            continue
        try:
            high = consumer.highwater(tp)
        except Exception:  # revoked meanwhile: a metric never fails the sink
            log.debug("sink: no highwater for %s", tp, exc_info=True)
            continue
        metrics.fetched(metrics.SINK_LAG, tp.topic, tp.partition, high, records[-1].offset + 1)


def main(settings: Settings) -> None:
    """``scorestream sink``: run the sink until SIGTERM or SIGINT."""
    asyncio.run(_serve(settings))


async def _serve(settings: Settings) -> None:
    sink = Sink(settings)
    metrics.serve(settings, "sink")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info(
        "sink: -> %s (group %s); the changelogs of the active namespace of %s",
        redacted(sink.store.url),
        sink.group_id,
        settings.models_topic,
    )
    await sink.start()
    await stop.wait()
    await sink.stop()
