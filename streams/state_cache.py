"""The contacts stage's write-behind state cache (Kafka Streams' record-cache semantics).

Under live traffic a fetched batch holds a few dozen events and the busiest contacts appear in
nearly every one. Writing each changed state through at every batch (encode the whole state, a
RocksDB put, a changelog record through Faust's per-message produce path, a persisted-offset
put when it is acknowledged) made the stage's cost follow state size x batches. Here the decoded
states stay in memory and reads check them first; a changed (*dirty*) state is written at most
once per flush::

    contacts agent ── get / put ──► StateCache: dirty states by partition, clean ones in an LRU
                                       │ flush: at most every SCORESTREAM_STATE_FLUSH_MS, when more
                                       │ than SCORESTREAM_STATE_FLUSH_MAX_DIRTY are dirty, before
                                       │ every offset commit, on assignment and at stop
                                       ▼
                       per partition: encode each dirty state once, one RocksDB write batch, the
                       partition's changelog records queued together, one persisted-offset write
                       once they are all acknowledged; then the held input records are acked

At-least-once holds as before: the contacts agent holds each batch's carrier record (an extra
reference: Faust does not count it acknowledged) while effects of that batch are only in memory.
A flush queues the changelog records in the producer buffer and only then, in the same
synchronous step, releases the held records. Faust's commit computes the committable offsets
from the acknowledged records and then flushes the producer, which waits for every record queued
before it (:class:`streams.transport.SnapshotFlushBuffer`), before it commits: input offsets are
never committed before the changelog records of their effects are acknowledged. A SIGKILL loses
the dirty states and the uncommitted offsets together; the restarted worker re-reads those
records and folds them again onto the last flushed states (duplicates by message id). A
partition revocation drops its dirty states the same way (:meth:`StateCache.partitions_revoked`
says why it does not flush).

Deletions (a regulation's erase order, :mod:`streams.agents`) go the same way: :meth:`StateCache.delete`
leaves a dirty *tombstone* (reads see the contact absent at once, :meth:`StateCache.deleted`), and
the flush deletes the key from the partition's database in the same write batch and sends a
changelog record with no value (compaction then removes the contact), before the records that
carried the order are acknowledged. A redelivered order finds nothing (and is reported so).

The changelog's persisted offset follows :class:`streams.transport.ContiguousOffsetTable`'s rule
once per flushed group: the offsets of a group's records are applied in order, each one only
if it directly follows the stored offset, and the last one that does is stored.

Faust's own table write path needs a current event (the changelog partition is the event's);
a flush runs outside any event, so it writes the partition's database and sends the records
itself (:class:`RocksWriter`), keeping the store's key index coherent. Nothing else of Faust's
in-memory table view exists for a plain (unwindowed) table: no TTLs, no value cache.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable, MutableMapping
from typing import Any, Protocol

import rocksdict
from faust.types import TP

from scorestream import ContactState
from telemetry import metrics

log = logging.getLogger(__name__)

Sources = list[tuple[Any, Any]]  # (record, item) pairs whose effects a dirty state holds


class Writer(Protocol):
    """Where a partition's flushed states go."""

    def write(self, partition: int, items: list[tuple[str, bytes | None]]) -> None:
        """Write ``items`` (a value None deletes the key: a tombstone on the changelog)."""
        ...


class Acks(Protocol):
    """How an input record is held unacknowledged and released."""

    def hold(self, message: Any) -> None: ...

    def release(self, message: Any) -> None: ...


class FaustAcks:
    """Holds Faust messages with an extra reference; releasing it acks them (the last
    reference makes the offset committable, as a stream's own ack would)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    def hold(self, message: Any) -> None:
        message.incref()

    def release(self, message: Any) -> None:
        if message.ack(self.app.consumer):  # the final reference: count it out as Faust's stream would
            self.app.sensors.on_message_out(message.tp, message.offset, message)


class RocksWriter:
    """Writes a partition's states into a Faust RocksDB table: one write batch, then the
    changelog records queued together (key and value raw bytes, the table partition's own
    changelog partition), the persisted offset stored once per group (:class:`_SentGroup`)."""

    def __init__(self, table: Any) -> None:
        self.table = table

    def write(self, partition: int, items: list[tuple[str, bytes | None]]) -> None:
        store = self.table.data
        batch = rocksdict.WriteBatch(raw_mode=True)
        keyed = [(key.encode(), raw) for key, raw in items]
        for key, raw in keyed:
            if raw is None:
                batch.delete(key)
            else:
                batch.put(key, raw)
        store._db_for_partition(partition).write(batch)
        index = store._key_index  # where a read without a current event looks first
        for key, raw in keyed:
            if raw is None:
                index.pop(key, None)
            else:
                index[key] = partition
        topic = self.table.changelog_topic
        group = _SentGroup(self.table, len(keyed))
        for key, raw in keyed:
            topic.send_soon(
                key=key,
                value=raw,
                partition=partition,
                key_serializer="raw",
                value_serializer="raw",
                callback=group.sent,
            )


class _SentGroup:
    """The changelog records of one partition's flush: once all are acknowledged, the stored
    offset moves over those of them that directly follow it (in offset order), with one write.
    (One record per acknowledgement, as Faust does, cost a RocksDB put per record.) A group
    that never completes (a failed send crashes the producer) stores nothing: the next recovery
    reads more, never less."""

    __slots__ = ("left", "offsets", "table", "tp")

    def __init__(self, table: Any, count: int) -> None:
        self.table = table
        self.left = count
        self.offsets: list[int] = []
        self.tp: TP | None = None

    def sent(self, fut: Any) -> None:
        res = fut.result()
        self.tp = res.topic_partition
        self.offsets.append(res.offset)
        self.left -= 1
        if self.left == 0 and self.tp is not None:
            persist_contiguous(self.table.data, self.tp, self.offsets)


def persist_contiguous(store: Any, tp: TP, offsets: list[int]) -> int | None:
    """Store the last of ``offsets`` that, taken in order, each directly follow the stored
    offset (:class:`streams.transport.ContiguousOffsetTable`'s rule); returns what is stored."""
    persisted: int | None = store.persisted_offset(tp)
    start = -1 if persisted is None else persisted
    last = start
    for offset in sorted(offsets):
        if offset != last + 1:
            break
        last = offset
    if last == start:
        return persisted
    store.set_persisted_offset(tp, last)
    return last


class MappingWriter:
    """Writes states with ``table[key] = raw`` (a plain mapping: the unit tests' tables)."""

    def __init__(self, table: MutableMapping[str, bytes]) -> None:
        self.table = table

    def write(self, partition: int, items: list[tuple[str, bytes | None]]) -> None:
        for key, raw in items:
            if raw is None:
                self.table.pop(key, None)
            else:
                self.table[key] = raw


def writer_for(table: Any) -> Writer:
    """:class:`RocksWriter` for a Faust table on RocksDB, :class:`MappingWriter` for a plain mapping."""
    if hasattr(getattr(table, "data", None), "_db_for_partition"):
        return RocksWriter(table)
    if hasattr(table, "changelog_topic"):  # a Faust table on another store: writes need a current event
        raise TypeError("the contacts table must use the RocksDB store (store='rocksdb://')")
    return MappingWriter(table)


class _Dirty:
    """A changed state not written yet (``state`` None: a deletion, written as a tombstone)."""

    __slots__ = ("sources", "state")

    def __init__(self, state: ContactState | None, sources: Sources) -> None:
        self.state = state
        self.sources = sources


class StateCache:
    """Decoded contact states: dirty ones by partition until flushed, clean ones in an LRU.

    ``encode(key, state)`` gives the bytes to write (it may refuse one: ``TooLarge``);
    ``unwritable(key, sources, exc)`` is told of a state that could not be encoded at flush (its
    messages since the last flush are then parked by the caller, and the state dropped: the next
    read is the stored one). ``flush_ms`` 0 writes through: every :meth:`maybe_flush` flushes.
    """

    def __init__(
        self,
        writer: Writer,
        acks: Acks,
        encode: Callable[[str, ContactState], bytes],
        unwritable: Callable[[str, Sources, Exception], None],
        *,
        topic: str,
        flush_ms: int,
        max_dirty: int,
        max_clean: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.writer = writer
        self.acks = acks
        self.topic = topic  # the source topic whose partitions the states follow
        self.encode = encode
        self.unwritable = unwritable
        self.flush_s = flush_ms / 1000
        self.max_dirty = max_dirty
        self.max_clean = max_clean
        self.clock = clock
        self.dirty: dict[int, dict[str, _Dirty]] = {}
        self.dirty_count = 0
        self.dirty_since: float | None = None  # when the oldest dirty state became dirty
        self.clean: OrderedDict[str, tuple[int, ContactState]] = OrderedDict()
        self.held: list[Any] = []
        self.puts = 0  # states put (a batch that put one holds its record)
        self.flushes = 0  # flushes that wrote something
        self.written = 0  # states written (changelog records sent)
        self.write_through = False  # set by the caller while a reader of the table needs it fresh

    # --- the contacts agent ------------------------------------------------------------------

    def get(self, partition: int, key: str) -> ContactState | None:
        """The newest state of ``key`` this cache holds (None: read the table, unless
        :meth:`deleted`)."""
        dirty = self.dirty.get(partition)
        if dirty is not None:
            entry = dirty.get(key)
            if entry is not None:
                return entry.state
        hit = self.clean.get(key)
        if hit is not None and hit[0] == partition:
            self.clean.move_to_end(key)
            return hit[1]
        return None

    def deleted(self, partition: int, key: str) -> bool:
        """Whether ``key`` was deleted since the last flush (absent: do not read the table)."""
        dirty = self.dirty.get(partition)
        if dirty is None:
            return False
        entry = dirty.get(key)
        return entry is not None and entry.state is None

    def delete(self, partition: int, key: str, sources: Sources) -> None:
        """``key`` is gone (an erase order, carried by ``sources``): a tombstone at the next flush."""
        self._put(partition, key, None, sources)

    def put(self, partition: int, key: str, state: ContactState, sources: Sources) -> None:
        """``state`` is ``key``'s newest; ``sources`` the messages folded into it."""
        self._put(partition, key, state, sources)

    def _put(self, partition: int, key: str, state: ContactState | None, sources: Sources) -> None:
        dirty = self.dirty.get(partition)
        if dirty is None:
            dirty = self.dirty[partition] = {}
        self.puts += 1
        entry = dirty.get(key)
        if entry is None:
            self.clean.pop(key, None)
            dirty[key] = _Dirty(state, list(sources))
            self.dirty_count += 1
            if self.dirty_since is None:
                self.dirty_since = self.clock()
        else:
            entry.state = state
            entry.sources.extend(sources)

    def discard(self, partition: int, key: str) -> Sources:
        """Forget ``key`` (its fold failed: the cached object may be half changed); returns the
        messages folded into its dirty state since the last flush, which are lost with it."""
        self.clean.pop(key, None)
        dirty = self.dirty.get(partition)
        entry = dirty.pop(key, None) if dirty is not None else None
        if entry is None:
            return []
        self.dirty_count -= 1
        return entry.sources

    def hold(self, message: Any) -> None:
        """Keep ``message`` unacknowledged until the next flush (its batch left dirty states)."""
        self.acks.hold(message)
        self.held.append(message)

    def due(self) -> bool:
        if self.dirty_since is None:
            return bool(self.held)
        return (
            self.write_through or self.dirty_count > self.max_dirty or self.clock() - self.dirty_since >= self.flush_s
        )

    def maybe_flush(self) -> bool:
        """Flush if the interval has passed (or the cache is full); returns whether it did."""
        if not self.due():
            return False
        self.flush()
        return True

    # --- flushing -------------------------------------------------------------------------------

    def flush(self) -> None:
        """Write every dirty state (one write batch and one group of changelog records per
        partition), then release the held records. Synchronous: nothing runs in between."""
        started = time.perf_counter()
        dirty, self.dirty = self.dirty, {}
        self.dirty_count = 0
        self.dirty_since = None
        written = 0
        done: set[int] = set()
        try:
            for partition, entries in dirty.items():
                items = self._encoded(entries)
                if items:
                    self.writer.write(partition, items)
                    written += len(items)
                done.add(partition)
                for key, raw in items:
                    state = entries[key].state
                    if state is not None and raw is not None:
                        self._remember(partition, key, state)
        except BaseException:
            # a partition not written stays dirty, and the records stay held (retried next time)
            for partition, entries in dirty.items():
                if partition not in done:
                    self.dirty[partition] = entries
                    self.dirty_count += len(entries)
            self.dirty_since = self.clock() if self.dirty_count else None
            raise
        held, self.held = self.held, []
        for message in held:
            self.acks.release(message)
        if written:
            self.flushes += 1
            self.written += written
            metrics.state_flush(written, time.perf_counter() - started)

    def _encoded(self, entries: dict[str, _Dirty]) -> list[tuple[str, bytes | None]]:
        items: list[tuple[str, bytes | None]] = []
        refused: list[str] = []
        for key, entry in entries.items():
            if entry.state is None:  # a tombstone
                items.append((key, None))
                continue
            try:
                items.append((key, self.encode(key, entry.state)))
            except Exception as exc:  # one state that cannot be written costs only its own messages
                refused.append(key)
                self.unwritable(key, entry.sources, exc)
        for key in refused:
            del entries[key]
        return items

    def _remember(self, partition: int, key: str, state: ContactState) -> None:
        if self.max_clean <= 0:
            return
        self.clean[key] = (partition, state)
        self.clean.move_to_end(key)
        while len(self.clean) > self.max_clean:
            self.clean.popitem(last=False)

    def flush_quietly(self, why: str) -> None:
        """:meth:`flush` for Faust's hooks (a commit, a rebalance, the stop): a failure is logged
        and the held records stay unacknowledged (their offsets are not committed)."""
        try:
            self.flush()
        except Exception:
            log.exception("state cache: flush before %s failed; %d states still dirty", why, self.dirty_count)

    # --- Faust's hooks (streams.transport.ScorestreamApp.add_state_flusher) ---------------------

    def before_commit(self) -> None:
        """Faust is about to compute the committable offsets: release what a flush can."""
        if self.dirty_count or self.held:
            self.flush_quietly("commit")

    def partitions_revoked(self, revoked: set[TP]) -> None:
        """Drop the revoked partitions' states, written or not, and let their held records go.

        Not a flush: Faust forgets the acknowledgements of revoked partitions right after this
        (before its own revocation commit), so nothing is committed for them whatever is written
        now; their records are read again from the committed offsets, by this worker or their
        next owner, and fold onto the last written states. A flush here would also be the worst
        moment to write: a worker learns of a revocation late when it lost its group membership
        (a broker outage), while the new owner already writes the same contacts; its unwritten
        states would land on the changelog after the new owner's newer ones (the known issue of
        ``ContiguousOffsetTable``, streams/transport.py). The held records are released so that
        Faust's wait for unacknowledged records ends; their acknowledgements are discarded."""
        partitions = {tp.partition for tp in revoked if tp.topic == self.topic}
        for partition in partitions:
            lost = self.dirty.pop(partition, None)
            if lost:
                self.dirty_count -= len(lost)
                log.info("state cache: %d unwritten states of revoked partition %d dropped", len(lost), partition)
        if not self.dirty_count:
            self.dirty_since = None
        keep = []
        for message in self.held:
            if message.partition in partitions:
                self.acks.release(message)
            else:
                keep.append(message)
        self.held = keep
        for key in [k for k, (p, _) in self.clean.items() if p in partitions]:
            del self.clean[key]

    def partitions_assigned(self) -> None:
        """Recovery may rewrite any assigned partition: cached clean states are dropped."""
        self.flush_quietly("assignment")
        self.clean.clear()

    def stopping(self) -> None:
        """The app stops: write everything before Faust's last commit and the tables' close."""
        self.flush_quietly("stop")
