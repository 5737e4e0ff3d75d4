"""Steady live Zipf traffic at a fixed rate, in a process of its own: the background load of the
latency probes (:mod:`bench.probes`) and of the whole-service bench (:mod:`bench.service_load`).

Open-loop: message ``n`` is due at ``start + n / rate`` whatever the broker answered before; every
5 ms the generator sends what has come due, one batch per partition. It runs in its own process so that its bursts of
CPU do not delay the probes' schedule or the API polls in the measuring process. It stops after
``--seconds`` or on SIGTERM/SIGINT and prints one JSON line: messages sent, seconds, the rate
achieved and the largest backlog it had (how far behind its own schedule it fell).

``python -m bench.load --bootstrap 127.0.0.1:9092 --web events.web --email events.email --store
events.store --rate 1000 --seconds 60``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import time
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import DefaultPartitioner

from deploy.traffic import Record, Traffic
from kafka_io import clients
from kafka_io.clients import KafkaConnection

# How late live events are stamped, at most, behind their sending: clients batch and clocks
# differ by about a second (the throughput scenarios cover a backfill in random order).
LIVE_JITTER_MS = 1_000
CONTACTS = 20_000
TICK_S = 0.005


class _Batches:
    """The due records sent as one batch per partition (``create_batch``/``send_batch``): a
    fraction of the per-message path's CPU, so the generator takes less from the shared cores.
    Partitions follow the keys as the default partitioner places them (murmur2, as Java's)."""

    def __init__(self, producer: AIOKafkaProducer, topics: dict[str, str]) -> None:
        self.producer = producer
        self.topics = topics
        self.partitions: dict[str, list[int]] = {}
        self.placed: dict[tuple[str, bytes | None], int] = {}
        self.pending: list[asyncio.Future[Any]] = []

    async def start(self) -> None:
        for topic in self.topics.values():
            self.partitions[topic] = sorted(await self.producer.partitions_for(topic))

    def _partition(self, topic: str, key: bytes | None) -> int:
        placed = self.placed.get((topic, key))
        if placed is None:
            placed = self.placed[(topic, key)] = DefaultPartitioner()(key, self.partitions[topic], None)
        return placed

    async def send(self, records: list[Record]) -> None:
        groups: dict[tuple[str, int], list[Record]] = {}
        for record in records:
            topic = self.topics[record.channel]
            groups.setdefault((topic, self._partition(topic, record.key)), []).append(record)
        for (topic, partition), members in groups.items():
            batch = self.producer.create_batch()
            for record in members:
                if batch.append(key=record.key, value=record.value, timestamp=None) is None:  # full
                    self.pending.append(await self.producer.send_batch(batch, topic, partition=partition))
                    batch = self.producer.create_batch()
                    batch.append(key=record.key, value=record.value, timestamp=None)
            self.pending.append(await self.producer.send_batch(batch, topic, partition=partition))
        still = []
        for future in self.pending:
            if future.done():
                future.result()  # a failed send fails the generator (its output says so)
            else:
                still.append(future)
        self.pending = still

    async def flush(self) -> None:
        await asyncio.gather(*self.pending)


async def generate(
    bootstrap: str, topics: dict[str, str], rate: float, seconds: float, seed: int, contacts: int = CONTACTS
) -> dict[str, float]:
    """Publish live traffic at ``rate`` events/s for ``seconds`` (or until SIGTERM/SIGINT)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    traffic = Traffic(contacts, seed=seed, live_jitter_ms=LIVE_JITTER_MS)
    records = traffic.records(10**12)
    producer = clients.producer(KafkaConnection(bootstrap), acks="all", max_batch_size=1 << 20)
    await producer.start()
    batches = _Batches(producer, topics)
    sent = 0
    most_behind = 0
    try:
        await batches.start()
        cpu_started = time.process_time()
        started = time.perf_counter()
        while not stop.is_set() and (elapsed := time.perf_counter() - started) < seconds:
            due = int(elapsed * rate) + 1
            most_behind = max(most_behind, due - sent)
            if due > sent:
                await batches.send([next(records) for _ in range(due - sent)])
                sent = due
            await asyncio.sleep(TICK_S)
        took = time.perf_counter() - started
        await batches.flush()
    finally:
        await producer.stop()
    return {
        "sent": sent,
        "seconds": round(took, 2),
        "events_per_s": round(sent / took, 1) if took > 0 else 0.0,
        "most_behind_events": most_behind,
        # what the generator costs the shared cores (the producer's own work included)
        "cpu_cores": round((time.process_time() - cpu_started) / took, 2) if took > 0 else 0.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--web", required=True, help="topic of the web channel")
    parser.add_argument("--email", required=True, help="topic of the email channel")
    parser.add_argument("--store", required=True, help="topic of the store channel")
    parser.add_argument("--rate", type=float, required=True, help="events/s")
    parser.add_argument("--seconds", type=float, default=3600.0, help="stop after this long at most")
    parser.add_argument("--seed", type=int, default=5)
    args = parser.parse_args()
    topics = {"web": args.web, "email": args.email, "store": args.store}
    result = asyncio.run(generate(args.bootstrap, topics, args.rate, args.seconds, args.seed))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
