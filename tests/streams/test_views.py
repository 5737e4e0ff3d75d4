"""The contacts stage's views feed (``streams/views.py``): at once for a contact not sent recently,
at most every interval for a busy one (its latest state), everything waiting before a commit."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any, cast

from kafka_io import clients
from kafka_io.partitioner import partition_for
from kafka_io.reader import read_topic
from kafka_io.topics import ensure_topics
from schemas.settings import Settings
from schemas.state import Batch, Item, encode
from schemas.view import decode_view, encode_view
from scorestream import ContactState, apply_events
from scorestream.view import view_of
from streams.views import ViewFeed, _FlushBeforeCommit, rebuild_views
from tests.factories import DEFAULT_MODEL, T0, make_event
from tests.streams.test_agents_isolation import FakeTopic, Worker, contact_event, record

PARTITIONS = 4
INTERVAL = 30


class Clock:
    def __init__(self) -> None:
        self.ms = 1_000

    def __call__(self) -> int:
        return self.ms


def feed() -> tuple[ViewFeed, FakeTopic, Clock]:
    topic, clock = FakeTopic("views"), Clock()
    return ViewFeed(cast(Any, topic), DEFAULT_MODEL, PARTITIONS, INTERVAL, clock), topic, clock


def state(user: str, *paths: str) -> ContactState:
    events = [
        make_event(kind="page", event=None, channel="web", user_id=user, path=p, timestamp_ms=T0 + i)
        for i, p in enumerate(paths)
    ]
    return apply_events(None, user, events, DEFAULT_MODEL)


def test_a_contact_not_sent_recently_is_sent_at_once_keyed_and_partitioned_like_the_contacts_topic() -> None:
    views, topic, _ = feed()
    ann = state("ann", "/pricing")
    views.add("ann", ann)
    [sent] = topic.sent
    assert sent.key == b"ann" and sent.partition == partition_for(b"ann", PARTITIONS)
    assert decode_view(sent.value) == view_of(ann, DEFAULT_MODEL)


def test_a_busy_contact_is_sent_at_most_every_interval_with_its_latest_state() -> None:
    views, topic, clock = feed()
    views.add("ann", state("ann", "/"))
    clock.ms += 5
    views.add("ann", state("ann", "/", "/pricing"))
    clock.ms += 5
    latest = state("ann", "/", "/pricing", "/demo")
    views.add("ann", latest)
    views.add("bob", state("bob", "/"))  # another contact is not held back
    assert [s.key for s in topic.sent] == [b"ann", b"bob"]
    clock.ms += INTERVAL - 11
    views.flush_due()  # 29 ms after ann's view: not yet
    assert len(topic.sent) == 2
    clock.ms += 1
    views.flush_due()
    assert [s.key for s in topic.sent] == [b"ann", b"bob", b"ann"]
    assert decode_view(topic.sent[-1].value) == view_of(latest, DEFAULT_MODEL)
    views.flush_due()  # nothing waits any more
    assert len(topic.sent) == 3
    clock.ms += 5
    views.add("ann", latest)  # sent 5 ms ago: waits again
    assert len(topic.sent) == 3 and "ann" in views.pending


def test_a_contact_quiet_for_an_interval_is_sent_at_once_again_and_forgotten() -> None:
    views, topic, clock = feed()
    views.add("ann", state("ann", "/"))
    clock.ms += INTERVAL
    views.add("ann", state("ann", "/pricing"))
    assert len(topic.sent) == 2 and not views.pending
    clock.ms += INTERVAL
    views.flush_due()
    assert not views.sent  # the memory holds only contacts sent within the interval


def test_everything_waiting_is_sent_when_a_commit_begins() -> None:
    views, topic, clock = feed()
    for user in ("ann", "bob"):
        views.add(user, state(user, "/"))
    clock.ms += 1
    waiting = {user: state(user, "/", "/pricing") for user in ("ann", "bob")}
    for user, s in waiting.items():
        views.add(user, s)
    assert len(topic.sent) == 2
    _FlushBeforeCommit(views).on_commit_initiated(consumer=None)
    assert len(topic.sent) == 4 and not views.pending
    assert {s.key: decode_view(s.value) for s in topic.sent[2:]} == {
        u.encode(): view_of(s, DEFAULT_MODEL) for u, s in waiting.items()
    }


def test_a_merged_contact_and_a_removed_one_reach_the_topic() -> None:
    views, topic, _ = feed()
    merged = state("anonymous:a-1", "/pricing")
    merged.merged_into = "ann"
    views.add("anonymous:a-1", merged)
    views.add("gone", None)
    view = decode_view(topic.sent[0].value)
    assert view.merged_into == "ann" and view.fit is None and view.engagement == []
    assert topic.sent[1].key == b"gone" and topic.sent[1].value == b""  # the fake records None as b""


def test_a_view_that_cannot_be_built_is_logged_and_never_raises() -> None:
    views, topic, _ = feed()
    broken = state("ann", "/")
    broken.hits = cast(Any, None)
    views.add("ann", broken)
    assert topic.sent == [] and views.failed == 1
    views.add("bob", state("bob", "/"))
    assert [s.key for s in topic.sent] == [b"bob"]


def test_the_contacts_agent_sends_a_view_of_every_contact_it_writes() -> None:
    worker = Worker()
    batch = [record("ss.contacts", 0, encode(Batch(items=[Item(key=u, env=contact_event(u)) for u in ("u1", "u2")])))]
    worker.run("contacts", batch)
    sent = worker.topics["views"].sent
    assert sorted(s.key or b"" for s in sent) == [b"u1", b"u2"]
    for s in sent:
        view = decode_view(s.value)
        assert view.contact_id == (s.key or b"").decode() and view.engagement_ms == T0


def test_a_rebuild_sends_the_latest_view_of_every_contact_the_views_topic_lacks(kafka_bootstrap: str) -> None:
    """After an upgrade from a build without views: views from the contacts changelog, in its order
    (the latest state wins), tombstones included; a contact the topic already has is left alone."""
    settings = Settings(kafka_bootstrap=kafka_bootstrap, app_id=f"views-{uuid.uuid4().hex[:8]}")
    old, new = state("ann", "/"), state("ann", "/", "/pricing")
    bob, cyd = state("bob", "/demo"), state("cyd", "/")
    changelog = [(b"ann", encode(old)), (b"bob", encode(bob)), (b"ann", encode(new)), (b"gone", None)]
    changelog += [(b"cyd", encode(cyd)), (b"junk", b"\x00not a state")]
    present = encode_view(view_of(cyd, DEFAULT_MODEL))

    async def go() -> tuple[tuple[int, int], list[tuple[bytes | None, bytes | None]]]:
        await ensure_topics(settings)
        producer = clients.producer(settings)
        await producer.start()
        try:
            await producer.send_and_wait(settings.views_topic, present, key=b"cyd", partition=partition_for(b"cyd", 4))
            for key, value in changelog:
                topic = settings.changelog_topic("contacts")
                await producer.send_and_wait(topic, value, key=key, partition=partition_for(key, 4))
        finally:
            await producer.stop()
        counts = await rebuild_views(settings, DEFAULT_MODEL)
        views: list[tuple[bytes | None, bytes | None]] = []
        await read_topic(settings, settings.views_topic, lambda k, v: views.append((k, v)), until_end=True)
        return counts, views

    counts, views = asyncio.run(go())
    assert counts == (4, 1)  # ann twice, bob, the tombstone; cyd had a view; the junk state is skipped
    latest = dict(views)
    assert decode_view(latest[b"ann"] or b"") == view_of(new, DEFAULT_MODEL)
    assert decode_view(latest[b"bob"] or b"") == view_of(bob, DEFAULT_MODEL)
    assert latest[b"gone"] is None and latest[b"cyd"] == present and b"junk" not in latest
    assert [k for k, _ in views].count(b"cyd") == 1
