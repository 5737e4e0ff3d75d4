"""Poison records on the worker's internal topics, on the real broker: each is dead-lettered alone
(original bytes, reason, exception class, source topic/partition/offset), every valid event around
it is scored, and no agent crashes or is restarted by Faust (which would acknowledge its batch).

Garbage bytes and well-formed envelopes the stage cannot apply (a tick on the identity topic, an
envelope without content, a merge loop, a newer envelope version, a member batch of the wrong
shape) are published straight to ``<app>.identity``, ``<app>.contacts`` and ``<app>.accounts``,
between two waves of valid events on the source topics. The hostile *source* messages (the
decoder's refusals) are ``tests/e2e/test_hostile.py``'s.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import orjson
import pytest
from aiokafka import AIOKafkaProducer

from schemas.state import Batch, Envelope, Item, encode
from scorestream.fold import Tick
from tests.e2e.service import Service
from tests.factories import make_event

NOW = int(time.time() * 1000)


@pytest.fixture(scope="module")
def service(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    svc = Service(bootstrap=kafka_bootstrap, data_dir=Path(tmp_path_factory.mktemp("isolation")))
    svc.start()
    yield svc
    svc.stop()


def page(user: str, n: int) -> bytes:
    return orjson.dumps(
        {
            "type": "page",
            "messageId": f"{user}-{n}",
            "userId": user,
            "anonymousId": f"anon-{user}",
            "timestamp": _iso(NOW - 60_000 + n),
            "properties": {"path": "/pricing"},
        }
    )


def _iso(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms / 1000)) + f".{ms % 1000:03d}Z"


def batch(key: str, *envs: Envelope) -> bytes:
    return encode(Batch(items=[Item(key=key, env=env) for env in envs]))


def poison(ns: str) -> list[tuple[str, str, bytes]]:
    """(topic, expected reason, value) of every poison record."""
    event = make_event(kind="page", event=None, channel="web", user_id="p-user", path="/")
    future = msgspec.msgpack.encode({"items": [["p-v", {"kind": "event", "v": 99}]], "v": 1})
    members = msgspec.msgpack.encode({"items": [{"contact_id": 42}], "v": 1})
    return [
        (f"{ns}.identity", "internal_decode", b"\x00 garbage on identity"),
        (f"{ns}.identity", "not_an_event", batch("anon-x", Envelope(kind="tick", tick=Tick(NOW)))),
        (f"{ns}.contacts", "internal_decode", b"\xc1 garbage on contacts"),
        (f"{ns}.contacts", "empty_envelope", batch("p-empty", Envelope(kind="event"))),
        (f"{ns}.contacts", "merge_loop", batch("p-loop", Envelope(kind="event", event=event, hops=50))),
        (f"{ns}.contacts", "internal_decode", future),
        (f"{ns}.accounts", "internal_decode", b"\xff garbage on accounts"),
        (f"{ns}.accounts", "internal_decode", members),
    ]


async def publish(bootstrap: str, records: list[tuple[str, bytes | None, bytes]]) -> list[tuple[str, int, int]]:
    """Send ``(topic, key, value)`` in order; their (topic, partition, offset)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        out = []
        for topic, key, value in records:
            meta: Any = await producer.send_and_wait(topic, value, key=key)
            out.append((topic, meta.partition, meta.offset))
        return out
    finally:
        await producer.stop()


def test_poison_on_internal_topics_is_dead_lettered_alone(service: Service) -> None:
    ns = f"ss-{service.suffix}"
    web = service.topic("web")
    first = [f"before-{i}" for i in range(40)]
    second = [f"after-{i}" for i in range(40)]
    bad = poison(ns)
    records: list[tuple[str, bytes | None, bytes]] = [(web, u.encode(), page(u, 1)) for u in first]
    for i, (topic, _, value) in enumerate(bad):  # each poison record among valid events
        records.append((topic, f"poison-{i}".encode(), value))
        records += [(web, u.encode(), page(u, 2 + i)) for u in first[i * 5 : i * 5 + 5]]
    records += [(web, u.encode(), page(u, 1)) for u in second]
    where = asyncio.run(publish(service.bootstrap, records))
    coordinates = {value: spot for (_, _, value), spot in zip(records, where, strict=True)}

    with service.client() as http:

        def scored() -> list[str]:
            return [u for u in first + second if http.get(f"/v1/contacts/{u}").status_code != 200]

        service.wait_for(lambda: not scored(), timeout=120)
        engaged = http.get(f"/v1/contacts/{first[0]}").json()
        assert engaged["engagement"]["score"] > 0
        assert len(engaged["identity"]["anonymous_ids"]) == 1  # through the identity stage

    dead = service.read_topic(service.topic("dead"), expect=len(bad), wait_s=60)
    by_value = {r.value: (dict(r.headers), r) for r in dead}
    for topic, reason, value in bad:
        assert value in by_value, f"{reason} on {topic} not dead-lettered"
        headers, _ = by_value[value]
        text = {k: v.decode() for k, v in headers.items()}
        assert text["scorestream.reason"] == reason, text
        assert text["scorestream.exception"], text  # the class of what failed
        src = coordinates[value]
        assert (text["scorestream.source.topic"], int(text["scorestream.source.partition"])) == src[:2]
        assert int(text["scorestream.source.offset"]) == src[2]
    assert len(dead) == len(bad)  # nothing else: every valid event went through

    log = service.logs("worker") + (service.data_dir / "worker.log").read_text()
    assert "Crashed reason" not in log and "Restarting dead" not in log
    assert service.worker is not None and service.worker.poll() is None
