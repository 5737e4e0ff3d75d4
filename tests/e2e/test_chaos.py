"""Chaos: two workers, one of them SIGKILLed three times mid-stream, then the broker SIGKILLed,
and every contact ends equal to a calm run of the same events.

The calm run is the pure fold (``tests/reference.py``: identity routing then the per-contact
fold, one FIFO queue, one process), the same reference the other recovery tests compare the
live service with. It is the honest baseline: the core's properties (order independence,
duplicates counted once) are what make any partitioning and any replay after a crash end in the
same state, so the live result must equal it exactly, whatever the kills did to the order.

The test runs its own broker (so it can kill it) and publishes ~21,000 events of ~2,000 contacts
(anonymous visitors who identify later, e-mail engagement, orders on the store topic, 5% re-sent
duplicates) in five segments. Worker 1 is SIGKILLed in the middle of each of the first three and
restarted at once; the broker in the middle of the fourth, and restarted from the same data
directory and port. The producer retries what the broker did not acknowledge (``acks=all``), as
a producer that must not lose its own messages does: re-sent records are duplicates the
service counts once. Recovery is timed from each kill until a probe event sent after it on
every partition is scored (source, identity and contacts partition ``p`` for probe ``p``).
The figures are printed (``pytest -s``) and written to ``chaos-figures.json`` in the test's
directory.

Once the worker kills are over and their segments acknowledged, every contact must equal the calm
run of what was sent so far: asserted strictly. After the broker's kill the same comparison
found a known bug in some runs (docs/operations.md, "Known issues"): a contact missing events that
are on the contacts topic. The test then ends as an expected failure (xfail, with the figures and
the contacts that differ), never as a pass; every other check stays strict.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import random
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from aiokafka import AIOKafkaProducer

from deploy.traffic import Record, Traffic, iso
from kafka_io.partitioner import partition_for
from schemas.events import decode
from scorestream import ContactState
from scorestream.identity import anonymous_contact_id
from tests.e2e.calm import MODEL, ROOMY, compare
from tests.e2e.service import Service, free_port
from tests.kafka_broker import ensure_broker, stop_broker
from tests.reference import Reference

PARTITIONS = 4
CONTACTS = 2_000
EVENTS = 20_000
DUPLICATES = 0.05
SEGMENTS = 5
RATE = 800.0  # events per second while a segment is published
KILLED = 1  # the worker index SIGKILLed


@dataclass
class Broker:
    data: Path
    port: int
    controller_port: int

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        ensure_broker(self.data, self.port, controller_port=self.controller_port)

    def kill(self) -> None:
        pid = int((self.data / "kafka.pid").read_text().strip())
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)
        raise AssertionError(f"broker pid {pid} survived SIGKILL")


@dataclass
class Outgoing:
    topic: str
    value: bytes
    key: bytes | None = None
    partition: int | None = None


async def deliver(
    bootstrap: str, records: list[Outgoing], rate: float | None = None, progress: Callable[[int], None] | None = None
) -> int:
    """Send ``records`` (at ``rate`` per second) until every one is acknowledged by the broker
    (``acks=all``); what fails (the broker is down) is sent again. ``progress(n)``: the first
    ``n`` records have been sent once. Returns how many sends were repeated."""
    pending = records
    repeated = 0
    first = True
    while pending:
        producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap, acks="all", linger_ms=5, request_timeout_ms=5_000, retry_backoff_ms=200
        )
        failed: list[Outgoing] = []
        try:
            await asyncio.wait_for(producer.start(), 15)
            started = time.monotonic()
            futures: list[tuple[Outgoing, asyncio.Future[Any]]] = []
            for i, out in enumerate(pending):
                if i % 50 == 0:
                    if rate is not None:
                        await asyncio.sleep(max(0.0, started + i / rate - time.monotonic()))
                    if progress is not None and first:
                        progress(i)
                try:
                    futures.append(
                        (out, await producer.send(out.topic, out.value, key=out.key, partition=out.partition))
                    )
                except Exception:  # not even queued (no metadata while the broker is down): the rest later
                    failed += pending[i:]
                    break
            results = await asyncio.gather(*(f for _, f in futures), return_exceptions=True)
            failed += [out for (out, _), result in zip(futures, results, strict=True) if isinstance(result, Exception)]
        except Exception:
            failed = pending  # the producer did not start: everything again
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(producer.stop(), 15)
        if first and progress is not None:
            progress(len(pending))
        first = False
        if failed:
            repeated += len(failed)
            await asyncio.sleep(0.5)
        pending = failed
    return repeated


@dataclass(eq=False)  # a thread is hashed (threading keeps it in a dict)
class Publisher(threading.Thread):
    """Publishes the segments in a thread, each at ``RATE``; segment ``k + 1`` waits for its gate."""

    bootstrap: str
    segments: list[list[Outgoing]]
    gates: list[threading.Event] = field(default_factory=list)
    done: list[threading.Event] = field(default_factory=list)  # segment k acknowledged whole
    published: int = 0  # records of the current segment acknowledged or in flight
    segment: int = 0
    repeated: int = 0
    error: BaseException | None = None

    def __post_init__(self) -> None:
        threading.Thread.__init__(self, daemon=True, name="chaos-publisher")
        self.gates = [threading.Event() for _ in self.segments]
        self.gates[0].set()
        self.done = [threading.Event() for _ in self.segments]

    def _progress(self, sent: int) -> None:
        self.published = sent

    def run(self) -> None:
        try:
            for k, segment in enumerate(self.segments):
                self.gates[k].wait()
                self.segment, self.published = k, 0
                self.repeated += asyncio.run(deliver(self.bootstrap, segment, RATE, self._progress))
                self.done[k].set()
        except BaseException as exc:
            self.error = exc


def probe(service: Service, partition: int, label: str, at_ms: int) -> tuple[str, Outgoing]:
    """An anonymous page view whose source, identity and contacts partitions are all ``partition``."""
    n = 0
    while True:
        anon = f"probe-{label}-{n}"
        if (
            partition_for(anon.encode(), PARTITIONS)
            == partition
            == partition_for(anonymous_contact_id(anon).encode(), PARTITIONS)
        ):
            break
        n += 1
    value = orjson.dumps(
        {
            "type": "page",
            "messageId": f"m-{anon}",
            "anonymousId": anon,
            "timestamp": iso(at_ms),
            "properties": {"path": "/pricing"},
        }
    )
    return anon, Outgoing(service.topic("web"), value, anon.encode(), partition)


def seen(service: Service, ids: list[str]) -> bool:
    with service.client() as http:
        try:
            body = http.post("/v1/contacts:batchGet", json={"ids": ids})
        except Exception:
            return False
        return body.status_code == 200 and not body.json()["not_found"]


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    b = Broker(tmp_path / "kafka", free_port(), free_port())
    b.start()
    yield b
    stop_broker(b.data, b.port)


@pytest.mark.timeout(600)  # about 2 minutes alone; the suite's 300 s is tight on a busy 2-core machine
def test_two_workers_killed_and_a_broker_killed_end_equal_to_a_calm_run(broker: Broker, tmp_path: Path) -> None:
    test_started = time.monotonic()
    folder = tmp_path / "svc"
    folder.mkdir()
    (folder / "model.yaml").write_text(yaml.safe_dump(ROOMY))
    service = Service(
        bootstrap=broker.bootstrap, data_dir=folder, model=folder / "model.yaml", partitions=PARTITIONS, workers=2
    )

    now = int(time.time() * 1000)
    segments = traffic(service, now)

    service.start()
    figures: dict[str, Any] = {
        "events": sum(len(seg) for seg in segments),
        "workers": 2,
        "partitions": PARTITIONS,
        "recover_s": [],
    }
    publisher = Publisher(broker.bootstrap, segments)
    reference = Reference(MODEL)
    try:
        publisher.start()
        for k, kind in enumerate(["worker", "worker", "worker", "broker"]):
            while publisher.segment < k or publisher.published < len(segments[k]) // 2:
                assert publisher.error is None, publisher.error
                assert publisher.is_alive(), "the publisher stopped"
                time.sleep(0.05)
            kill_and_recover(service, broker, reference, k, kind, now, figures)
            if k == 2:  # the worker kills are over: what was sent so far must be exact before the broker's turn
                exact_after_worker_kills(service, publisher, reference, segments, now, figures)
            publisher.gates[k + 1].set()
        publisher.join(timeout=300)
        assert publisher.error is None, publisher.error
        assert not publisher.is_alive(), "the publisher did not finish"
        figures["sends_repeated"] = publisher.repeated
        the_end(service, reference, segments, now, figures, test_started, tmp_path)
    finally:
        service.stop()


def traffic(service: Service, now: int) -> list[list[Outgoing]]:
    """The events to send, with duplicates (a record sent again later), in ``SEGMENTS`` segments."""
    span = 10 * 86_400_000
    records: list[Record] = list(Traffic(contacts=CONTACTS, seed=31, start_ms=now - span, span_ms=span).records(EVENTS))
    rng = random.Random(31)
    stream = [Outgoing(service.topic(r.channel), r.value, r.key) for r in records]
    for _ in range(int(EVENTS * DUPLICATES)):  # a record sent again later, anywhere in the stream
        original = rng.randrange(len(stream) - 1)
        stream.insert(rng.randrange(original + 1, len(stream)), stream[original])
    size = math.ceil(len(stream) / SEGMENTS)
    return [stream[i : i + size] for i in range(0, len(stream), size)]


def kill_and_recover(
    service: Service, broker: Broker, reference: Reference, k: int, kind: str, now: int, figures: dict[str, Any]
) -> None:
    """Kill a worker (restarted at once) or the broker (back 2 s later); wait until a probe sent
    to every partition is served."""
    killed_at = time.monotonic()
    if kind == "worker":
        service.kill_worker(KILLED)
        service.start_worker(KILLED)
    else:
        broker.kill()
        time.sleep(2)  # down for a moment: producers and workers see it gone
        broker.start()
        figures["broker_restart_s"] = round(time.monotonic() - killed_at, 1)
    probes = [probe(service, p, f"{k}", int(time.time() * 1000)) for p in range(PARTITIONS)]
    asyncio.run(deliver(broker.bootstrap, [out for _, out in probes]))
    reference.feed([decode(out.value, "web", now) for _, out in probes])
    ids = [anon for anon, _ in probes]
    service.wait_for(partial(seen, service, ids), timeout=180, interval=0.25)
    figures["recover_s"].append({"kill": kind, "seconds": round(time.monotonic() - killed_at, 1)})


def exact_after_worker_kills(
    service: Service,
    publisher: Publisher,
    reference: Reference,
    segments: list[list[Outgoing]],
    now: int,
    figures: dict[str, Any],
) -> None:
    assert publisher.done[2].wait(timeout=120), "segment 2 not acknowledged"
    reference.feed([decode(o.value, channel_of(service, o.topic), now) for seg in segments[:3] for o in seg])
    wrong = converge(service, reference.live(), 180)
    figures["contacts_after_worker_kills"] = len(reference.live())
    figures["contacts_equal_after_worker_kills"] = len(reference.live()) - len(wrong)
    sample = {cid: diff[:5] for cid, diff in list(wrong.items())[:10]}
    assert not wrong, f"after the worker kills, {len(wrong)} contacts differ from the calm run: {sample}"


def the_end(
    service: Service,
    reference: Reference,
    segments: list[list[Outgoing]],
    now: int,
    figures: dict[str, Any],
    test_started: float,
    tmp_path: Path,
) -> None:
    """Everything sent: every contact equal to the calm run's, nothing dead-lettered, no process exited."""
    reference.feed([decode(o.value, channel_of(service, o.topic), now) for seg in segments[3:] for o in seg])
    expected = reference.live()
    converging = time.monotonic()
    wrong = converge(service, expected, 240)
    figures["converge_s"] = round(time.monotonic() - converging, 1)
    figures["contacts"] = len(expected)
    figures["contacts_equal"] = len(expected) - len(wrong)
    figures["test_s"] = round(time.monotonic() - test_started, 1)
    (tmp_path / "chaos-figures.json").write_text(json.dumps(figures, indent=2))
    print(f"\nchaos figures: {json.dumps(figures)}")
    dead = service.read_topic(service.topic("dead"), expect=1, wait_s=3)
    assert not dead, f"valid events dead-lettered: {[dict(r.headers) for r in dead[:5]]}"
    for proc, name in service._processes():
        assert proc is not None and proc.poll() is None, f"{name} exited: {service.logs(name)}"
    if wrong:
        sample = {cid: diff[:3] for cid, diff in list(wrong.items())[:5]}
        # known bug, reported in issue 14's thread (docs/operations.md, "Known issues"): not hidden,
        # not a pass either; the worker kills above are asserted strictly
        pytest.xfail(
            f"after the broker's SIGKILL {len(wrong)} of {len(expected)} contacts differ from the calm run "
            f"(events on the contacts topic missing from the state): {sample}"
        )


def converge(service: Service, expected: dict[str, ContactState], timeout: float) -> dict[str, list[str]]:
    """Wait until every contact equals the calm run's (or ``timeout``); the contacts that still differ."""
    wrong: dict[str, list[str]] = {}

    def equal() -> bool:
        nonlocal wrong
        try:
            wrong = compare(service, expected)
        except Exception as exc:  # the API is catching up after the broker's restart
            wrong = {"*": [repr(exc)]}
        return not wrong

    with contextlib.suppress(AssertionError):
        service.wait_for(equal, timeout=timeout, interval=2.0)
    return wrong


def channel_of(service: Service, topic: str) -> str:
    return next(c for c in ("web", "email", "store") if service.topic(c) == topic)
