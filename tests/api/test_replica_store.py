"""The contacts replica over its on-disk view store (``api.replica`` with ``api.view_store``): the
views and both indexes written by one process are what another process reading the store
answers with, a view changed by the writer is not served stale from the reader's decoded cache,
the workers' statuses reach the reader through the store, and a replica restarted on its store
reads the topics from the stored offsets only. No broker: the consumer is a fake that honours
seeks (the same on the real broker, with API processes: ``tests/e2e/test_api_processes.py``)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import TopicPartition

import kafka_io.reader
from api.replica import Replica
from api.view_store import RocksViewStore
from kafka_io.clients import KafkaConnection
from schemas.model_file import load_model
from scorestream import apply_events
from tests.api.view_bytes import view_bytes
from tests.factories import T0, consumer_record, make_event

MODEL = load_model()
KAFKA = KafkaConnection("127.0.0.1:1")


def contact(user: str, *paths: str, anonymous: str | None = None) -> bytes:
    events = [make_event(kind="identify", user_id=user, traits={"email": f"{user}@acme.com"})]
    if anonymous is not None:
        events.append(make_event(kind="alias", user_id=user, anonymous_id=anonymous, previous_id=anonymous))
    events += [make_event(kind="page", event=None, channel="web", user_id=user, path=p) for p in paths]
    return view_bytes(apply_events(None, user, events, MODEL), MODEL)


def status(worker: str, state: str) -> bytes:
    return orjson.dumps({"worker": worker, "state": state, "model": MODEL.version, "at_ms": T0})


def replica(store: RocksViewStore | None = None, directory: Path | None = None) -> Replica:
    r = Replica(kafka=KAFKA, views_topic="v", status_topic="s", store_dir=directory)
    if store is not None:
        r.store = store
    return r


def test_what_the_writer_applies_the_reader_answers(tmp_path: Path) -> None:
    writer = replica(RocksViewStore.open(tmp_path))
    reader = replica(RocksViewStore.open(tmp_path))
    assert (writer.store.role, reader.store.role) == ("writer", "secondary")
    writer.apply(b"u-1", contact("u-1", "/pricing", anonymous="anon-1"))
    writer.apply_status(status("w1", "ready"))
    writer.store.commit()
    assert reader.find("u-1") is None  # not caught up yet
    reader.store.catch_up()
    reader.load_from_store()
    for ident in ("u-1", "anon-1", "U-1@Acme.com "):
        found = reader.find(ident)
        assert found is not None and found.view.contact_id == "u-1", ident
    assert reader.ready_workers == ["w1"] and len(reader.states) == 1
    before = reader.lookup("u-1")
    assert before is not None and reader.lookup("u-1") is before  # decoded once, then cached

    writer.apply(b"u-1", contact("u-1", "/pricing", "/docs", "/blog"))  # the writer changes the view
    writer.apply_status(status("w1", "stopped"))
    writer.store.commit()
    reader.store.catch_up()
    reader.load_from_store()
    after = reader.lookup("u-1")
    assert after is not None and after is not before and after.engagement != before.engagement
    assert reader.ready_workers == []
    reader.store.close()
    writer.store.close()


@dataclass
class SeekingConsumer:
    """Serves each topic's records from the position seeks left (the beginning by default)."""

    records: list[Any]
    seeks: dict[tuple[str, int], int] = field(default_factory=dict)
    served: bool = False

    def __post_init__(self) -> None:
        self._client = self

    async def fetch_all_metadata(self) -> Any:
        topics = {r.topic for r in self.records}

        class Cluster:
            def partitions_for_topic(self, topic: str) -> set[int] | None:
                return {0} if topic in topics else None

        return Cluster()

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    def assign(self, partitions: list[TopicPartition]) -> None:
        pass

    async def seek_to_beginning(self, *partitions: TopicPartition) -> None:
        pass

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.seeks[(tp.topic, tp.partition)] = offset

    def _end(self, topic: str) -> int:
        return sum(1 for r in self.records if r.topic == topic)

    async def end_offsets(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: self._end(tp.topic) for tp in partitions}

    async def position(self, tp: TopicPartition) -> int:
        return self._end(tp.topic) if self.served else self.seeks.get((tp.topic, 0), 0)

    async def getmany(self, timeout_ms: int = 0, max_records: int = 0) -> dict[TopicPartition, list[Any]]:
        if self.served:
            await asyncio.sleep(timeout_ms / 1000)
            return {}
        self.served = True
        out: dict[TopicPartition, list[Any]] = {}
        for r in self.records:
            if r.offset >= self.seeks.get((r.topic, 0), 0):
                out.setdefault(TopicPartition(r.topic, 0), []).append(r)
        return out


def run(r: Replica) -> None:
    async def go() -> None:
        await r.start()
        await asyncio.wait_for(r.caught_up.wait(), 10)
        await r.stop()

    asyncio.run(go())


def test_a_restarted_replica_reads_only_past_its_stored_offsets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    views = [consumer_record("v", i, contact(f"u-{i}"), f"u-{i}".encode()) for i in range(5)]
    statuses = [consumer_record("s", 0, status("w1", "ready"), b"w1")]
    first = SeekingConsumer([*views[:3], *statuses])
    monkeypatch.setattr(kafka_io.reader, "consumer", lambda *_, **__: first)
    before = replica(directory=tmp_path)
    run(before)
    assert before.records == 3 and first.seeks == {}  # an empty store: from the beginning

    again = SeekingConsumer([*views, *statuses])
    monkeypatch.setattr(kafka_io.reader, "consumer", lambda *_, **__: again)
    after = replica(directory=tmp_path)
    run(after)
    assert again.seeks == {("v", 0): 3, ("s", 0): 1}
    assert after.records == 2  # u-3 and u-4 only
    assert after.ready_workers == ["w1"]  # the status read before the restart, from the store

    reopened = RocksViewStore.open(tmp_path)
    assert len(reopened) == 5 and reopened.offsets() == {("v", 0): 5, ("s", 0): 1}
    assert not reopened.writer_caught_up()  # a new writer: not until its own reading caught up
    reopened.close()
