"""The identity fast path (``streams.identity_replica``): which events ingest may send straight to
their contact, the replica's bounds, and the ingest/identity stages using it (on fakes of Faust;
the same on the real broker is ``tests/e2e/test_identity_fast_path.py``)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import streams.agents
import streams.identity_replica
from schemas.settings import Settings
from schemas.state import encode
from scorestream import Event, IdentityLink
from scorestream.identity import anonymous_contact_id, resolve, routing_key
from streams.identity_replica import IdentityReplica, direct_route
from tests.factories import T0, make_event, segment_json
from tests.streams.test_agents_isolation import MODEL, SETTINGS, Worker, record

LINK = IdentityLink(contact_id="u-1", linked_ms=T0, message_id="m-link")


def anon(kind: str = "track", **fields: Any) -> Event:
    base: dict[str, Any] = {"kind": kind, "anonymous_id": "a-1", "user_id": None}
    if kind == "alias":
        base.update(event=None, previous_id="a-1", anonymous_id=None)
    return make_event(**{**base, **fields})


# --- the routing decision ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("link", "event", "expected"),
    [
        pytest.param(None, anon(), None, id="no link known: the identity stage decides"),
        pytest.param(None, anon(user_id="u-9"), None, id="a first link: written by the identity stage"),
        pytest.param(LINK, anon(), "u-1", id="anonymous, linked: the linked contact"),
        pytest.param(LINK, anon(user_id="u-1"), "u-1", id="the linked user again"),
        pytest.param(LINK, anon(user_id="u-2"), "u-2", id="another user: its own contact, the link stays"),
        pytest.param(LINK, anon(user_id="u-1", message_id="m-link"), None, id="the linking event again: merges resent"),
        pytest.param(LINK, anon(user_id="u-2", message_id="m-link"), None, id="same message id, other user"),
        pytest.param(LINK, anon(user_id="a-1"), "a-1", id="user id equal to the anonymous id"),
        pytest.param(LINK, anon("alias", user_id="u-3"), "u-3", id="an alias of a linked previous id"),
        pytest.param(LINK, anon("alias", user_id="u-3", message_id="m-link"), None, id="the linking alias again"),
    ],
)
def test_direct_route_answers_only_where_the_identity_stage_would_only_forward(
    link: IdentityLink | None, event: Event, expected: str | None
) -> None:
    where, key = routing_key(event)
    assert (where, key) == ("identity", "a-1")
    assert direct_route(link, key, event) == expected
    if expected is not None:  # what the identity stage does with the same link: that, and nothing else
        after, routed = resolve(link, key, event)
        assert after is link
        assert [(r.key, r.event, r.merge) for r in routed] == [(expected, event, None)]


USERS = st.sampled_from([None, None, "u-1", "u-2", "a-1"])


@st.composite
def histories(draw: st.DrawFn) -> list[tuple[Event, bool]]:
    """Events of one anonymous id (some redelivered), each with whether the replica knows the link."""
    events: list[Event] = []
    for i in range(draw(st.integers(1, 12))):
        if events and draw(st.integers(0, 3)) == 0:
            events.append(draw(st.sampled_from(events)))  # a redelivery: same message id
            continue
        kind = draw(st.sampled_from(["track", "track", "alias"]))
        user = draw(USERS)
        if kind == "alias":
            user = user or "u-3"
        events.append(anon(kind, user_id=user, message_id=f"m{i}", timestamp_ms=T0 + i))
    return [(e, draw(st.booleans())) for e in events]


@settings(max_examples=300, deadline=None)
@given(histories())
def test_the_fast_path_routes_like_the_identity_stage_with_a_replica_missing_any_link(
    history: list[tuple[Event, bool]],
) -> None:
    """The identity stage (the table, events in order) with and without the fast path: the same
    contacts receive the same events and merges, and the table ends the same. The replica knows
    the table's link or nothing (links are written once), at random."""
    slow_link: IdentityLink | None = None
    fast_link: IdentityLink | None = None
    slow: list[tuple[str, str]] = []
    fast: list[tuple[str, str]] = []
    for event, known in history:
        _, key = routing_key(event)
        slow_link, routed = resolve(slow_link, key, event)
        slow += [(r.key, r.event.message_id if r.event else f"merge->{r.merge and r.merge.target}") for r in routed]
        contact = direct_route(fast_link if known else None, key, event)
        if contact is not None:
            fast.append((contact, event.message_id))
            continue
        fast_link, routed = resolve(fast_link, key, event)
        fast += [(r.key, r.event.message_id if r.event else f"merge->{r.merge and r.merge.target}") for r in routed]
    assert fast == slow
    assert fast_link == slow_link


# --- the replica ---------------------------------------------------------------------------------


@dataclass
class Rec:
    key: bytes
    value: bytes | None


def test_the_replica_follows_changelog_records_and_tombstones() -> None:
    replica = IdentityReplica(10)
    replica.apply(Rec(b"a-1", encode(LINK)))
    assert replica.links["a-1"] == LINK
    assert replica.route("a-1", anon()) == "u-1"
    assert replica.route("a-2", anon(anonymous_id="a-2")) is None
    replica.apply(Rec(b"a-1", None))
    assert replica.route("a-1", anon()) is None
    assert (replica.direct, replica.via_identity) == (1, 2)


def test_the_replica_holds_at_most_its_entries_least_recently_used_out() -> None:
    replica = IdentityReplica(3)
    for i in range(3):
        replica.learn(f"a-{i}", IdentityLink(contact_id=f"u-{i}", linked_ms=T0, message_id=f"m-{i}"))
    assert replica.route("a-0", anon(anonymous_id="a-0")) == "u-0"  # a-0 used: a-1 is now the oldest
    replica.learn("a-3", IdentityLink(contact_id="u-3", linked_ms=T0, message_id="m-3"))
    assert len(replica) == 3
    assert sorted(replica.links) == ["a-0", "a-2", "a-3"]
    assert replica.route("a-1", anon(anonymous_id="a-1")) is None  # evicted: the identity hop again
    off = IdentityReplica(0)
    off.learn("a-0", LINK)
    assert len(off) == 0


# --- the stages ----------------------------------------------------------------------------------


class FastWorker(Worker):
    """The agents on fakes of Faust (``test_agents_isolation.Worker``), with ``settings`` and the
    pipeline kept."""

    def __init__(self, settings: Settings = SETTINGS) -> None:
        real = streams.agents.register

        def register(w: Any, _: Settings, model: Any, *args: Any) -> streams.agents.Pipeline:
            self.pipeline = real(w, settings, MODEL, *args)
            return self.pipeline

        streams.agents.register = register  # type: ignore[assignment]
        try:
            super().__init__()
        finally:
            streams.agents.register = real


def anon_page(anonymous_id: str, user: str | None = None) -> bytes:
    return segment_json(type="page", userId=user, anonymousId=anonymous_id, name="Home", properties={"path": "/"})


def test_ingest_sends_events_of_linked_ids_straight_to_their_contact() -> None:
    worker = FastWorker()
    replica = worker.pipeline.replica
    assert replica is not None
    replica.learn("a-1", LINK)
    values = [anon_page("a-1"), anon_page("a-2"), anon_page("a-1", user="u-7"), anon_page("a-3", user="u-8")]
    worker.run("ingest", [record("events.web", i, v) for i, v in enumerate(values)])

    assert [i.key for i in worker.forwarded("contacts")] == ["u-1", "u-7"]
    assert [i.key for i in worker.forwarded("identity")] == ["a-2", "a-3"]
    assert all(i.env.event is not None and i.env.hops == 0 for i in worker.forwarded("contacts"))
    assert (replica.direct, replica.via_identity) == (2, 2)


def test_with_the_fast_path_off_every_anonymous_event_crosses_the_identity_stage() -> None:
    worker = FastWorker(Settings(identity_fast_path=False))
    assert worker.pipeline.replica is None
    worker.run("ingest", [record("events.web", 0, anon_page("a-1"))])
    assert [i.key for i in worker.forwarded("identity")] == ["a-1"]
    assert worker.forwarded("contacts") == []


def test_the_identity_stage_puts_the_links_it_reads_back_into_the_replica() -> None:
    worker = FastWorker()
    replica = worker.pipeline.replica
    assert replica is not None
    worker.run("ingest", [record("events.web", 0, anon_page("a-1", user="u-1"))])
    worker.run("identity", [record("ss.identity", 0, worker.topics["identity"].sent[0].value)])
    assert worker.tables["identity"]["a-1"]  # the link is written (the changelog brings it to replicas)
    assert "a-1" not in replica.links
    # an eviction (or a replica not caught up): the next event takes the hop, and the link comes back
    worker.run("ingest", [record("events.web", 1, anon_page("a-1"))])
    worker.run("identity", [record("ss.identity", 1, worker.topics["identity"].sent[1].value)])
    assert replica.links["a-1"].contact_id == "u-1"
    worker.run("ingest", [record("events.web", 2, anon_page("a-1"))])
    assert worker.forwarded("contacts")[-1].key == "u-1"
    assert len(worker.topics["identity"].sent) == 2
    assert anonymous_contact_id("a-1") in [i.key for i in worker.forwarded("contacts")]  # the merge


def test_the_replica_reads_again_after_a_failure_that_is_not_the_brokers(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []

    async def follow(*args: Any, **kwargs: Any) -> None:
        calls.append(args[2][0])
        if len(calls) == 1:
            raise RuntimeError("a bug")
        raise asyncio.CancelledError  # the worker stops

    async def no_pause(_: float) -> None:
        pass

    monkeypatch.setattr(streams.identity_replica, "follow", follow)
    monkeypatch.setattr(asyncio, "sleep", no_pause)
    with pytest.raises(asyncio.CancelledError):
        asyncio.run(IdentityReplica(10).run(SETTINGS, "ss-identity-changelog"))
    assert calls == ["ss-identity-changelog", "ss-identity-changelog"]
