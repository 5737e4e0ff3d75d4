"""The identity fast path on the real broker: events of anonymous ids linked earlier reach their
contact without crossing ``<app>.identity``, and the final state equals the replay's (the whole
pipeline in one process, without a fast path), also where a linked contact was merged into
another user after its link was replicated (the replica's link then names a forwarding record)."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections import Counter
from typing import Any

from analytics.replay import replay
from bench.harness import wait_drained
from kafka_io.reader import read_topic
from schemas.model_file import load_model
from schemas.settings import Settings
from schemas.state import decode_heads, decode_state
from tests.e2e.service import Service
from tests.factories import OMIT, iso, segment_json

MODEL = load_model()
N = 12  # anonymous ids linked to a user that stays
M = 6  # anonymous ids linked to a user later merged into another (an alias)
REPLICA_CATCH_UP_S = 3.0  # the worker follows the identity changelog with 20 ms fetches; generous


def settings_of(svc: Service) -> Settings:
    return Settings(
        kafka_bootstrap=svc.bootstrap,
        app_id=f"ss-{svc.suffix}",
        topic_web=svc.topic("web"),
        topic_email=svc.topic("email"),
        topic_store=svc.topic("store"),
        partitions=svc.partitions,
    )


def event(mid: str, at_ms: int, **fields: Any) -> bytes:
    return segment_json(messageId=mid, timestamp=iso(at_ms), **fields)


def internal_items(settings: Settings, topic: str) -> list[tuple[str, str]]:
    """(key, message id) of every event item on an internal topic."""
    out: list[tuple[str, str]] = []

    def apply(_: bytes | None, value: bytes | None) -> None:
        for key, _, head in decode_heads(value or b""):
            if head.event is not None:
                out.append((key, head.event.message_id))

    asyncio.run(read_topic(settings, topic, apply, until_end=True))
    return out


def drain(svc: Service, settings: Settings) -> None:
    topics = [*settings.source_topics, settings.identity_topic, settings.contacts_topic]
    wait_drained(svc.bootstrap, settings.app_id, topics, timeout_s=120, quiet_s=1.0)


def publish_scenario(service: Service) -> tuple[Settings, set[str]]:
    """Links, then merges of linked users, then later events of the linked ids (each step drained);
    returns the settings and the later events' message ids."""
    settings = settings_of(service)
    t = int(time.time() * 1000) - 3_600_000
    # 1. links: a-i -> u-i, b-j -> p-j; some anonymous history before each link
    first = []
    for i in range(N):
        first += [
            ("web", event(f"a{i}-page", t, type="page", userId=None, anonymousId=f"a-{i}")),
            ("web", event(f"a{i}-id", t + 1000, type="identify", userId=f"u-{i}", anonymousId=f"a-{i}", traits={})),
        ]
    for j in range(M):
        first += [
            ("web", event(f"b{j}-page", t, type="page", userId=None, anonymousId=f"b-{j}")),
            ("web", event(f"b{j}-id", t + 1000, type="identify", userId=f"p-{j}", anonymousId=f"b-{j}", traits={})),
        ]
    service.publish((channel, None, raw) for channel, raw in first)
    drain(service, settings)
    # 2. p-j merged into q-j after the replica has b-j -> p-j: the replica's link is now "stale"
    #    (it names a forwarding record), exactly as the identity table's does
    aliases = [
        ("web", event(f"p{j}-alias", t + 2000, type="alias", previousId=f"p-{j}", userId=f"q-{j}", anonymousId=OMIT))
        for j in range(M)
    ]
    service.publish((channel, None, raw) for channel, raw in aliases)
    drain(service, settings)
    time.sleep(REPLICA_CATCH_UP_S)

    # 3. later events of the linked ids: anonymous only, and carrying the user id as well
    later = []
    for i in range(N):
        later += [
            ("web", event(f"a{i}-late", t + 5000, type="page", userId=None, anonymousId=f"a-{i}")),
            ("email", event(f"a{i}-late-u", t + 6000, userId=f"u-{i}", anonymousId=f"a-{i}")),
        ]
    for j in range(M):
        later += [("web", event(f"b{j}-late", t + 5000, type="track", event="Demo Requested", userId=None,
                                anonymousId=f"b-{j}"))]  # fmt: skip
    service.publish((channel, None, raw) for channel, raw in later)
    drain(service, settings)
    return settings, {f"a{i}-late" for i in range(N)} | {f"a{i}-late-u" for i in range(N)} | {
        f"b{j}-late" for j in range(M)
    }


def test_linked_ids_skip_the_identity_topic_and_end_as_without_the_fast_path(service: Service) -> None:
    settings, late_ids = publish_scenario(service)
    on_identity = internal_items(settings, settings.identity_topic)
    seen = Counter(mid for _, mid in on_identity)
    assert seen["a0-id"] == 1 and seen["b0-id"] == 1  # the links crossed the identity stage
    assert {mid for mid in seen if mid in late_ids} == set()  # the later events did not
    on_contacts: dict[str, set[str]] = {}
    for key, mid in internal_items(settings, settings.contacts_topic):
        on_contacts.setdefault(mid, set()).add(key)
    assert all(on_contacts[f"a{i}-late"] == {f"u-{i}"} for i in range(N))  # straight to the linked contact
    assert all(on_contacts[f"a{i}-late-u"] == {f"u-{i}"} for i in range(N))
    assert all(on_contacts[f"b{j}-late"] == {f"p-{j}", f"q-{j}"} for j in range(M))  # to p-j, forwarded to q-j

    live = assert_same_as_replay(settings)
    for j in range(M):  # the forwarded event is in the user the linked contact was merged into
        owner = decode_state(live[f"q-{j}"])
        folded = {hit.mid for hit in owner.hits} | set(owner.folded_ids)
        assert {f"b{j}-late", f"b{j}-page"} <= folded
        assert decode_state(live[f"p-{j}"]).merged_into == f"q-{j}"


def assert_same_as_replay(settings: Settings) -> dict[str, bytes]:
    """The final state equals the one-process replay's (no fast path), contact by contact (a
    merged contact: the same owner; what a forwarding record kept differs between batchings, with
    the fast path or without)."""
    result = replay(settings, MODEL, live_model=MODEL)
    assert result.diff.changed == 0, result.diff.examples
    assert result.diff.only_live == [] and result.diff.only_replay == []
    assert set(result.live) == set(result.states)
    for key in result.states:
        live, again = decode_state(result.live[key]), decode_state(result.states[key])
        assert live.merged_into == again.merged_into, key
        if live.merged_into is not None:  # a forwarding record: what it kept is no one's state (either way)
            continue
        for state in (live, again):
            state.journey, state.ticked_ms, state.rfm_segment = None, None, None
        assert dataclasses.asdict(live) == dataclasses.asdict(again), key
    return result.live
