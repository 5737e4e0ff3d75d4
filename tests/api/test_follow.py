"""The API's topic followers (``api.follow``, reading with :func:`kafka_io.reader.follow`): a record
they cannot read is logged with its coordinates, counted and skipped, and the reader goes on; a
reader whose task dies anyway turns ``/readyz`` 503 with the task's name and exception. No broker:
the consumer is a fake with the few calls the reader makes (the same readers on the real broker:
``tests/e2e`` and ``tests/kafka_io``)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
import pytest
from aiokafka import TopicPartition
from fastapi import FastAPI

import kafka_io.reader
from api.account_replica import AccountReplica
from api.app import create_api
from api.replica import Replica, WorkerStatus
from kafka_io.clients import KafkaConnection
from kafka_io.reader import unreadable
from schemas.model_file import load_model
from schemas.settings import Settings
from scorestream import apply_events
from tests.api.view_bytes import view_bytes
from tests.factories import T0, consumer_record, make_event

KEY = "unit-test-key-0123456789"
MODEL = load_model()


def state_bytes(user: str) -> bytes:
    event = make_event(kind="page", event=None, channel="web", user_id=user, path="/")
    return view_bytes(apply_events(None, user, [event], MODEL), MODEL)


def rec(topic: str, offset: int, key: bytes | None, value: bytes | None) -> Any:
    return consumer_record(topic, offset, value, key)


@dataclass
class Cluster:
    topics: dict[str, int]

    def partitions_for_topic(self, topic: str) -> set[int] | None:
        return set(range(self.topics[topic])) if topic in self.topics else None


class FakeConsumer:
    """Serves the prepared records once, then nothing (positions at the end)."""

    def __init__(self, records: list[Any]) -> None:
        self.records = records
        self.topics = {r.topic for r in records}
        self._client = self
        self.served = asyncio.Event()

    async def fetch_all_metadata(self) -> Cluster:
        return Cluster(dict.fromkeys(self.topics, 1))

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    def assign(self, partitions: list[TopicPartition]) -> None:
        pass

    async def seek_to_beginning(self, *partitions: TopicPartition) -> None:
        pass

    async def end_offsets(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: sum(1 for r in self.records if r.topic == tp.topic) for tp in partitions}

    async def position(self, tp: TopicPartition) -> int:
        return sum(1 for r in self.records if r.topic == tp.topic) if self.served.is_set() else 0

    async def getmany(self, timeout_ms: int = 0, max_records: int = 0) -> dict[TopicPartition, list[Any]]:
        if self.served.is_set():
            await asyncio.sleep(timeout_ms / 1000)
            return {}
        self.served.set()
        out: dict[TopicPartition, list[Any]] = {}
        for r in self.records:
            out.setdefault(TopicPartition(r.topic, 0), []).append(r)
        return out


def test_the_contacts_replica_skips_what_it_cannot_read_and_goes_on(monkeypatch: pytest.MonkeyPatch) -> None:
    records = [
        rec("c", 0, b"u-1", state_bytes("u-1")),
        rec("c", 1, b"u-bad", b"\xc1 not a state"),
        rec("c", 2, b"\xff\xfe", state_bytes("x")),  # a key that is not UTF-8
        rec("s", 0, b"w1", b"{not json"),
        rec("s", 1, b"w1", orjson.dumps({"worker": "w1", "state": "ready", "at_ms": T0})),
        rec("c", 3, b"u-2", state_bytes("u-2")),
    ]
    fake = FakeConsumer(records)
    monkeypatch.setattr(kafka_io.reader, "consumer", lambda *_, **__: fake)
    replica = Replica(kafka=KafkaConnection("127.0.0.1:1"), views_topic="c", status_topic="s")
    before = unreadable["contacts replica"]

    async def go() -> None:
        await replica.start()
        await asyncio.wait_for(replica.caught_up.wait(), 10)
        assert replica.failure is None  # still following
        await replica.stop()

    asyncio.run(go())
    assert {"u-1", "u-2"} <= set(replica.states)
    assert replica.lookup("u-2") is not None
    assert replica.ready_workers == ["w1"]
    assert unreadable["contacts replica"] - before == 3  # the bad state, the bad key, the bad status


@pytest.fixture
def app() -> FastAPI:
    settings = Settings(api_keys=KEY)  # type: ignore[arg-type]
    replica = Replica(kafka=KafkaConnection("127.0.0.1:1"), views_topic="c", status_topic="s")
    replica.apply(b"u-1", state_bytes("u-1"))
    replica.caught_up.set()
    replica.workers["w1"] = WorkerStatus(state="ready", model=MODEL.version, at_ms=T0)
    accounts = AccountReplica(kafka=KafkaConnection("127.0.0.1:1"), changelog_topic="a")
    accounts.caught_up.set()
    app = create_api(settings, model=MODEL, replica=replica, accounts=accounts, clock=lambda: T0)
    namespaces = app.state.namespaces
    namespaces.caught_up.set()
    namespaces.active().population.caught_up.set()
    app.state.webhooks.store.caught_up.set()
    return app


@pytest.fixture
def client(app: FastAPI) -> Iterator[httpx.AsyncClient]:
    # with a key: /readyz shows its detail only to a caller with one
    headers = {"Authorization": f"Bearer {KEY}"}
    yield httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api", headers=headers)


def test_readyz_turns_503_with_the_reason_when_a_follower_task_dies(app: FastAPI, client: httpx.AsyncClient) -> None:
    replica: Replica = app.state.namespaces.active().replica

    async def broken() -> None:
        raise RuntimeError("a bug outside the per-record step")

    async def go() -> tuple[httpx.Response, httpx.Response]:
        async with client:
            ready = await client.get("/readyz")
            replica._task = asyncio.create_task(broken(), name="Replica")
            with contextlib.suppress(RuntimeError):
                await replica._task
            return ready, await client.get("/readyz")

    ready, dead = asyncio.run(go())
    assert ready.status_code == 200, ready.text
    assert dead.status_code == 503
    body = dead.json()["detail"]
    assert body["failed"] == ["Replica: RuntimeError: a bug outside the per-record step"]
    assert "reader stopped: Replica: RuntimeError" in body["error"]


def test_a_stopped_reader_is_not_a_failure(app: FastAPI, client: httpx.AsyncClient) -> None:
    replica: Replica = app.state.namespaces.active().replica

    async def forever() -> None:
        await asyncio.sleep(3600)

    async def go() -> httpx.Response:
        async with client:
            replica._task = asyncio.create_task(forever(), name="Replica")
            await asyncio.sleep(0)
            await replica.stop()  # cancelled by stop: not a failure
            return await client.get("/readyz")

    assert asyncio.run(go()).status_code == 200
