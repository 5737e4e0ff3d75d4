"""Per-message isolation in the worker's agents (``streams.agents``, ``streams.account_feed``), without a broker.

The real agent functions run over prepared batches of records: one poison record (or key) among
good ones is dead-lettered alone (original bytes, reason, exception class, source coordinates)
and every other record of its batch is processed; no exception escapes an agent (Faust would
restart it and acknowledge the whole batch). Faust itself is the edge faked here (its app's
decorators, topics that record what is sent, tables as dicts); the same flow on the real broker
is ``tests/e2e/test_isolation.py``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, cast

import msgspec
import pytest

import scorestream.accounts
import scorestream.fold
import scorestream.identity
import streams.account_feed
import streams.agents
from schemas.accounts import MemberBatch, decode_members
from schemas.accounts import encode as encode_account
from schemas.events import DEADLETTER_HEADERS, decode
from schemas.model_file import load_model
from schemas.registry import Registry
from schemas.settings import Settings
from schemas.state import Batch, Envelope, Item, RawBatch, decode_batch, decode_state, encode, envelope_for
from scorestream.accounts import MemberUpdate
from scorestream.fold import Tick
from streams.app import Wiring
from streams.deadletter import dead_lettered
from streams.transport import TooLarge, encode_chunks
from tests.factories import T0, consumer_record, iso, make_event, segment_json

MODEL = load_model()
SETTINGS = Settings()


@dataclass
class Sent:
    key: bytes | None
    value: bytes
    partition: int | None
    headers: dict[str, str]


class FakeTopic:
    """A Faust topic that records what is sent to it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.sent: list[Sent] = []

    def send_soon(
        self,
        key: bytes | None = None,
        value: bytes | None = None,
        partition: int | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        self.sent.append(Sent(key, value or b"", partition, {k: v.decode() for k, v in headers or []}))


class FakeTable(dict[str, bytes]):
    def items(self) -> Any:  # the clock reads (key, value) pairs
        return list(super().items())


class Signal:
    def connect(self, fn: Any) -> None:
        pass


class Sensors(list[Any]):
    def add(self, sensor: Any) -> None:
        self.append(sensor)


@dataclass
class FakeApp:
    """The parts of ``faust.App`` the agents' registration uses."""

    agents: dict[str, Callable[..., AsyncIterator[None]]] = field(default_factory=dict)
    in_recovery: bool = False
    rebalancing: bool = False
    on_rebalance_complete: Signal = field(default_factory=Signal)
    state_flushers: list[Any] = field(default_factory=list)
    sensors: Sensors = field(default_factory=Sensors)

    def add_state_flusher(self, flusher: Any) -> None:
        self.state_flushers.append(flusher)

    def agent(self, topic: Any, name: str) -> Callable[[Any], Any]:
        def register(fn: Any) -> Any:
            self.agents[name] = fn
            return fn

        return register

    def timer(self, interval: float, name: str) -> Callable[[Any], Any]:
        return lambda fn: fn

    def task(self, fn: Any) -> Any:
        return fn


@dataclass
class BatchEvent:
    value: list[Any]

    @property
    def message(self) -> Any:
        return self.value[-1]


class Stream:
    def __init__(self, batches: list[list[Any]]) -> None:
        self.batches = batches

    async def events(self) -> AsyncIterator[BatchEvent]:
        for batch in self.batches:
            yield BatchEvent(batch)


def record(topic: str, offset: int, value: bytes | None, key: bytes | None = b"k", partition: int = 0) -> Any:
    return consumer_record(topic, offset, value, key, partition)


class HeldRecords:
    """The records the contacts stage holds unacknowledged, and those it released."""

    def __init__(self) -> None:
        self.held: list[Any] = []
        self.released: list[Any] = []

    def hold(self, message: Any) -> None:
        self.held.append(message)

    def release(self, message: Any) -> None:
        self.released.append(message)


class Worker:
    """The three agents and the accounts agent registered on fakes of Faust."""

    def __init__(self) -> None:
        self.app = FakeApp()
        s = SETTINGS
        self.topics = {
            name: FakeTopic(name)
            for name in ("deadletter", "identity", "contacts", "status", "triggers", "accounts", "population", "views")
        }
        self.tables = {name: FakeTable() for name in ("identity", "contacts", "accounts")}
        t = self.topics
        self.w = Wiring(
            app=cast(Any, self.app),
            sources=cast(Any, FakeTopic("sources")),
            deadletter=cast(Any, t["deadletter"]),
            identity_topic=cast(Any, t["identity"]),
            contacts_topic=cast(Any, t["contacts"]),
            status_topic=cast(Any, t["status"]),
            triggers_topic=cast(Any, t["triggers"]),
            accounts_topic=cast(Any, t["accounts"]),
            population_topic=cast(Any, t["population"]),
            identity=cast(Any, self.tables["identity"]),
            contacts=cast(Any, self.tables["contacts"]),
            accounts=cast(Any, self.tables["accounts"]),
            private_triggers=cast(Any, FakeTopic("private-triggers")),
            private_deadletter=cast(Any, FakeTopic("private-deadletter")),
            namespace=s.ns,
            registry=Registry(s.app_id),
            views_topic=cast(Any, t["views"]),
        )
        self.acks = HeldRecords()
        self.pipeline = streams.agents.register(self.w, s, MODEL, self.acks)

    def run(self, agent: str, *batches: list[Any]) -> None:
        """The batches through ``agent``, then the states written (as before a commit)."""

        async def go() -> None:
            async for _ in self.app.agents[agent](Stream(list(batches))):
                pass

        asyncio.run(go())
        for flusher in self.app.state_flushers:
            flusher.before_commit()

    @property
    def dead(self) -> list[Sent]:
        return self.topics["deadletter"].sent

    def forwarded(self, topic: str) -> list[Item]:
        return [item for sent in self.topics[topic].sent for item in decode_batch(sent.value).items]


def headers_of(sent: Sent) -> tuple[str, str, str, str, str]:
    h = sent.headers
    assert list(h)[: len(DEADLETTER_HEADERS)] == list(DEADLETTER_HEADERS)
    return (
        h["scorestream.reason"],
        h["scorestream.exception"],
        h["scorestream.source.topic"],
        h["scorestream.source.partition"],
        h["scorestream.source.offset"],
    )


def page(user: str) -> bytes:
    return segment_json(type="page", userId=user, anonymousId=None, name="Home", properties={"path": "/"})


def internal(key: str, *envs: Envelope) -> bytes:
    return encode(Batch(items=[Item(key=key, env=env) for env in envs]))


def contact_event(user: str) -> Envelope:
    return Envelope(kind="event", event=make_event(kind="page", event=None, channel="web", user_id=user, path="/"))


# --- ingest ----------------------------------------------------------------------------------


def test_ingest_dead_letters_a_failing_record_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    real = scorestream.identity.routing_key

    def routing_key(event: Any) -> tuple[str, str]:  # a bug that strikes one event
        if event.user_id == "poison":
            raise OverflowError("int too big to convert")
        return real(event)

    monkeypatch.setattr(streams.agents, "routing_key", routing_key)
    worker = Worker()
    users = [f"u{i}" for i in range(10)]
    values = [page(u) for u in users[:5]] + [page("poison"), None] + [page(u) for u in users[5:]]
    batch = [record("events.web", 100 + i, v) for i, v in enumerate(values)]
    worker.run("ingest", batch)

    assert sorted(i.key for i in worker.forwarded("contacts")) == sorted(users)
    failed, empty = worker.dead
    assert headers_of(failed) == ("processing_error", "OverflowError", "events.web", "0", "105")
    assert failed.value == values[5] and "int too big" in failed.headers["scorestream.error"]
    assert headers_of(empty)[:2] == ("invalid_json", "schemas.events.InvalidMessage")
    assert headers_of(empty)[4] == "106"


def test_ingest_refuses_an_envelope_too_large_for_a_record(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(streams.agents, "MAX_ITEM_BYTES", 2000)
    worker = Worker()
    big = segment_json(type="identify", userId="big", anonymousId=None, traits={"bio": "x" * 3000})
    batch = [record("events.web", 0, page("a")), record("events.web", 1, big), record("events.web", 2, page("b"))]
    worker.run("ingest", batch)

    assert sorted(i.key for i in worker.forwarded("contacts")) == ["a", "b"]
    (dead,) = worker.dead
    assert headers_of(dead) == ("processing_error", "streams.transport.TooLarge", "events.web", "0", "1")
    assert dead.value == big


def test_a_batch_failing_outside_the_per_record_steps_is_dead_lettered_not_lost(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def flush(self: Any) -> None:
        raise RuntimeError("a bug at flush")

    monkeypatch.setattr(streams.agents.Outbox, "flush", flush)
    worker = Worker()
    values = [page("a"), page("b")]
    second = [record("events.web", 2, page("c"))]
    worker.run("ingest", [record("events.web", i, v) for i, v in enumerate(values)], second)  # the agent goes on

    assert [headers_of(d)[0] for d in worker.dead] == ["batch_error"] * 3
    assert [d.value for d in worker.dead] == [*values, second[0].value]


# --- identity ----------------------------------------------------------------------------------


def test_identity_dead_letters_garbage_and_non_events_alone() -> None:
    worker = Worker()
    anon_event = Envelope(
        kind="event", event=make_event(kind="page", event=None, channel="web", user_id=None, anonymous_id="an-1")
    )
    tick = envelope_for(Tick(T0))
    batch = [
        record("t.identity", 0, internal("an-1", anon_event)),
        record("t.identity", 1, b"\x00garbage"),
        record("t.identity", 2, internal("an-2", tick, anon_event)),
    ]
    worker.run("identity", batch)

    assert len(worker.forwarded("contacts")) == 2  # the event, twice (offsets 0 and 2)
    garbage, not_event = worker.dead
    assert headers_of(garbage)[0] == "internal_decode" and headers_of(garbage)[1].startswith("msgspec.")
    assert headers_of(garbage)[2:] == ("t.identity", "0", "1") and garbage.value == b"\x00garbage"
    assert headers_of(not_event)[:2] == ("not_an_event", "streams.deadletter.Unprocessable")
    assert headers_of(not_event)[4] == "2"
    (item,) = msgspec.msgpack.decode(not_event.value, type=RawBatch).items  # a batch of one: replayable
    assert item.key == "an-2"


def test_identity_isolates_a_failing_resolve(monkeypatch: pytest.MonkeyPatch) -> None:
    real = scorestream.identity.resolve

    def resolve(link: Any, key: str, event: Any) -> Any:
        if key == "an-bad":
            raise RecursionError("maximum recursion depth exceeded")
        return real(link, key, event)

    monkeypatch.setattr(streams.agents, "resolve", resolve)
    worker = Worker()

    def anon(a: str) -> Envelope:
        return Envelope(kind="event", event=make_event(kind="page", event=None, user_id=None, anonymous_id=a))

    batch = [
        record("t.identity", 7, internal("an-bad", anon("an-bad"))),
        record("t.identity", 8, internal("an-ok", anon("an-ok"))),
    ]
    worker.run("identity", batch)

    assert [i.key for i in worker.forwarded("contacts")] == ["anonymous:an-ok"]
    (dead,) = worker.dead
    assert headers_of(dead) == ("processing_error", "RecursionError", "t.identity", "0", "7")


# --- contacts ----------------------------------------------------------------------------------


def test_contacts_isolates_garbage_empty_envelopes_loops_and_failing_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    real = scorestream.fold.step

    def step(before: Any, key: str, messages: Any, model: Any, **kwargs: Any) -> Any:
        if key == "u-bug":
            raise ZeroDivisionError("division by zero")
        return real(before, key, messages, model, **kwargs)

    monkeypatch.setattr(streams.agents, "step", step)
    worker = Worker()
    looping = Envelope(kind="event", event=make_event(kind="page", event=None, user_id="u-1"), hops=99)
    batch = [
        record("t.contacts", 10, internal("u-1", contact_event("u-1"))),
        record("t.contacts", 11, b"\xc1"),
        record("t.contacts", 12, internal("u-2", Envelope(kind="event"), contact_event("u-2"))),
        record("t.contacts", 13, internal("u-bug", contact_event("u-bug"))),
        record("t.contacts", 14, internal("u-1", looping, contact_event("u-1"))),
        record("t.contacts", 15, internal("u-3", contact_event("u-3"))),
    ]
    worker.run("contacts", batch)

    contacts = worker.tables["contacts"]
    assert sorted(contacts) == ["u-1", "u-2", "u-3"]
    assert decode_state(contacts["u-1"]).contact_id == "u-1"
    reasons = [(headers_of(d)[0], headers_of(d)[1], headers_of(d)[4]) for d in worker.dead]
    assert reasons[0][1].startswith("msgspec.")
    assert reasons == [
        ("internal_decode", reasons[0][1], "11"),
        ("empty_envelope", "streams.deadletter.Unprocessable", "12"),
        ("merge_loop", "streams.deadletter.Unprocessable", "14"),
        ("processing_error", "ZeroDivisionError", "13"),
    ]
    parked = decode_batch(worker.dead[3].value)  # the key's messages, replayable as they are
    assert [i.key for i in parked.items] == ["u-bug"] and parked.items[0].env.event is not None


def test_contacts_hold_their_records_until_the_states_are_written() -> None:
    worker = Worker()
    first = [record("t.contacts", 0, internal("u-1", contact_event("u-1")))]
    second = [record("t.contacts", 1, internal("u-1", contact_event("u-1"), contact_event("u-1")))]
    worker.pipeline.contacts_batch(BatchEvent(first))
    worker.pipeline.contacts_batch(BatchEvent(second))
    assert worker.tables["contacts"] == {}  # within the flush interval: in memory only
    assert worker.acks.held == [first[-1], second[-1]] and worker.acks.released == []

    worker.app.state_flushers[0].before_commit()  # as Faust's commit does
    assert len(decode_state(worker.tables["contacts"]["u-1"]).hits) == 3  # one write, every event in it
    assert worker.acks.released == worker.acks.held


def test_a_failed_fold_parks_its_batch_alone_and_the_cached_state_is_rebuilt(monkeypatch: pytest.MonkeyPatch) -> None:
    real = scorestream.fold.step
    calls: list[int] = []

    def step(before: Any, key: str, messages: Any, model: Any, **kwargs: Any) -> Any:
        calls.append(len(messages))
        if len(calls) == 2:  # the second batch's fold fails, after it may have changed the cached state
            raise ZeroDivisionError("division by zero")
        return real(before, key, messages, model, **kwargs)

    monkeypatch.setattr(streams.agents, "step", step)
    worker = Worker()
    worker.run(
        "contacts",
        [record("t.contacts", 3, internal("u-1", contact_event("u-1")))],
        [record("t.contacts", 4, internal("u-1", contact_event("u-1"), contact_event("u-1")))],
    )
    assert calls == [1, 2, 1]  # the first batch's message folded again onto the written (empty) state
    assert len(decode_state(worker.tables["contacts"]["u-1"]).hits) == 1  # what the first batch made
    (dead,) = worker.dead
    assert headers_of(dead) == ("processing_error", "ZeroDivisionError", "t.contacts", "0", "4")
    assert [i.key for i in decode_batch(dead.value).items] == ["u-1", "u-1"]  # the failing batch's, alone
    assert worker.acks.released == worker.acks.held  # parked before the records are released


def test_contacts_park_a_state_too_large_for_the_changelog(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(streams.agents, "MAX_RECORD_BYTES", 4000)
    worker = Worker()
    traits = {f"t{i}": "x" * 100 for i in range(40)}  # within the core's bounds per trait, 4 KB together
    raw = segment_json(type="identify", userId="u-big", anonymousId=None, traits=traits)
    big = Envelope(kind="event", event=decode(raw, "web", T0))
    batch = [
        record("t.contacts", 0, internal("u-big", big)),
        record("t.contacts", 1, internal("u-small", contact_event("u-small"))),
    ]
    worker.run("contacts", batch)

    assert list(worker.tables["contacts"]) == ["u-small"]
    (dead,) = worker.dead
    assert headers_of(dead) == ("processing_error", "streams.transport.TooLarge", "t.contacts", "0", "0")
    assert "changelog record" in dead.headers["scorestream.error"]


# --- accounts ----------------------------------------------------------------------------------


def member(account: str, contact: str) -> MemberUpdate:
    return MemberUpdate(contact_id=contact, account_id=account, at_ms=T0, evidence=1, role="other", score=10.0, fit=0.5)


def test_accounts_isolates_garbage_and_a_failing_account(monkeypatch: pytest.MonkeyPatch) -> None:
    real = scorestream.accounts.apply_member_updates

    def apply(before: Any, account_id: str, updates: Any, model: Any) -> Any:
        if account_id == "acct-bug":
            raise KeyError("stage")
        return real(before, account_id, updates, model)

    monkeypatch.setattr(streams.account_feed, "apply_member_updates", apply)
    worker = Worker()
    good = MemberBatch(items=[member("acct-1", "c1"), member("acct-bug", "c2"), member("acct-2", "c3")])
    batch = [record("t.accounts", 3, encode_account(good)), record("t.accounts", 4, b"not msgpack \xff")]
    worker.run("accounts", batch)

    assert sorted(worker.tables["accounts"]) == ["acct-1", "acct-2"]
    garbage, failed = worker.dead  # records are read first, then each account folded
    assert headers_of(failed) == ("processing_error", "KeyError", "t.accounts", "0", "3")
    assert [u.contact_id for u in decode_members(failed.value).items] == ["c2"]
    assert headers_of(garbage)[0] == "internal_decode" and headers_of(garbage)[1].startswith("msgspec.")
    assert headers_of(garbage)[4] == "4"


# --- the pieces ---------------------------------------------------------------------------------


def test_encode_chunks_refuses_only_the_item_that_fails() -> None:
    refused: list[tuple[int, str]] = []

    def encode_chunk(items: list[int]) -> bytes:
        if 13 in items:
            raise OverflowError("13 does not encode")
        return b"x" * (100 * len(items) + (5000 if 7 in items else 0))

    chunks = list(
        encode_chunks(
            list(range(30)), encode_chunk, lambda i, e: refused.append((i, type(e).__name__)), 10, max_bytes=3000
        )
    )
    assert sorted(refused) == [(7, "TooLarge"), (13, "OverflowError")]
    assert sorted(i for chunk, _ in chunks for i in chunk) == [i for i in range(30) if i not in (7, 13)]
    assert all(len(value) <= 3000 and len(chunk) <= 10 for chunk, value in chunks)
    # order within a partition is kept
    assert [i for chunk, _ in chunks for i in chunk] == [i for i in range(30) if i not in (7, 13)]


def test_outbox_sends_every_item_but_the_one_that_cannot_be_written(monkeypatch: pytest.MonkeyPatch) -> None:
    topic = FakeTopic("t")
    refused: list[str] = []
    out = streams.agents.Outbox(1, lambda item, exc: refused.append(item.key))
    for key in ("a", "b", "c"):
        out.add(cast(Any, topic), key, contact_event(key))
    real = streams.agents._encode_raw

    def encode_raw(items: list[Any]) -> bytes:
        if any(i.key == "b" for i in items):
            raise TooLarge("b")
        return real(items)

    monkeypatch.setattr(streams.agents, "_encode_raw", encode_raw)
    out.flush()
    assert refused == ["b"]
    assert [i.key for s in topic.sent for i in decode_batch(s.value).items] == ["a", "c"]


def test_the_counter_counts_dead_letters_by_reason() -> None:
    before = dead_lettered["internal_decode"]
    worker = Worker()
    worker.run("accounts", [record("t.accounts", 0, b"\x00")])
    assert dead_lettered["internal_decode"] == before + 1


def test_the_timer_index_skips_an_unreadable_state() -> None:
    from streams.timers import TickClock, TimerIndex

    def state(user: str) -> bytes:
        return encode(
            scorestream.fold.step(None, user, [make_event(kind="page", event=None, user_id=user)], MODEL).state
        )

    items = [(b"u-1", state("u-1")), (b"u-bad", b"\xc1\x00"), (b"u-2", state("u-2")), (b"u-3", None)]
    index = TimerIndex()
    clock = TickClock(index, lambda: frozenset({0}), lambda: items, lambda ticks: None, max_ticks=10)
    asyncio.run(clock.rebuild(frozenset({0})))
    assert clock.unreadable == 1 and clock.built_for == frozenset({0})


def test_the_population_follower_skips_a_record_it_fails_on(monkeypatch: pytest.MonkeyPatch) -> None:
    import schemas.population
    import streams.population_feed
    from schemas.population import encode_record
    from scorestream.population import build_partition_summary

    real = schemas.population.read_record

    def read_record(key: bytes | None, value: bytes | None) -> Any:
        if key == b"partition:1":
            raise TypeError("a bug in reading")
        return real(key, value)

    monkeypatch.setattr(streams.population_feed, "read_record", read_record)
    feed = streams.population_feed.PopulationFeed(cast(Wiring, None), SETTINGS, MODEL)
    feed.apply(*encode_record(build_partition_summary(1, [], T0, 10)))
    feed.apply(*encode_record(build_partition_summary(2, [], T0, 10)))
    assert feed.unreadable == 1 and sorted(feed.summaries) == [2]


def test_the_issues_three_messages_cost_only_themselves() -> None:
    """The report of issue 14: a message nested 3,000 levels deep, one with a 40-digit integer and
    one with a bare NaN, each between valid page events: every valid event goes on, and each of
    the three is either dead-lettered or accepted (the contract decides which), never both, and
    never costs the batch."""
    worker = Worker()
    base = '{"type":"page","messageId":"%s","userId":"%s","timestamp":"' + iso(T0) + '","properties":%s}'
    hostile = {
        "deep": (base % ("deep", "h-deep", "[" * 3000 + "]" * 3000)).encode(),
        "big": (base % ("big", "h-big", '{"n": 1234567890123456789012345678901234567890}')).encode(),
        "nan": (base % ("nan", "h-nan", '{"x": NaN}')).encode(),
    }
    values: list[bytes] = []
    users = [f"v{i}" for i in range(60)]
    for i, user in enumerate(users):
        values.append(page(user))
        if i % 20 == 10:
            values.append(list(hostile.values())[i // 20])
    worker.run("ingest", [record("events.web", n, v) for n, v in enumerate(values)])

    forwarded = {i.key for i in worker.forwarded("contacts")}
    assert set(users) <= forwarded
    dead = {d.value for d in worker.dead}
    for name, raw in hostile.items():
        assert (raw in dead) != (f"h-{name}" in forwarded), name


def test_the_worker_topic_reader_goes_on_past_a_record_it_fails_on(monkeypatch: pytest.MonkeyPatch) -> None:
    import kafka_io.reader
    from kafka_io.clients import KafkaConnection

    records = [record("t.models", i, v) for i, v in enumerate([b"a", b"bad", b"c"])]

    class Cluster:
        def partitions_for_topic(self, topic: str) -> set[int]:
            return {0}

    class Consumer:
        def __init__(self, *_: Any, **__: Any) -> None:
            self.read = 0
            self._client = self

        async def fetch_all_metadata(self) -> Cluster:
            return Cluster()

        async def start(self) -> None: ...
        async def stop(self) -> None: ...
        def assign(self, tps: Any) -> None: ...
        async def seek_to_beginning(self, *tps: Any) -> None: ...

        async def end_offsets(self, tps: Any) -> dict[Any, int]:
            return dict.fromkeys(tps, len(records))

        async def position(self, tp: Any) -> int:
            return self.read

        async def getmany(self, *tps: Any, timeout_ms: int = 0, max_records: int | None = None) -> dict[Any, list[Any]]:
            self.read = len(records)
            return {"t.models[0]": records}

    monkeypatch.setattr(kafka_io.reader, "consumer", Consumer)
    seen: list[bytes | None] = []

    def apply(key: bytes | None, value: bytes | None) -> None:
        if value == b"bad":
            raise KeyError("a bug")
        seen.append(value)

    before = kafka_io.reader.unreadable["t.models"]
    asyncio.run(kafka_io.reader.read_topic(KafkaConnection("127.0.0.1:1"), "t.models", apply, until_end=True))
    assert seen == [b"a", b"c"] and kafka_io.reader.unreadable["t.models"] == before + 1
