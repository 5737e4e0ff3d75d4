"""The assignment-time restore's pure parts and its hook (``streams.restore``), without a broker.

The broker-backed restore is in tests/e2e/test_restore.py; two workers holding their share in
tests/e2e/test_share.py."""

from __future__ import annotations

import asyncio
import inspect
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka import TopicPartition
from faust.stores.rocksdb import RocksDBOptions
from faust.types import TP

from streams import restore
from streams.restore import OFFSET_KEY, ShareRestore, due, install, plan, restore_partitions, start_offsets

C = "app-contacts-changelog"
I = "app-identity-changelog"  # noqa: E741


def tp(topic: str, p: int) -> TopicPartition:
    return TopicPartition(topic, p)


# --- plan: which partitions a rebalance restores, keeps, releases ----------------------------------


def test_a_first_assignment_restores_every_assigned_changelog_partition_and_nothing_else() -> None:
    assigned = {TP("events.web", 0), TP(C, 0), TP(C, 2), TP(I, 0), TP("app.contacts", 0)}
    share = plan(assigned, {C, I}, settled=(), released={}, on_disk=(), now=5.0)
    assert share.restore == [tp(C, 0), tp(C, 2), tp(I, 0)]
    assert all(isinstance(t, TopicPartition) for t in share.restore), "aiokafka seeks only its own TopicPartition"
    assert share.settled == frozenset()
    assert share.released == {}


def test_partitions_kept_across_a_rebalance_are_not_restored_again_and_new_ones_are() -> None:
    settled = {tp(C, 0), tp(C, 1)}
    share = plan({TP(C, 0), TP(C, 3)}, {C}, settled, released={}, on_disk=(), now=7.0)
    assert share.restore == [tp(C, 3)]
    assert share.settled == {tp(C, 0)}
    assert share.released == {tp(C, 1): 7.0}, "the revoked partition is released now"


def test_a_partition_reassigned_while_released_is_restored_and_no_longer_released() -> None:
    share = plan({TP(C, 1)}, {C}, settled=(), released={tp(C, 1): 1.0, tp(C, 2): 2.0}, on_disk=(), now=9.0)
    assert share.restore == [tp(C, 1)], "only what was written since it left is replayed (its stored offset)"
    assert share.released == {tp(C, 2): 2.0}, "released keeps its first time"


def test_databases_on_disk_not_assigned_count_as_released_from_the_first_assignment() -> None:
    on_disk = [tp(C, 0), tp(C, 1), tp(C, 2), tp(C, 3)]
    share = plan({TP(C, 0), TP(C, 2)}, {C}, settled=(), released={tp(C, 3): 1.0}, on_disk=on_disk, now=4.0)
    assert share.released == {tp(C, 1): 4.0, tp(C, 3): 1.0}


def test_an_empty_assignment_releases_everything_held() -> None:
    share = plan(set(), {C}, settled={tp(C, 0)}, released={}, on_disk=[tp(C, 0)], now=3.0)
    assert (share.restore, share.settled, share.released) == ([], frozenset(), {tp(C, 0): 3.0})


def test_due_after_the_keep_time() -> None:
    released = {tp(C, 0): 0.0, tp(C, 1): 50.0}
    assert due(released, keep_s=100, now=149.0) == [tp(C, 0)]
    assert due(released, keep_s=100, now=150.0) == [tp(C, 0), tp(C, 1)]
    assert due(released, keep_s=0, now=50.0) == [tp(C, 0), tp(C, 1)]


# --- the restore loop, with a consumer standing in for the broker ----------------------------------


@dataclass
class Record:
    offset: int
    key: bytes
    value: bytes | None


@dataclass
class FakeConsumer:
    """aiokafka's assign/seek/getmany/position/pause over in-memory partitions."""

    logs: dict[TopicPartition, list[Record]]
    stall_at: dict[TopicPartition, int] = field(default_factory=dict)  # a partition that stops there
    positions: dict[TopicPartition, int] = field(default_factory=dict)
    paused: set[TopicPartition] = field(default_factory=set)
    assigned: list[TopicPartition] = field(default_factory=list)

    def assign(self, tps: list[TopicPartition]) -> None:
        self.assigned = list(tps)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        assert tp in self.assigned
        self.positions[tp] = offset

    def pause(self, tp: TopicPartition) -> None:
        self.paused.add(tp)

    async def position(self, tp: TopicPartition) -> int:
        return self.positions[tp]

    async def getmany(self, *tps: TopicPartition, timeout_ms: int, max_records: int) -> dict[Any, list[Record]]:
        await asyncio.sleep(0)
        out = {}
        for t in tps:
            assert t not in self.paused
            limit = self.stall_at.get(t, 1 << 60)
            got = [r for r in self.logs[t] if self.positions[t] <= r.offset < limit][:3]
            if got:
                out[t] = got
                self.positions[t] = got[-1].offset + 1
        return out


def _db(path: Path) -> Any:
    return RocksDBOptions(block_cache_size=1 << 20).open(path)


def test_restore_partitions_applies_each_from_its_stored_offset_with_deletes_and_offsets(tmp_path: Path) -> None:
    a, b = tp(C, 0), tp(C, 1)
    logs = {
        a: [Record(0, b"x", b"1"), Record(1, b"y", b"1"), Record(2, b"x", b"2"), Record(3, b"y", None)],
        b: [Record(0, b"z", b"old"), Record(1, b"z", b"new")],
    }
    da, db = _db(tmp_path / "a"), _db(tmp_path / "b")
    db.put(b"z", b"old")
    db.put(OFFSET_KEY, b"0")  # b already applied offset 0
    consumer = FakeConsumer(logs)
    stats = asyncio.run(restore_partitions(consumer, {a: da, b: db}, {a: 4, b: 2}))
    assert (stats.records, stats.partitions, stats.stalled, stats.written) == (5, 2, [], {a, b})
    assert dict(da.items()) == {b"x": b"2", OFFSET_KEY: b"3"}
    assert dict(db.items()) == {b"z": b"new", OFFSET_KEY: b"1"}
    assert consumer.paused == {a, b}


def test_a_partition_up_to_date_is_not_read() -> None:
    db = {OFFSET_KEY: b"4"}
    empty: dict[bytes, bytes] = {}
    assert start_offsets({tp(C, 0): db, tp(C, 1): empty, tp(C, 2): empty}, {tp(C, 0): 5, tp(C, 1): 3}) == {tp(C, 1): 0}


def test_the_stored_offset_never_moves_back(tmp_path: Path) -> None:
    a = tp(C, 0)
    d = _db(tmp_path / "a")
    consumer = FakeConsumer({a: [Record(0, b"x", b"1"), Record(1, b"x", b"2")]})

    original = consumer.getmany

    async def getmany(*tps: TopicPartition, timeout_ms: int, max_records: int) -> dict[Any, list[Record]]:
        got = await original(*tps, timeout_ms=timeout_ms, max_records=max_records)
        d.put(OFFSET_KEY, b"7")  # a later offset stored meanwhile (the worker's own acked write)
        return got

    consumer.getmany = getmany  # type: ignore[method-assign]
    asyncio.run(restore_partitions(consumer, {a: d}, {a: 2}))
    assert d[OFFSET_KEY] == b"7"


def test_a_stalled_partition_is_left_consistent_to_faust(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(restore, "STALL_S", 0.05)
    a, b = tp(C, 0), tp(C, 1)
    logs = {a: [Record(i, b"k%d" % i, b"v") for i in range(6)], b: [Record(0, b"z", b"1")]}
    da, db = _db(tmp_path / "a"), _db(tmp_path / "b")
    consumer = FakeConsumer(logs, stall_at={a: 4})
    stats = asyncio.run(restore_partitions(consumer, {a: da, b: db}, {a: 6, b: 1}))
    assert stats.stalled == [a]
    assert stats.partitions == 1
    assert da[OFFSET_KEY] == b"3", "the stored offset is the last record written: recovery resumes after it"
    assert db[OFFSET_KEY] == b"0"


def test_a_stopping_worker_stops_restoring(tmp_path: Path) -> None:
    a = tp(C, 0)
    consumer = FakeConsumer({a: [Record(i, b"k", b"v") for i in range(10)]})
    stats = asyncio.run(restore_partitions(consumer, {a: _db(tmp_path / "a")}, {a: 10}, lambda: True))
    assert (stats.records, stats.stalled) == (0, [a])


# --- ShareRestore: its state across rebalances, dropping released partitions -----------------------


class FakeStore:
    def __init__(self, root: Path, name: str) -> None:
        self.root, self.name = root, name
        self._dbs: dict[int, Any] = {}

    def partition_path(self, p: int) -> Path:
        return self.root / "tables" / f"{self.name}-{p}.db"

    def _db_for_partition(self, p: int) -> Any:
        if p not in self._dbs:
            self._dbs[p] = _db(self.partition_path(p))
        return self._dbs[p]


def test_released_partitions_are_dropped_from_disk_after_the_keep_time(tmp_path: Path) -> None:
    now = [0.0]
    store = FakeStore(tmp_path, "contacts")
    share = ShareRestore("kafka", {C: store}, partitions=4, keep_s=100, clock=lambda: now[0])  # type: ignore[arg-type]
    for p in range(4):  # left by an earlier run that held every partition
        store._db_for_partition(p).put(b"k", b"v")
    share.settled = frozenset({tp(C, 0), tp(C, 1)})
    assert share.on_assigned({TP(C, 0), TP(C, 1)}) == []  # nothing new to restore
    assert share.released == {tp(C, 2): 0.0, tp(C, 3): 0.0}
    now[0] = 99.0
    assert share.drop_released() == []
    now[0] = 100.0
    share.restoring = True
    assert share.drop_released() == [], "never while a restore may hold a database"
    share.restoring = False
    assert share.drop_released() == [store.partition_path(2), store.partition_path(3)]
    assert sorted(store._dbs) == [0, 1], "the store no longer holds their handles"
    assert sorted(p.name for p in (tmp_path / "tables").iterdir()) == ["contacts-0.db", "contacts-1.db"]
    assert share.released == {}


# --- the hook: it runs before Faust's rebalance, only for the current generation ---------------------


class FakeRecovery:
    """Faust's recovery pass as the hook sees it: ``_wait`` and the start offsets."""

    def __init__(self, calls: list[str]) -> None:
        self.calls = calls
        self.active_offsets: dict[Any, int | None] = {}
        self.standby_offsets: dict[Any, int | None] = {}

    async def _wait(self, coro: Any, timeout: Any = None) -> None:  # noqa: ASYNC109 Faust's signature
        self.calls.append("wait")
        await coro


def test_install_takes_the_assignment_in_the_callback_and_restores_at_the_recovery_pass(tmp_path: Path) -> None:
    calls: list[str] = []
    recovery = FakeRecovery(calls)

    class Manager:
        def __init__(self) -> None:
            self.recovery = recovery

        async def on_rebalance(self, assigned: Any, revoked: Any, newly: Any, generation_id: int = 0) -> None:
            calls.append(f"faust {generation_id} pending={[t.partition for t in share.pending]}")
            recovery.active_offsets[TP(C, 1)] = None  # Faust read the stored offset: none yet

    store = FakeStore(tmp_path, "contacts")
    table = SimpleNamespace(changelog_topic=SimpleNamespace(get_topic_name=lambda: C), data=store, partitions=4)
    closers: list[Any] = []
    app = SimpleNamespace(
        tables=Manager(),
        consumer_generation_id=3,
        should_stop=False,
        conf=None,
        on_before_shutdown=SimpleNamespace(connect=closers.append),
    )
    share = install(app, [table], "kafka", keep_s=600)  # type: ignore[arg-type]
    assert len(closers) == 1, "the restore's consumer is closed when the app shuts down"

    async def restore_pending() -> restore.RestoreStats:
        calls.append(f"restore {[t.partition for t in share.pending]}")
        store._db_for_partition(1).put(OFFSET_KEY, b"41")
        share.pending, share.restored = [], [tp(C, 1)]
        return restore.RestoreStats()

    share.restore_pending = restore_pending  # type: ignore[method-assign]
    asyncio.run(app.tables.on_rebalance({TP(C, 1)}, set(), {TP(C, 1)}, 3))
    asyncio.run(app.tables.on_rebalance({TP(C, 2)}, set(), {TP(C, 2)}, 2))  # a stale generation: ignored
    assert calls == ["faust 3 pending=[1]", "faust 2 pending=[1]"], "no restore inside the callback"
    assert share.partitions == 4

    async def pass_() -> None:  # Faust's recovery pass: its first wait, then the next ones
        await recovery._wait(asyncio.sleep(0))
        await recovery._wait(asyncio.sleep(0))

    asyncio.run(pass_())
    assert calls[2:] == ["wait", "restore [1]", "wait", "wait"], "the restore runs first, once"
    assert recovery.active_offsets[TP(C, 1)] == 41, "Faust's recovery starts after what was restored"


def test_a_newer_rebalance_interrupting_the_restore_leaves_it_pending(tmp_path: Path) -> None:
    class RebalanceAgain(Exception):
        pass

    class Interrupting(FakeRecovery):
        async def _wait(self, coro: Any, timeout: Any = None) -> None:  # noqa: ASYNC109 Faust's signature
            coro.close()
            raise RebalanceAgain

    share = ShareRestore("kafka", {C: FakeStore(tmp_path, "contacts")}, partitions=4, keep_s=600)  # type: ignore[arg-type]
    share.pending = [tp(C, 0)]
    recovery = restore.hook_recovery(Interrupting([]), share)
    sleep = asyncio.sleep(0)
    with pytest.raises(RebalanceAgain):
        asyncio.run(recovery._wait(sleep))
    assert share.pending == [tp(C, 0)]
    assert inspect.getcoroutinestate(sleep) == inspect.CORO_CLOSED, "the pass's own step was closed, not left unawaited"


def test_a_failed_restore_leaves_its_partitions_to_faust_and_retries_at_the_next_rebalance(tmp_path: Path) -> None:
    store = FakeStore(tmp_path, "contacts")
    share = ShareRestore("kafka", {C: store}, partitions=4, keep_s=600)  # type: ignore[arg-type]

    async def broken() -> Any:
        raise ConnectionError("broker gone")

    share._consumer = broken  # type: ignore[method-assign]
    assert share.on_assigned({TP(C, 0), TP(C, 1)}) == [tp(C, 0), tp(C, 1)]
    stats = asyncio.run(share.restore_pending())
    assert stats.stalled == [tp(C, 0), tp(C, 1)]
    assert share.settled == frozenset() and not share.restoring and share.pending == []
    assert share.on_assigned({TP(C, 0), TP(C, 1)}) == [tp(C, 0), tp(C, 1)], "tried again"


def test_restore_pending_restores_settles_and_flushes_what_it_wrote(tmp_path: Path) -> None:
    a, b = tp(C, 0), tp(C, 1)
    consumer = FakeConsumer({a: [Record(0, b"x", b"1"), Record(1, b"y", b"2")], b: []})
    flushed: list[int] = []

    class Counting:
        def __init__(self, db: Any, p: int) -> None:
            self.db, self.p = db, p

        def __getattr__(self, name: str) -> Any:
            return getattr(self.db, name)

        def flush(self) -> None:
            flushed.append(self.p)
            self.db.flush()

    class Store(FakeStore):
        def _db_for_partition(self, p: int) -> Any:
            if p not in self._dbs:
                self._dbs[p] = Counting(_db(self.partition_path(p)), p)
            return self._dbs[p]

    async def end_offsets(tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        return {t: len(consumer.logs[t]) for t in tps}

    async def started() -> Any:
        return consumer

    consumer.end_offsets = end_offsets  # type: ignore[attr-defined]
    consumer.unsubscribe = lambda: None  # type: ignore[attr-defined]
    store = Store(tmp_path, "contacts")
    share = ShareRestore("kafka", {C: store}, partitions=4, keep_s=600)  # type: ignore[arg-type]
    share._consumer = started  # type: ignore[method-assign]
    share.on_assigned({TP(C, 0), TP(C, 1)})
    stats = asyncio.run(share.restore_pending())
    assert stats.records == 2
    assert flushed == [0], "only the database that received records is flushed"
    assert share.settled == {a, b} and share.restored == [a, b] and share.pending == []
    assert store._db_for_partition(0).get(b"y") == b"2"
    assert share.on_assigned({TP(C, 0), TP(C, 1)}) == [], "nothing to restore at the next rebalance"
