"""What one internal hop costs in latency, by producer linger and consumer fetch wait.

``python -m bench.hop_latency [--bootstrap HOST:PORT] [--rate 500] [--seconds 10] [--configs 5/20,0/20,0/5]``

A record is produced the way the worker produces (aiokafka, ``acks=all``, ``linger_ms`` = the
config's first number, batches of what a turn of the loop queued) at a steady ``--rate`` on 4
partitions, and consumed the way the worker consumes (``getmany`` with ``fetch_max_wait_ms`` = its
second number); the hop is send -> received, in one process (one clock). The configs run in turn,
twice, on a real broker (started in a temporary directory unless ``--bootstrap`` is given).
Prints the latency's minimum, p10 (the floor a config sets, least disturbed by other load on
the machine), p50 and p99, and this process's CPU per record (producer and consumer) per config
and round.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from kafka_io.clients import KafkaConnection, admin, consumer, producer
from tests.e2e.service import free_port
from tests.kafka_broker import ensure_broker, stop_broker


async def hop(
    bootstrap: str, linger_ms: int, fetch_max_wait_ms: int, rate: float, seconds: float
) -> tuple[list[float], float]:
    """Milliseconds from send to receipt of each record, and this process's CPU microseconds per
    record (producer and consumer)."""
    kafka = KafkaConnection(bootstrap)
    topic = f"hop-{uuid.uuid4().hex[:8]}"
    client = admin(kafka)
    await client.start()
    try:
        from aiokafka.admin import NewTopic

        await client.create_topics([NewTopic(topic, num_partitions=4, replication_factor=1)])
    finally:
        await client.close()
    prod = producer(kafka, acks="all", linger_ms=linger_ms, max_batch_size=1 << 20)
    cons = consumer(kafka, topic, group_id=None, auto_offset_reset="latest", fetch_max_wait_ms=fetch_max_wait_ms)
    await prod.start()
    await cons.start()
    latencies: list[float] = []
    done = asyncio.Event()

    async def receive() -> None:
        while not done.is_set():
            fetched = await cons.getmany(timeout_ms=100)
            now = time.perf_counter()
            for records in fetched.values():
                latencies.extend((now - float(r.value.decode())) * 1000 for r in records if r.value)

    reader = asyncio.create_task(receive())
    await asyncio.sleep(1.0)  # the consumer's first fetch is in place
    cpu = time.process_time()
    started = time.perf_counter()
    sent = 0
    while time.perf_counter() - started < seconds:
        due = int((time.perf_counter() - started) * rate) + 1
        while sent < due:
            await prod.send(topic, str(time.perf_counter()).encode(), key=str(sent).encode())
            sent += 1
        await asyncio.sleep(0.002)
    await prod.flush()
    await asyncio.sleep(0.5)
    done.set()
    await reader
    cpu_us = (time.process_time() - cpu) / max(1, sent) * 1e6
    await prod.stop()
    await cons.stop()
    return latencies, cpu_us


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)


async def run(bootstrap: str, configs: list[tuple[int, int]], rate: float, seconds: float) -> None:
    for round_ in range(2):
        for linger, fetch in configs:
            got, cpu_us = await hop(bootstrap, linger, fetch, rate, seconds)
            print(
                f"round {round_} linger {linger:>2} ms fetch wait {fetch:>2} ms: {len(got)} records, "
                f"min {min(got):.1f} p10 {pct(got, 0.1)} p50 {pct(got, 0.5)} p99 {pct(got, 0.99)} ms, "
                f"mean {statistics.fmean(got):.1f} ms, CPU {cpu_us:.0f} us/record"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bootstrap", help="a running broker (default: start one in a temporary directory)")
    parser.add_argument("--rate", type=float, default=500.0, help="records/s")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--configs", default="5/20,0/20,0/5", help="linger_ms/fetch_max_wait_ms, comma-separated")
    args = parser.parse_args()
    configs = [(int(c.split("/")[0]), int(c.split("/")[1])) for c in args.configs.split(",")]
    with tempfile.TemporaryDirectory() as work:
        port = free_port()
        bootstrap = args.bootstrap or ensure_broker(Path(work) / "kafka", port)
        try:
            asyncio.run(run(bootstrap, configs, args.rate, args.seconds))
        finally:
            if not args.bootstrap:
                stop_broker(Path(work) / "kafka", port)


if __name__ == "__main__":
    main()
