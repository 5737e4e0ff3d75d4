"""The contacts stage's write-behind state cache (``streams.state_cache``), without a broker.

Dirty states coalesce until a flush; a flush writes each partition once and only then releases
the records it held; the interval, the bound of dirty states, commits, revocations and the stop
trigger it; a state that cannot be written costs only its own messages. The same on the real
broker (fewer changelog records than updates, nothing lost to a SIGKILL between flushes) is
``tests/e2e/test_state_cache.py``.
"""

from __future__ import annotations

from typing import Any

import pytest
import rocksdict
from faust.types import TP

from schemas.state import decode_state, encode
from scorestream import ContactState, apply_events
from streams.state_cache import MappingWriter, RocksWriter, StateCache, persist_contiguous, writer_for
from streams.transport import TooLarge
from tests.factories import DEFAULT_MODEL, make_event

TOPIC = "t.contacts"


def _state(user: str, opens: int) -> ContactState:
    state = apply_events(None, user, [make_event(user_id=user) for _ in range(opens)], DEFAULT_MODEL)
    assert state is not None
    return state


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Writes:
    """A writer that records each partition write; the acks that record holds and releases,
    in one log, so their order shows."""

    def __init__(self) -> None:
        self.log: list[tuple[str, Any]] = []
        self.table: dict[str, bytes] = {}
        self.fail = False

    def write(self, partition: int, items: list[tuple[str, bytes | None]]) -> None:
        if self.fail:
            raise OSError("disk full")
        self.log.append(("write", (partition, [k for k, _ in items])))
        for key, raw in items:
            if raw is None:
                self.table.pop(key, None)
            else:
                self.table[key] = raw

    def hold(self, message: Any) -> None:
        self.log.append(("hold", message))

    def release(self, message: Any) -> None:
        self.log.append(("release", message))

    def writes(self) -> list[tuple[int, list[str]]]:
        return [what for kind, what in self.log if kind == "write"]

    def released(self) -> list[Any]:
        return [what for kind, what in self.log if kind == "release"]


class Msg:
    def __init__(self, partition: int, offset: int) -> None:
        self.partition = partition
        self.offset = offset

    def __repr__(self) -> str:
        return f"Msg({self.partition}, {self.offset})"


def cache(
    writes: Writes, clock: Clock, flush_ms: int = 100, max_dirty: int = 100, max_clean: int = 10, **kw: Any
) -> StateCache:
    unwritable = kw.pop("unwritable", lambda key, sources, exc: pytest.fail(f"{key} unwritable: {exc}"))
    return StateCache(
        writes,
        writes,
        kw.pop("encode", lambda key, state: encode(state)),
        unwritable,
        topic=TOPIC,
        flush_ms=flush_ms,
        max_dirty=max_dirty,
        max_clean=max_clean,
        clock=clock,
    )


def test_updates_coalesce_and_one_flush_writes_each_partition_once_then_releases_the_records() -> None:
    writes, clock = Writes(), Clock()
    c = cache(writes, clock)
    versions = [_state("u1", n) for n in range(1, 6)]
    for n, version in enumerate(versions, 1):  # five batches change u1; u2 (partition 1) once
        c.put(0, "u1", version, [("rec", n)])
        c.hold(Msg(0, n))
        clock.now += 0.01
    c.put(1, "u2", _state("u2", 1), [])
    assert c.get(0, "u1") is versions[-1] and c.dirty_count == 2
    assert not c.maybe_flush() and writes.writes() == []  # 50 ms < 100 ms: nothing written yet

    clock.now = 0.1
    assert c.maybe_flush()
    assert sorted(writes.writes()) == [(0, ["u1"]), (1, ["u2"])]  # one write per partition, u1 once
    assert decode_state(writes.table["u1"]) == versions[-1]
    kinds = [kind for kind, _ in writes.log]
    assert kinds == ["hold"] * 5 + ["write", "write"] + ["release"] * 5  # released only after the writes
    assert [m.offset for m in writes.released()] == [1, 2, 3, 4, 5]
    assert c.dirty_count == 0 and c.held == [] and (c.flushes, c.written) == (1, 2)

    # written states stay readable (clean), the next flush has nothing to write
    assert c.get(0, "u1") is versions[-1] and c.get(1, "u1") is None  # another partition: not this one's
    assert not c.maybe_flush()


def test_the_interval_counts_from_the_oldest_dirty_state_and_zero_writes_through() -> None:
    writes, clock = Writes(), Clock()
    c = cache(writes, clock, flush_ms=100)
    c.put(0, "a", _state("a", 1), [])
    clock.now = 0.09
    c.put(0, "b", _state("b", 1), [])  # does not restart the interval
    assert not c.due()
    clock.now = 0.1
    assert c.due()

    through = cache(Writes(), clock, flush_ms=0)
    through.put(0, "a", _state("a", 1), [])
    assert through.maybe_flush()


def test_more_dirty_states_than_the_bound_flush_at_once() -> None:
    writes, clock = Writes(), Clock()
    c = cache(writes, clock, max_dirty=3)
    for key in "abc":
        c.put(0, key, _state(key, 1), [])
    assert not c.due()
    c.put(0, "a", _state("a", 2), [])  # an update of a dirty state does not count twice
    assert not c.due()
    c.put(0, "d", _state("d", 1), [])
    assert c.maybe_flush() and writes.writes() == [(0, ["a", "b", "c", "d"])]


def test_commits_assignments_and_the_stop_flush_first() -> None:
    writes, clock = Writes(), Clock()
    c = cache(writes, clock)
    c.put(0, "a", _state("a", 1), [])
    c.hold(Msg(0, 7))
    c.before_commit()  # not due, but a commit is about to compute its offsets
    assert writes.writes() == [(0, ["a"])] and [m.offset for m in writes.released()] == [7]

    c.put(1, "c", _state("c", 2), [])
    c.partitions_assigned()
    assert writes.writes()[-1] == (1, ["c"]) and not c.clean  # recovery may have rewritten anything

    c.put(1, "d", _state("d", 1), [])
    c.stopping()
    assert writes.writes()[-1] == (1, ["d"])


def test_a_revocation_drops_the_partitions_states_unwritten_and_lets_their_records_go() -> None:
    writes, clock = Writes(), Clock()
    c = cache(writes, clock)
    c.put(0, "a", _state("a", 1), [])
    c.flush()  # a: written, clean
    c.put(0, "b", _state("b", 1), [])
    c.put(1, "c", _state("c", 1), [])
    c.hold(Msg(0, 1))
    c.hold(Msg(1, 1))
    c.partitions_revoked({TP(TOPIC, 0), TP("other", 1)})
    assert writes.writes() == [(0, ["a"])]  # nothing written at the revocation
    # Faust forgets partition 0's acknowledgements next: its records are read again
    assert [m.partition for m in writes.released()] == [0] and [m.partition for m in c.held] == [1]
    assert c.get(0, "a") is None and c.get(0, "b") is None  # partition 0's states: forgotten
    assert c.get(1, "c") is not None and c.dirty_count == 1  # partition 1 of the contacts topic stays
    c.flush()
    assert writes.writes()[-1] == (1, ["c"])


def test_a_failed_write_keeps_the_states_dirty_and_the_records_held() -> None:
    writes, clock = Writes(), Clock()
    c = cache(writes, clock)
    c.put(0, "a", _state("a", 1), [])
    c.hold(Msg(0, 1))
    writes.fail = True
    c.before_commit()  # logged, not raised: the commit goes on without these offsets
    assert writes.released() == [] and c.dirty_count == 1 and len(c.held) == 1
    newer = _state("a", 2)
    c.put(0, "a", newer, [])
    writes.fail = False
    c.flush()
    assert decode_state(writes.table["a"]) == newer and [m.offset for m in writes.released()] == [1]


def test_a_state_that_cannot_be_written_parks_its_messages_and_the_others_are_written() -> None:
    writes, clock = Writes(), Clock()
    refused: list[tuple[str, list[Any], str]] = []

    def encode_state(key: str, state: ContactState) -> bytes:
        if key == "big":
            raise TooLarge("too large")
        return encode(state)

    c = cache(writes, clock, encode=encode_state, unwritable=lambda k, s, e: refused.append((k, s, type(e).__name__)))
    c.put(0, "big", _state("big", 1), [("r1", "i1")])
    c.put(0, "big", _state("big", 2), [("r2", "i2")])
    c.put(0, "ok", _state("ok", 1), [])
    c.flush()
    assert refused == [("big", [("r1", "i1"), ("r2", "i2")], "TooLarge")]  # every message since the last flush
    assert list(writes.table) == ["ok"] and c.get(0, "big") is None  # the next read is the stored state


def test_a_discarded_state_returns_its_messages_since_the_last_flush() -> None:
    writes, clock = Writes(), Clock()
    c = cache(writes, clock)
    c.put(0, "a", _state("a", 1), [("r1", "i1")])
    c.flush()
    c.put(0, "a", _state("a", 2), [("r2", "i2")])
    c.put(0, "a", _state("a", 3), [("r3", "i3")])
    assert c.discard(0, "a") == [("r2", "i2"), ("r3", "i3")]
    assert c.get(0, "a") is None and c.dirty_count == 0 and c.discard(0, "a") == []


def test_clean_states_are_least_recently_used_out_and_zero_keeps_none() -> None:
    writes, clock = Writes(), Clock()
    c = cache(writes, clock, max_clean=2)
    for key in "abc":
        c.put(0, key, _state(key, 1), [])
    c.flush()
    assert list(c.clean) == ["b", "c"]
    assert c.get(0, "b") is not None  # b is now the most recent
    c.put(0, "d", _state("d", 1), [])
    c.flush()
    assert list(c.clean) == ["b", "d"]

    off = cache(Writes(), clock, max_clean=0)
    off.put(0, "a", _state("a", 1), [])
    assert off.get(0, "a") is not None  # dirty states are always kept
    off.flush()
    assert off.get(0, "a") is None and not off.clean


class Store:
    def __init__(self, persisted: int | None) -> None:
        self.persisted = persisted
        self.puts = 0

    def persisted_offset(self, tp: TP) -> int | None:
        return self.persisted

    def set_persisted_offset(self, tp: TP, offset: int) -> None:
        self.persisted = offset
        self.puts += 1


def test_the_persisted_offset_moves_once_per_group_and_only_over_contiguous_offsets() -> None:
    tp = TP("t-contacts-changelog", 0)
    store = Store(9)
    assert persist_contiguous(store, tp, [12, 10, 11]) == 12 and store.puts == 1
    # another writer's records between: the offset stays before them (the next recovery reads them)
    assert persist_contiguous(store, tp, [13, 15, 16]) == 13
    assert persist_contiguous(store, tp, [20, 21]) == 13 and store.puts == 2
    fresh = Store(None)
    assert persist_contiguous(fresh, tp, [0, 1]) == 1
    assert persist_contiguous(Store(None), tp, [5]) is None


def test_a_plain_mapping_gets_a_mapping_writer_and_a_faust_table_off_rocksdb_is_refused() -> None:
    table: dict[str, bytes] = {}
    writer = writer_for(table)
    assert isinstance(writer, MappingWriter)
    writer.write(0, [("a", b"1")])
    assert table == {"a": b"1"}

    class MemoryTable(dict[str, bytes]):
        changelog_topic = "t-changelog"
        data: dict[str, bytes] = {}

    with pytest.raises(TypeError, match="RocksDB"):
        writer_for(MemoryTable())


class Result:
    def __init__(self, partition: int, offset: int) -> None:
        self.topic_partition = TP("t-contacts-changelog", partition)
        self.offset = offset


class Sent:
    def __init__(self, result: Result) -> None:
        self._result = result

    def result(self) -> Result:
        return self._result


class Changelog:
    """The changelog topic: what is sent, acknowledged later with consecutive offsets."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self.next_offset = 40

    def send_soon(self, **kwargs: Any) -> None:
        self.sent.append(kwargs)

    def acknowledge(self) -> None:
        for record in self.sent:
            record["callback"](Sent(Result(record["partition"], self.next_offset)))
            self.next_offset += 1
        self.sent.clear()


class RocksStore:
    """The parts of Faust's RocksDB store the writer uses, over real RocksDB databases."""

    offset_key = b"__faust\x00offset__"

    def __init__(self, path: Any) -> None:
        self.path = path
        self.dbs: dict[int, Any] = {}
        self._key_index: dict[bytes, int] = {}
        self.offset_writes = 0

    def _db_for_partition(self, partition: int) -> Any:
        if partition not in self.dbs:
            self.dbs[partition] = rocksdict.Rdict(
                str(self.path / f"p{partition}"), options=rocksdict.Options(raw_mode=True)
            )
        return self.dbs[partition]

    def persisted_offset(self, tp: TP) -> int | None:
        raw = self._db_for_partition(tp.partition).get(self.offset_key)
        return None if raw is None else int(raw)

    def set_persisted_offset(self, tp: TP, offset: int) -> None:
        self.offset_writes += 1
        self._db_for_partition(tp.partition).put(self.offset_key, str(offset).encode())


class RocksTable:
    def __init__(self, path: Any) -> None:
        self.data = RocksStore(path)
        self.changelog_topic = Changelog()


def test_the_rocksdb_writer_writes_one_batch_sends_each_state_and_stores_the_offset_once(tmp_path: Any) -> None:
    table = RocksTable(tmp_path)
    writer = writer_for(table)
    assert isinstance(writer, RocksWriter)
    table.data.set_persisted_offset(TP("t-contacts-changelog", 1), 39)
    writer.write(1, [("u-1", b"one"), ("u-2", b"two")])

    db = table.data._db_for_partition(1)
    assert db[b"u-1"] == b"one" and db[b"u-2"] == b"two"  # in RocksDB before anything is acknowledged
    assert table.data._key_index == {b"u-1": 1, b"u-2": 1}  # where Faust's reads without an event look
    sent = table.changelog_topic.sent
    assert [(s["key"], s["value"], s["partition"]) for s in sent] == [(b"u-1", b"one", 1), (b"u-2", b"two", 1)]
    assert {(s["key_serializer"], s["value_serializer"]) for s in sent} == {("raw", "raw")}

    table.changelog_topic.acknowledge()  # offsets 40, 41: they follow the stored 39
    assert table.data.persisted_offset(TP("t-contacts-changelog", 1)) == 41
    assert table.data.offset_writes == 2  # the test's own, then one for the group (not one per record)


# --- deletions (a regulation's erase order) ------------------------------------------------------


def test_a_deletion_reads_absent_at_once_and_the_flush_writes_a_tombstone_before_releasing() -> None:
    writes, clock = Writes(), Clock()
    c = cache(writes, clock)
    c.put(0, "u1", _state("u1", 2), [("rec", 1)])
    c.hold(Msg(0, 1))
    c.flush()
    assert "u1" in writes.table and c.get(0, "u1") is not None  # written, and clean in the cache
    assert not c.deleted(0, "u1")

    c.delete(0, "u1", [("rec", 2)])
    c.hold(Msg(0, 2))
    assert c.get(0, "u1") is None and c.deleted(0, "u1")  # absent at once: the table is not read
    assert not c.deleted(1, "u1")  # another partition's key is not this one
    clock.now = 0.1
    assert c.maybe_flush()
    assert "u1" not in writes.table  # the writer was given a tombstone (value None)
    kinds = [kind for kind, _ in writes.log]
    assert kinds[-2:] == ["write", "release"]  # the tombstone before the record that carried the order
    assert writes.writes()[-1] == (0, ["u1"])
    assert c.get(0, "u1") is None and not c.deleted(0, "u1") and "u1" not in c.clean


def test_a_state_put_after_a_deletion_replaces_it_and_a_deletion_replaces_a_dirty_state() -> None:
    writes, clock = Writes(), Clock()
    c = cache(writes, clock)
    c.put(0, "u1", _state("u1", 1), [])
    c.delete(0, "u1", [])  # dirty, never written: the tombstone wins
    assert c.dirty_count == 1 and c.deleted(0, "u1")
    c.flush()
    assert "u1" not in writes.table
    c.delete(0, "u2", [])
    fresh = _state("u2", 1)
    c.put(0, "u2", fresh, [])  # new collection after the erasure: a new contact
    assert c.get(0, "u2") is fresh and not c.deleted(0, "u2")
    c.flush()
    assert decode_state(writes.table["u2"]) == fresh


def test_the_mapping_writer_deletes() -> None:
    table: dict[str, bytes] = {"a": b"1", "b": b"2"}
    MappingWriter(table).write(0, [("a", None), ("c", None), ("b", b"3")])
    assert table == {"b": b"3"}


def test_the_rocksdb_writer_deletes_in_the_batch_and_sends_a_tombstone(tmp_path: Any) -> None:
    table = RocksTable(tmp_path)
    writer = writer_for(table)
    writer.write(1, [("u-1", b"one"), ("u-2", b"two")])
    writer.write(1, [("u-1", None)])
    db = table.data._db_for_partition(1)
    assert db.get(b"u-1") is None and db[b"u-2"] == b"two"
    assert table.data._key_index == {b"u-2": 1}  # a read without an event does not look for it
    last = table.changelog_topic.sent[-1]
    assert (last["key"], last["value"], last["partition"]) == (b"u-1", None, 1)
