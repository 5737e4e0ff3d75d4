"""The worker's write-behind state cache on the real broker (``streams/state_cache.py``).

A contact changed by many batches within one flush interval is written to the changelog fewer
times than it changed, and its last record is its whole state; a worker SIGKILLed while its
changed states are only in memory loses nothing (the restarted worker folds the uncommitted
records again onto the last written states). Both are checked on the changelog, what a restore
or a recovery reads: the last record of each contact is the pure fold's state of its events.. The flush interval is long here (5 s, the commit
interval) so that "within one interval" and "between flushes" are wide windows.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
import yaml
from aiokafka import AIOKafkaProducer

from deploy.traffic import Traffic
from kafka_io.clients import KafkaConnection
from kafka_io.reader import read_topic
from schemas.events import decode
from schemas.state import decode_state, encode
from scorestream import ContactState, Model
from tests.e2e.calm import ROOMY
from tests.e2e.service import Service
from tests.factories import iso, segment_json
from tests.reference import Reference

FLUSH_MS = 5000
# no lifecycle: no ticks, so the worker's states are exactly the pure fold's (compared byte for byte)
TIMELESS = {k: v for k, v in ROOMY.items() if k not in ("lifecycle", "flags", "personas", "triggers")}
MODEL = Model.from_dict(TIMELESS)


@pytest.fixture(scope="module")
def service(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    folder = Path(tmp_path_factory.mktemp("state-cache"))
    (folder / "model.yaml").write_text(yaml.safe_dump(TIMELESS))
    svc = Service(
        bootstrap=kafka_bootstrap,
        data_dir=folder,
        model=folder / "model.yaml",
        partitions=2,
        extra_env={"SCORESTREAM_COMMIT_INTERVAL_S": str(FLUSH_MS / 1000), "SCORESTREAM_STATE_FLUSH_MS": str(FLUSH_MS)},
    )
    svc.start()
    yield svc
    svc.stop()


def changelog(service: Service) -> list[tuple[bytes, bytes]]:
    """Every (key, value) of the contacts changelog so far (up to its end offsets now)."""
    out: list[tuple[bytes, bytes]] = []

    def apply(key: bytes | None, value: bytes | None) -> None:
        assert key is not None and value is not None
        out.append((key, value))

    topic = f"ss-{service.suffix}-contacts-changelog"
    asyncio.run(read_topic(KafkaConnection(service.bootstrap), topic, apply, until_end=True))
    return out


def converge(service: Service, reference: Reference) -> list[tuple[bytes, bytes]]:
    """Wait until the changelog's last record of every contact the calm run knows is the calm
    run's state (what a restore or recovery would read); returns the changelog."""
    expected = {key: encode(state) for key, state in reference.live().items()}
    wrong: list[str] = []
    records: list[tuple[bytes, bytes]] = []

    def converged() -> bool:
        nonlocal wrong, records
        records = changelog(service)
        last = {key.decode(): value for key, value in records}
        wrong = [key for key, raw in expected.items() if last.get(key) != raw]
        return not wrong

    try:
        service.wait_for(converged, timeout=120, interval=1.0)
    except AssertionError:
        last = {key.decode(): value for key, value in records}
        sample = {key: fields_differing(last.get(key), reference.live()[key]) for key in wrong[:3]}
        raise AssertionError(f"{len(wrong)} of {len(expected)} contacts differ, e.g. {sample}") from None
    return records


def fields_differing(raw: bytes | None, want: ContactState) -> list[str] | str:
    if raw is None:
        return "missing"
    got, expected = msgspec.to_builtins(decode_state(raw)), msgspec.to_builtins(want)
    return [f"{f}: {got.get(f)!r:.300} != {v!r:.300}" for f, v in expected.items() if got.get(f) != v]


async def trickle(service: Service, values: list[bytes], gap_s: float) -> None:
    """Publish ``values`` to the web topic one at a time, ``gap_s`` apart (each its own batch)."""
    producer = AIOKafkaProducer(bootstrap_servers=service.bootstrap, acks="all", linger_ms=0)
    await producer.start()
    try:
        for value in values:
            await (await producer.send(service.topic("web"), value, key=b"busy"))
            await asyncio.sleep(gap_s)
    finally:
        await producer.stop()


def test_a_contact_changed_by_many_batches_is_written_fewer_times_and_whole(service: Service) -> None:
    now = int(time.time() * 1000)
    n = 30
    values = [
        segment_json(type="page", userId="busy", anonymousId=None, name="Home", timestamp=iso(now - 60_000 + i))
        for i in range(n)
    ]
    reference = Reference(MODEL)
    reference.feed([decode(v, "web", now) for v in values])
    started = time.monotonic()
    asyncio.run(trickle(service, values, gap_s=0.03))  # about a second: 30 batches
    assert time.monotonic() - started < 3 * FLUSH_MS / 1000, "too slow to test coalescing"
    records = [
        value for key, value in converge(service, reference) if key == b"busy"
    ]  # its last record: its whole state
    assert 1 <= len(records) < n // 3, f"{len(records)} changelog records for {n} updates"


def test_a_worker_killed_between_flushes_loses_nothing(service: Service) -> None:
    now = int(time.time() * 1000)
    span = 5 * 86_400_000
    reference = Reference(MODEL)
    first = list(Traffic(contacts=150, seed=31, start_ms=now - span, span_ms=span).records(1_500))
    reference.feed([decode(r.value, r.channel, now) for r in first])
    service.publish((r.channel, r.key, r.value) for r in first)
    converge(service, reference)

    unwritten: list[str] = []
    for seed in (32, 33, 34):  # until a kill falls between flushes (a commit also flushes)
        more = list(Traffic(contacts=150, seed=seed, start_ms=now - span, span_ms=span).records(1_500))
        reference.feed([decode(r.value, r.channel, now) for r in more])
        service.publish((r.channel, r.key, r.value) for r in more)
        time.sleep(0.5)  # folded by now, and most likely not written yet
        service.kill_worker()
        at_kill = dict(changelog(service))
        unwritten = [k for k, s in reference.live().items() if at_kill.get(k.encode()) != encode(s)]
        service.start_worker()
        converge(service, reference)  # re-read from the committed offsets: every contact whole
        if unwritten:
            break
    assert unwritten, "every kill fell after a flush: nothing was only in memory"
