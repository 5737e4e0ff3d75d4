"""Shared pieces of the benchmarks: a broker, prefilled topics, lag probes, a scorestream deployment."""

from __future__ import annotations

import asyncio
import gc
import os
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from aiokafka.admin import NewTopic
from aiokafka.errors import KafkaError

from deploy.traffic import Traffic
from kafka_io import clients
from kafka_io.clients import KafkaConnection
from kafka_io.promotion import group_lag


async def create_topic(bootstrap: str, topic: str, partitions: int = 4) -> None:
    admin = clients.admin(KafkaConnection(bootstrap))
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name=topic, num_partitions=partitions, replication_factor=1)])
    finally:
        await admin.close()


async def drop_topics(bootstrap: str, marker: str) -> int:
    """Delete every topic whose name holds ``marker`` (a finished deployment's suffix): a long run
    keeps the broker's disk to the deployments still running. Returns how many."""
    admin = clients.admin(KafkaConnection(bootstrap))
    await admin.start()
    try:
        doomed = [topic for topic in await admin.list_topics() if marker in topic]
        if doomed:
            await admin.delete_topics(doomed)
    finally:
        await admin.close()
    return len(doomed)


async def publish(bootstrap: str, records: Iterable[tuple[str, bytes | None, bytes]]) -> float:
    """Publish ``(topic, key, value)`` records with acks=all; returns records/s of the publish."""
    producer = clients.producer(KafkaConnection(bootstrap), acks="all", linger_ms=20, max_batch_size=1 << 20)
    await producer.start()
    started = time.perf_counter()
    count = 0
    try:
        pending = []
        for topic, key, value in records:
            pending.append(await producer.send(topic, value, key=key))
            count += 1
            if len(pending) >= 20_000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return count / (time.perf_counter() - started)


async def prefill(
    bootstrap: str, topics: dict[str, str], events: int, contacts: int, seed: int, now_ms: int, ordered: bool = False
) -> float:
    """Publish ``events`` synthetic events (channel -> topic); returns events/s of the publish.

    The events' times are spread at random over the last 30 days, so each contact's events arrive
    out of time order (the hard case for the lifecycle walk); ``ordered`` publishes the same events
    sorted by event time, as a live stream or a time-ordered backfill arrives.
    """
    span = 30 * 86_400_000
    traffic = Traffic(contacts, seed=seed, start_ms=now_ms - span, span_ms=span)
    records = traffic.records(events)
    if ordered:
        records = iter(sorted(records, key=lambda r: orjson.loads(r.value)["timestamp"]))
    return await publish(bootstrap, ((topics[r.channel], r.key, r.value) for r in records))


def wait_drained(bootstrap: str, group: str, topics: list[str], timeout_s: float, quiet_s: float = 2.0) -> float:
    """Seconds until the group has committed everything on ``topics`` (internal topics included)."""
    started = time.perf_counter()
    stable_since: float | None = None
    last_total = -1
    while time.perf_counter() - started < timeout_s:
        try:
            lag = asyncio.run(group_lag(KafkaConnection(bootstrap), group, topics))
        except KafkaError:  # the group's coordinator is not there until the worker joins
            time.sleep(0.25)
            continue
        if lag.remaining == 0 and lag.total == last_total:
            stable_since = stable_since or time.perf_counter()
            if time.perf_counter() - stable_since >= quiet_s:
                return stable_since - started
        else:
            stable_since = None
        last_total = lag.total
        time.sleep(0.25)
    raise TimeoutError(f"group {group} not drained in {timeout_s} s")


@dataclass(frozen=True)
class ProcessUsage:
    """CPU seconds (user + system) and resident memory of a process, from ``/proc``."""

    cpu_s: float
    rss_mb: float
    peak_rss_mb: float


def process_usage(pid: int) -> ProcessUsage:
    proc = Path("/proc") / str(pid)
    fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime
    status = dict(line.split(":", 1) for line in (proc / "status").read_text().splitlines() if ":" in line)

    def mb(name: str) -> float:
        return int(status[name].split()[0]) / 1024

    return ProcessUsage(cpu_s=cpu, rss_mb=mb("VmRSS"), peak_rss_mb=mb("VmHWM"))


@contextmanager
def worker_gc() -> Iterator[None]:
    """Run a measurement with the garbage-collector settings of scorestream's worker
    (:func:`streams.worker.tune_gc`), so in-process ceilings get the same treatment."""
    from streams.worker import tune_gc

    previous = gc.get_threshold()
    tune_gc()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*previous)


def standalone(prefix: str, run: Callable[[str, Path], dict[str, Any]]) -> None:
    """Run one scenario on a fresh local broker of its own (``python -m bench.<scenario>``), print
    its figures as JSON, stop the broker; the work directory is removed unless the run failed
    (it keeps the logs)."""
    import json
    import shutil
    import signal
    import sys
    import tempfile

    from tests.e2e.service import free_port
    from tests.kafka_broker import ensure_broker, stop_broker

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwind through the finally blocks
    work = Path(tempfile.mkdtemp(prefix=f"scorestream-{prefix}-"))
    port = free_port()
    bootstrap = ensure_broker(work / "kafka", port)
    try:
        result = run(bootstrap, work)
    finally:
        stop_broker(work / "kafka", port)
    shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result, indent=2))
