"""Worker CPU per trigger record: Faust's ``send_soon`` per record vs ``streams.sends.BatchedSends``.

``python -m bench.send_cost [--bootstrap HOST:PORT] [--records 20000] [--batch 200]``

The worker's own producer (``streams.app.create_app``) against a real broker (started in a
temporary directory unless ``--bootstrap`` is given): ``--records`` trigger-sized JSON records
on 1,000 keys, ``--batch`` at a time with a turn of the event loop between batches (as between
fetched batches), then the producer's flush (what a commit waits for). Process CPU time per record
(the broker is another process), median of three alternating rounds after a warm-up.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import orjson

from schemas.settings import Settings
from streams.app import create_app
from tests.e2e.service import free_port
from tests.kafka_broker import ensure_broker, stop_broker


async def measure(bootstrap: str, records: int, batch: int, rounds: int = 3) -> dict[str, float]:
    ns = f"sendcost-{uuid.uuid4().hex[:6]}"
    with tempfile.TemporaryDirectory() as data:
        settings = Settings(kafka_bootstrap=bootstrap, app_id=ns, topic_triggers=f"{ns}-triggers", data_dir=Path(data))
        w = create_app(settings)
        assert w.sends is not None
        sends, topic, producer = w.sends, w.triggers_topic, w.app.producer
        await producer.start()
        trigger = {"type": "contact.score_crossed", "at_ms": 0, "contact_id": "c" * 20, "score": 51.2, "id": "t" * 32}
        value = orjson.dumps(trigger)
        keys = [f"contact-{i}".encode() for i in range(1000)]

        async def per_record() -> None:
            for start in range(0, records, batch):
                for i in range(start, min(records, start + batch)):
                    topic.send_soon(key=keys[i % 1000], value=value)
                await asyncio.sleep(0)
            await producer.flush()

        async def batched() -> None:
            for start in range(0, records, batch):
                for i in range(start, min(records, start + batch)):
                    sends.add(topic, keys[i % 1000], value)
                await asyncio.sleep(0)
            await producer.flush()

        ways: dict[str, Callable[[], Awaitable[None]]] = {"send_soon": per_record, "batched": batched}
        for way in ways.values():  # warm-up: metadata, the topic's creation
            await way()
        cpu: dict[str, list[float]] = {name: [] for name in ways}
        for _ in range(rounds):
            for name, way in ways.items():
                started = time.process_time()
                await way()
                cpu[name].append((time.process_time() - started) / records * 1e6)
        await producer.stop()
    return {name: round(statistics.median(values), 1) for name, values in cpu.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bootstrap", help="a running broker (default: start one in a temporary directory)")
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        port = free_port()
        bootstrap = args.bootstrap or ensure_broker(Path(work) / "kafka", port)
        try:
            result = asyncio.run(measure(bootstrap, args.records, args.batch))
        finally:
            if not args.bootstrap:
                stop_broker(Path(work) / "kafka", port)
    for name, us in result.items():
        print(f"{name:10s} {us:6.1f} us CPU per record ({args.records} records, {args.batch} per batch)")


if __name__ == "__main__":
    main()
