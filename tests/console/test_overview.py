"""The console's overview in process: a session is needed (303), the page shows the numbers of
``GET /v1/reports/overview`` (on a hand-made chDB archive and a fixed clock), an unavailable archive
and an empty deployment get a message, the triggers ring is shown on load; the live streams over
a real uvicorn server answer ``text/event-stream``, push a trigger and the figures, and end when
the server stops or :meth:`console.live.Live.stop` runs. The figures' arithmetic (rate, lag,
the tail of several partitions) is checked on its own."""

from __future__ import annotations

import asyncio
import html
import re
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import orjson
import pytest
import uvicorn
from aiokafka import TopicPartition
from fastapi import FastAPI

from analytics.client import Store
from api.app import create_api
from api.replica import Replica
from console import overview as page
from console.live import Live, Pulse, Sample, TriggerFeed, TriggerItem, rate, tail
from kafka_io import clients
from kafka_io.clients import KafkaConnection
from kafka_io.promotion import lag_between
from kafka_io.topics import ensure_topics
from schemas.settings import Settings
from tests.analytics.archive import MODEL, NOW
from tests.analytics.test_overview import loaded

KEY = "console-overview-admin-0123456789"
READ = "console-overview-read-0123456789"


@pytest.fixture(scope="module")
def store(chdb_path: Path) -> Iterator[Store]:
    yield from loaded(chdb_path, "console_overview")


def build(store: Store | None) -> FastAPI:
    settings = Settings(api_keys=f"{KEY},{READ}:read:reader", console_secret="o" * 32)  # type: ignore[arg-type]
    replica = Replica(kafka=KafkaConnection("127.0.0.1:1"), views_topic="c", status_topic="s")
    replica.caught_up.set()
    app = create_api(settings, model=MODEL, replica=replica, clock=lambda: NOW)
    app.state.console_live.feed.follow = False  # no broker here: triggers are published by hand
    if store is not None:

        async def get() -> Store:
            return store

        app.state.analytics = get
    return app


async def signed_in(client: httpx.AsyncClient, key: str = READ) -> None:
    answer = await client.post("/console/sign-in", data={"key": key, "next": "/console"})
    assert answer.status_code == 303, answer.text
    client.headers["Cookie"] = answer.headers["set-cookie"].split(";")[0]


def requests(app: FastAPI, *paths: str, key: str | None = READ, api: bool = False) -> list[httpx.Response]:
    async def go() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            if api:
                client.headers["Authorization"] = f"Bearer {KEY}"
            elif key is not None:
                await signed_in(client, key)
            return [await client.get(p) for p in paths]

    return asyncio.run(go())


def values(text: str) -> dict[str, list[str]]:
    """Every ``<data data-k=name value=raw>`` of a page, by name (a name may repeat: movers)."""
    out: dict[str, list[str]] = {}
    for k, v in re.findall(r'<data data-k="([^"]*)" value="([^"]*)"', text):
        out.setdefault(html.unescape(k), []).append(html.unescape(v))
    return out


def item(n: int, kind: str = "stage.changed", before: Any = "lead", after: Any = "mql") -> TriggerItem:
    return TriggerItem(f"trg_{n:024x}", kind, NOW - n * 60_000, f"c-{n}", None, before, after, "r")


# --- the page ----------------------------------------------------------------------------------


def test_the_pages_and_streams_need_a_session(store: Store) -> None:
    for answer in requests(build(store), "/console", "/console/live/figures", "/console/live/triggers", key=None):
        assert answer.status_code == 303 and answer.headers["location"].startswith("/console/sign-in?next=")


def test_the_page_shows_the_overview_reports_numbers(store: Store) -> None:
    app = build(store)
    (shown,) = requests(app, "/console")
    (api,) = requests(app, "/v1/reports/overview", api=True)
    assert shown.status_code == 200 and api.status_code == 200
    body, found = api.json(), values(shown.text)
    for stage in body["stages"]:
        assert found[f"stage-count-{stage['stage'] or 'none'}"] == [str(stage["contacts"])]
    assert found["stage-total"] == [str(body["contacts"])] == ["7"]
    assert [float(v) for v in found["engagement"]] == [m["engagement"] for m in body["movers"]] == [40.0, 50.0, 30.0]
    assert [float(v) for v in found["rise"]] == [m["rise"] for m in body["movers"]]
    movers = re.findall(r'data-testid="mover" data-contact-id="([^"]+)"', shown.text)
    assert movers == ["b", "a", "g"]
    assert 'href="/console/contacts/b">b@example.com</a>' in shown.text  # a person's email before an id
    assert "<svg" in shown.text  # the stage chart, drawn on the server
    assert "No events yet" not in shown.text  # contacts are there
    assert 'data-sse-stats="/console/live/figures"' in shown.text and 'data-sse="/console/live/triggers"' in shown.text
    assert found["contacts"] == [str(body["contacts"])]  # the archive's active contacts, until the stream counts


def test_an_unavailable_archive_and_an_empty_deployment_say_what_to_do() -> None:
    (shown,) = requests(build(None), "/console")
    assert shown.status_code == 200
    assert "SCORESTREAM_SINK_IN_API" in shown.text  # the archive's reason, in each section's place
    assert "No events yet: run <code>make demo</code>" in shown.text
    assert "No triggers yet." in shown.text


def test_the_last_triggers_are_shown_on_load_newest_first(store: Store) -> None:
    app = build(store)
    feed = app.state.console_live.feed
    feed.loaded = True
    for n in (3, 2, 1):  # oldest first, as the topic holds them
        feed.publish(item(n))
    feed.publish(
        item(9, "score.threshold_crossed", {"above": False, "threshold": 30.0}, {"above": True, "threshold": 30.0})
    )
    (shown,) = requests(app, "/console")
    ids = re.findall(r'data-trigger-id="([^"]+)"', shown.text)
    assert ids == [item(9).id, item(1).id, item(2).id, item(3).id]
    assert 'href="/console/contacts/c-1"' in shown.text and "moved from lead to mql" in shown.text
    assert "engagement rose above 30" in shown.text and "9 minutes ago" in shown.text
    assert 'id="feed-empty" hidden' in shown.text


@pytest.mark.parametrize(
    ("trigger", "said"),
    [
        (item(1, before=None, after="lead"), "entered lead"),
        (item(1, "score.threshold_crossed", after={"above": False, "threshold": 10}), "engagement fell below 10"),
        (item(1, "rfm.segment_changed", before="loyal", after="at_risk"), "RFM segment loyal → at_risk"),
        (item(1, "contact.disqualified", after={"stage": "disqualified", "flags": ["bot"]}), "disqualified (bot)"),
        (item(1, "cart.abandoned", before=None, after={"timer": "cart", "stage": "lead"}), "cart (in lead)"),
    ],
)
def test_what_happened_in_words(trigger: TriggerItem, said: str) -> None:
    assert page.what_happened(trigger) == said


# --- the figures ---------------------------------------------------------------------------------


def test_the_rate_is_records_between_two_samples_per_second() -> None:
    first = Sample(at_ms=1_000, source_records=100)
    assert rate(None, 100, 1_000) is None
    assert rate(first, 150, 3_000) == 25.0
    assert rate(first, 90, 3_000) == 0.0  # records deleted by retention never make a negative rate


def test_lag_counts_what_the_group_has_not_committed() -> None:
    a, b, c = TopicPartition("t", 0), TopicPartition("t", 1), TopicPartition("u", 0)
    committed = {a: SimpleNamespace(offset=7), b: SimpleNamespace(offset=-1)}
    assert lag_between({a: 10, b: 4, c: 5}, committed).remaining == 3 + 4 + 5  # b and c never committed: whole


def test_the_tail_keeps_the_last_written_of_every_partition() -> None:
    def record(partition: int, offset: int, ts: int, value: bytes | None = None) -> Any:
        body = (
            value
            if value is not None
            else orjson.dumps(
                {
                    "id": f"trg_{ts:024x}",
                    "type": "stage.changed",
                    "at_ms": ts,
                    "contact_id": "c",
                    "account_id": None,
                    "before": None,
                    "after": "lead",
                    "rule": "r",
                }
            )
        )
        return SimpleNamespace(topic="triggers", partition=partition, offset=offset, timestamp=ts, value=body)

    records = [record(0, 0, 10), record(1, 0, 5), record(0, 1, 30), record(1, 1, 20), record(1, 2, 25, b"not json")]
    assert [t.at_ms for t in tail(records, keep=3)] == [10, 20, 30]


def test_the_figures_name_every_value_with_its_text() -> None:
    out = page.figures(Sample(at_ms=1, events_per_s=1234.56, deadletters=3, deadletters_last_hour=1, lag=0), 12_345)
    assert out["events-per-s"] == {"value": 1234.6, "text": "1,234.6"}
    assert out["contacts"] == {"value": 12_345, "text": "12,345"}  # the page's count until the sampler has one
    assert page.figures(Sample(at_ms=1, contacts=7), 12_345)["contacts"]["value"] == 7
    assert out["lag"] == {"value": 0, "text": "0"} and out["deadletters-hour"]["value"] == 1
    assert page.figures(None, 0)["events-per-s"] == {"value": None, "text": "—"}


# --- the streams over a real server ----------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def first_data(lines: Any) -> str:
    async for line in lines:
        if line.startswith("data: "):
            return str(line[len("data: ") :])
    raise AssertionError("the stream ended without data")


def test_the_streams_push_and_end_when_the_server_stops(store: Store) -> None:
    app = build(store)
    live: Live = app.state.console_live
    sampled: list[int] = []

    async def fake_sample() -> Sample:
        sampled.append(1)
        return Sample(at_ms=NOW, events_per_s=2.5, source_records=10, deadletters=1, deadletters_last_hour=0, lag=4)

    live.pulse.sample = fake_sample  # type: ignore[method-assign]
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off", log_config=None))

    async def go() -> tuple[str, str, str, float]:
        serving = asyncio.create_task(server.serve())
        while not server.started:  # noqa: ASYNC110 (uvicorn's flag)
            await asyncio.sleep(0.02)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            await signed_in(client)
            async with (
                client.stream("GET", "/console/live/triggers") as triggers,
                client.stream("GET", "/console/live/figures") as figures,
            ):
                kind = triggers.headers["content-type"]
                assert figures.headers["content-type"] == kind
                got_figures = await first_data(figures.aiter_lines())
                lines = triggers.aiter_lines()
                await asyncio.sleep(0.2)  # the stream has subscribed
                live.feed.publish(item(4))
                got_trigger = await first_data(lines)
                loop = asyncio.get_running_loop()
                began = loop.time()
                server.should_exit = True  # what SIGTERM does
                await asyncio.wait_for(serving, 10)
                return kind, got_figures, got_trigger, loop.time() - began

    kind, got_figures, got_trigger, stop_s = asyncio.run(go())
    assert kind.startswith("text/event-stream")
    body = orjson.loads(got_figures)
    assert body["events-per-s"] == {"value": 2.5, "text": "2.5"} and body["lag"]["value"] == 4
    assert body["contacts"] == {"value": 7, "text": "7"} and sampled  # counted in the archive by the sampler
    assert got_trigger.startswith('<li data-testid="trigger" data-trigger-id="' + item(4).id)
    assert stop_s < 5, f"the server took {stop_s:.1f} s to stop with two streams open"
    assert live.pulse.watchers == 0 and not live.feed.subscribers  # both streams let go


def test_live_stop_ends_the_open_streams(store: Store) -> None:
    app = build(store)
    live: Live = app.state.console_live

    async def go() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            await signed_in(client)

            async def stream() -> httpx.Response:
                return await client.get("/console/live/triggers")

            opened = asyncio.create_task(stream())
            while not live.feed.subscribers:  # noqa: ASYNC110 (the stream has subscribed)
                await asyncio.sleep(0.02)
            await live.stop()
            return [await asyncio.wait_for(opened, 5)]

    (answer,) = asyncio.run(go())
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/event-stream")


# --- the live parts on a real broker -------------------------------------------------------------


def broker_settings(bootstrap: str) -> Settings:
    tag = uuid.uuid4().hex[:8]
    return Settings(
        kafka_bootstrap=bootstrap,
        app_id=f"console-{tag}",
        topic_web=f"web-{tag}",
        topic_email=f"email-{tag}",
        topic_store=f"store-{tag}",
        topic_deadletter=f"dead-{tag}",
        topic_triggers=f"triggers-{tag}",
        partitions=2,
    )


async def produce(settings: Settings, topic: str, values: list[bytes], timestamp_ms: int | None = None) -> None:
    producer = clients.producer(settings, acks="all")
    await producer.start()
    try:
        for value in values:
            await producer.send_and_wait(topic, value, key=b"k", timestamp_ms=timestamp_ms)
    finally:
        await producer.stop()


def test_the_pulse_counts_offsets_on_a_real_broker(kafka_bootstrap: str) -> None:
    """Events/s from two samples' end offsets, dead letters on the topic and in the last hour,
    and the lag of the worker group against what it committed."""
    settings = broker_settings(kafka_bootstrap)
    times = iter([0, 2_000])

    async def go() -> tuple[Sample, Sample]:
        await ensure_topics(settings)
        real = int(time.time() * 1000)
        pulse = Pulse(settings, clock=lambda: real + next(times))
        await produce(settings, settings.topic_web, [b"e"] * 5)
        await produce(settings, settings.topic_deadletter, [b"old"], timestamp_ms=real - 2 * 3_600_000)
        await produce(settings, settings.topic_deadletter, [b"new"] * 2)
        committer = clients.consumer(settings, group_id=settings.app_id, enable_auto_commit=False)
        await committer.start()
        try:  # the worker group read 3 of the 5 web events
            committer.assign(web_partitions(settings))
            ends = await committer.end_offsets(web_partitions(settings))
            await committer.commit({next(tp for tp, end in ends.items() if end > 0): 3})
        finally:
            await committer.stop()
        first = await pulse.sample()
        pulse.latest = first
        await produce(settings, settings.topic_store, [b"e"] * 4)
        second = await pulse.sample()
        await pulse.stop()
        return first, second

    first, second = asyncio.run(go())
    assert first.error is None and second.error is None, (first.error, second.error)
    assert (first.source_records, first.events_per_s, first.lag) == (5, None, 2)
    assert (first.deadletters, first.deadletters_last_hour) == (3, 2)
    assert (second.source_records, second.events_per_s) == (9, 2.0)  # 4 records in 2 s
    assert second.lag == 9 - 3 and second.group == settings.app_id


def web_partitions(settings: Settings) -> list[TopicPartition]:
    return [TopicPartition(settings.topic_web, p) for p in range(settings.partitions)]


def test_the_feed_shows_the_topics_tail_and_pushes_what_comes(kafka_bootstrap: str) -> None:
    settings = broker_settings(kafka_bootstrap)

    def trigger(n: int) -> bytes:
        return orjson.dumps(
            {"id": f"trg_{n:024x}", "type": "stage.changed", "at_ms": NOW + n, "contact_id": f"c-{n}",
             "account_id": None, "before": "lead", "after": "mql", "rule": "r", "cause": None,
             "model_version": "m@1", "v": 1}
        )  # fmt: skip

    async def go() -> tuple[list[TriggerItem], TriggerItem | None]:
        await ensure_topics(settings)
        await produce(settings, settings.topic_triggers, [trigger(n) for n in range(25)])
        feed = TriggerFeed(settings)
        try:
            recent = await feed.recent(wait_s=20)
            with feed.subscribe() as queue:
                await produce(settings, settings.topic_triggers, [trigger(99)])
                pushed = await asyncio.wait_for(queue.get(), 20)
        finally:
            await feed.stop()
        return recent, pushed

    recent, pushed = asyncio.run(go())
    assert [t.at_ms - NOW for t in recent] == list(range(24, 4, -1))  # the last 20, newest first
    assert pushed is not None and pushed.contact_id == "c-99"


def test_the_page_shows_a_recent_sample_and_not_an_old_one(store: Store) -> None:
    app = build(store)
    pulse = app.state.console_live.pulse
    now = int(time.time() * 1000)
    pulse.latest = Sample(at_ms=now, events_per_s=12.5, deadletters=2, deadletters_last_hour=1, lag=30)
    fresh = values(requests(app, "/console")[0].text)
    pulse.latest = Sample(at_ms=now - 60_000, events_per_s=12.5, deadletters=2, deadletters_last_hour=1, lag=30)
    old = values(requests(app, "/console")[0].text)
    assert (fresh["events-per-s"], fresh["lag"], fresh["deadletters-hour"]) == (["12.5"], ["30"], ["1"])
    assert (old["events-per-s"], old["lag"]) == ([""], [""])  # a dash until the stream's first sample


def test_the_contacts_are_counted_when_asked_and_kept_in_between() -> None:
    pulse = Pulse(Settings())
    pulse.latest = Sample(at_ms=1, contacts=5)

    async def count() -> int:
        return 9

    async def broken() -> int:
        raise RuntimeError("archive away")

    async def go() -> list[int | None]:
        pulse.count_contacts = count
        out = [await pulse.contacts(False), await pulse.contacts(True)]
        pulse.count_contacts = broken
        return [*out, await pulse.contacts(True)]

    assert asyncio.run(go()) == [5, 9, 5]  # the last count stands while the archive cannot say


def test_a_stream_lets_go_when_the_browser_leaves(store: Store) -> None:
    """A closed page ends its streams: the feed forgets its queue, and the sampling stops."""
    app = build(store)
    live: Live = app.state.console_live

    async def fake_sample() -> Sample:
        return Sample(at_ms=NOW, source_records=1)

    live.pulse.sample = fake_sample  # type: ignore[method-assign]
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off", log_config=None))

    async def watched() -> tuple[int, int, int, int]:
        serving = asyncio.create_task(server.serve())
        while not server.started:  # noqa: ASYNC110 (uvicorn's flag)
            await asyncio.sleep(0.02)
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
                await signed_in(client)
                async with client.stream("GET", "/console/live/figures") as figures:
                    await first_data(figures.aiter_lines())
                    async with client.stream("GET", "/console/live/triggers"):
                        while not live.feed.subscribers:  # noqa: ASYNC110 (the stream has subscribed)
                            await asyncio.sleep(0.02)
                        during = (live.pulse.watchers, len(live.feed.subscribers))
            for _ in range(100):  # the server sees the disconnects
                if live.pulse.watchers == 0 and not live.feed.subscribers:
                    break
                await asyncio.sleep(0.05)
            return (*during, live.pulse.watchers, len(live.feed.subscribers))
        finally:
            server.should_exit = True
            await asyncio.wait_for(serving, 10)

    assert asyncio.run(watched()) == (1, 1, 0, 0)
