"""The API's view store (``api.view_store``): writes visible at commit with the offsets they reach,
a restarted writer resuming from them, the two indexes, an exact count, memory bounded by the
block cache, readers (RocksDB secondaries) seeing the writer's commits after catching up, and a
reader taking over when the writer dies. The same store under the contacts replica, against the
real broker and several API processes: ``tests/e2e/test_api_processes.py``."""

from __future__ import annotations

import asyncio
import fcntl
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from api.view_store import (
    RocksViewStore,
    StoreError,
    StoreOptions,
    ViewStore,
    _read_behind,
)

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def directory(tmp_path: Path) -> Path:
    return tmp_path / "api" / "ns"


@pytest.fixture(params=["memory", "rocksdb"])
def store(request: pytest.FixtureRequest, directory: Path) -> ViewStore:
    if request.param == "memory":
        return ViewStore()
    opened = RocksViewStore.open(directory)
    request.addfinalizer(opened.close)
    return opened


def test_views_indexes_meta_and_offsets_read_back(store: ViewStore) -> None:
    store.put("c-1", b"one")
    store.put("c-2", b"two")
    store.link_anonymous("a-1", "c-1")
    store.link_email("ann@acme.com", "c-1")
    store.put_meta("status/w1", b"{}")
    store.put_meta("status/w2", b"[]")
    store.put_meta("statut", b"not a status")
    store.advance("t", 0, 7)
    store.advance("t", 1, 3)
    store.commit()
    assert store.get("c-1") == b"one" and store["c-2"] == b"two" and store.get("c-3") is None
    assert "c-1" in store and "c-3" not in store
    assert store.anonymous_owner("a-1") == "c-1" and store.anonymous_owner("a-2") is None
    assert store.email_owner("ann@acme.com") == "c-1" and store.email_owner("bob@acme.com") is None
    assert store.meta_items("status/") == [("status/w1", b"{}"), ("status/w2", b"[]")]
    assert store.offsets() == {("t", 0): 7, ("t", 1): 3}
    assert sorted(store) == ["c-1", "c-2"] and len(store) == 2


def test_an_anonymous_id_keeps_its_owner_unless_replaced(store: ViewStore) -> None:
    store.link_anonymous("a-1", "merged-into", replace=False)  # a merged contact's id: no owner yet
    store.link_anonymous("a-1", "other", replace=False)  # same batch: the first one stays
    store.commit()
    store.link_anonymous("a-1", "another", replace=False)
    store.commit()
    assert store.anonymous_owner("a-1") == "merged-into"
    store.link_anonymous("a-1", "live")
    store.commit()
    assert store.anonymous_owner("a-1") == "live"


def test_the_count_is_exact_through_overwrites_and_deletes(store: ViewStore) -> None:
    store.put("c-1", b"a")
    store.put("c-1", b"b")  # same batch
    store.put("c-2", b"a")
    store.delete("c-3")  # never there
    store.commit()
    assert len(store) == 2
    store.put("c-1", b"c")  # an update
    store.delete("c-2")
    store.put("c-2", b"again")  # back in the same batch
    store.delete("c-1")
    store.commit()
    assert len(store) == 1 and store.get("c-1") is None and store.get("c-2") == b"again"


def test_writes_show_at_commit_together_with_their_offsets(directory: Path) -> None:
    store = RocksViewStore.open(directory)
    store.put("c-1", b"one")
    store.link_email("ann@acme.com", "c-1")
    store.advance("t", 0, 1)
    assert store.get("c-1") is None and store.email_owner("ann@acme.com") is None and store.offsets() == {}
    store.commit()
    assert store.get("c-1") == b"one" and store.offsets() == {("t", 0): 1}
    store.put("c-2", b"two")
    store.advance("t", 0, 2)
    store.discard()  # a follower restarting: reads again from the committed offsets
    assert store.offsets() == {("t", 0): 1} and len(store) == 1
    store.put("c-2", b"two")
    assert len(store) == 2
    store.close()


def test_a_restarted_writer_resumes_from_its_offsets(directory: Path) -> None:
    store = RocksViewStore.open(directory)
    for i in range(100):
        store.put(f"c-{i}", b"x" * i)
        store.advance("views", i % 4, i // 4 + 1)
    store.commit()
    store.put("c-uncommitted", b"lost")  # what a SIGKILL between two batches loses, offsets included
    store.close()
    again = RocksViewStore.open(directory)
    assert again.role == "writer"
    assert again.offsets() == {("views", p): 25 for p in range(4)}
    assert len(again) == 100 and again.get("c-99") == b"x" * 99 and again.get("c-uncommitted") is None
    again.close()


def test_a_reader_sees_the_writers_commits_after_catching_up(directory: Path) -> None:
    directory.mkdir(parents=True)
    held = os.open(directory / "writer.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(held, fcntl.LOCK_EX)  # a writer that has not created the store yet
    with pytest.raises(StoreError):
        RocksViewStore.open(directory)
    os.close(held)
    writer = RocksViewStore.open(directory)
    reader = RocksViewStore.open(directory)
    assert (writer.role, reader.role) == ("writer", "secondary")
    assert not reader.writer_caught_up()
    writer.put("c-1", b"one")
    writer.link_anonymous("a-1", "c-1")
    writer.commit()
    assert reader.get("c-1") is None
    reader.catch_up()
    assert reader.get("c-1") == b"one" and reader.anonymous_owner("a-1") == "c-1" and len(reader) == 1
    writer.mark_caught_up(True)
    reader.catch_up()
    assert reader.writer_caught_up()
    with pytest.raises(StoreError):
        reader.put("c-2", b"a reader never writes")
    assert not reader.take_over()  # the writer holds the lock
    writer.close()
    assert not reader.writer_caught_up()  # the marker names a writer that is gone
    reader.close()
    assert not list((directory / "secondaries").iterdir())  # a reader's own directory goes with it


WRITER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from api.view_store import RocksViewStore
    store = RocksViewStore.open(Path(sys.argv[1]))
    assert store.role == "writer"
    for i in range(1000):
        store.put(f"c-{i}", b"v" * 100)
        store.link_email(f"e{i}@acme.com", f"c-{i}")
        store.advance("views", 0, i + 1)
        if i % 100 == 99:
            store.commit()
    store.mark_caught_up(True)
    print("written", flush=True)
    time.sleep(600)
    """
)


def test_a_reader_takes_over_when_the_writer_is_killed(directory: Path) -> None:
    directory.mkdir(parents=True)
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'src'}{os.pathsep}{REPO}"}
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(directory)], stdout=subprocess.PIPE, env=env)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"written"
        reader = RocksViewStore.open(directory)
        assert reader.role == "secondary" and len(reader) == 1000 and reader.writer_caught_up()
        assert not reader.take_over()
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        assert reader.take_over() and str(reader.role) == "writer"
        assert reader.offsets() == {("views", 0): 1000} and len(reader) == 1000
        assert reader.email_owner("e999@acme.com") == "c-999" and reader.get("c-0") == b"v" * 100
        assert not reader.writer_caught_up()  # its own reading has not caught up yet
        reader.put("c-new", b"after")
        reader.commit()
        assert len(reader) == 1001
        reader.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_memory_is_bounded_by_the_block_cache_whatever_the_data(directory: Path) -> None:
    store = RocksViewStore.open(directory, StoreOptions(cache_mb=8))
    value = os.urandom(300)
    for batch in range(40):  # 200k views of 300 bytes (60 MB, incompressible), 5k per batch
        for i in range(5000):
            store.put(f"c-{batch}-{i}", value)
            store.link_anonymous(f"a-{batch}-{i}", f"c-{batch}-{i}")
        store.commit()
    for batch in range(40):
        for i in range(0, 5000, 7):
            assert store.get(f"c-{batch}-{i}") == value
            assert store.anonymous_owner(f"a-{batch}-{i}") == f"c-{batch}-{i}"
    assert len(store) == 200_000
    assert store.cache_usage() <= 8 << 20  # data, index and filter blocks all in the one bounded cache
    assert store.memtable_bytes() <= 40 << 20  # the write buffers: 32 MiB with their arena slack
    store.close()


class Follower:
    def __init__(self, store: ViewStore) -> None:
        self.store = store
        self.error: str | None = None
        self.caught_up = asyncio.Event()
        self.loads = 0

    def load_from_store(self) -> None:
        self.loads += 1


def test_a_reader_turns_ready_with_its_writer_and_takes_over_when_it_goes(directory: Path) -> None:
    writer = RocksViewStore.open(directory)
    reader = RocksViewStore.open(directory)
    follower = Follower(reader)

    async def go() -> None:
        task = asyncio.create_task(_read_behind(follower, reader, 0.001, "test"))
        writer.put("c-1", b"one")
        writer.commit()
        for _ in range(200):
            await asyncio.sleep(0.002)
            if reader.get("c-1") is not None:
                break
        assert reader.get("c-1") == b"one"  # caught up on its timer, within milliseconds
        assert not follower.caught_up.is_set()
        writer.mark_caught_up(True)
        await asyncio.wait_for(follower.caught_up.wait(), 5)
        assert follower.loads >= 1 and not task.done()
        writer.close()
        await asyncio.wait_for(task, 5)  # returns once it took over
        assert reader.role == "writer"

    asyncio.run(go())
    reader.close()
