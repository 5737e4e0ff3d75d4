"""The HTTP collector under load: Segment messages accepted per second, measured with ``wrk``.

One real API process (no worker: the figure is the collector's, not shared with scoring) in front
of the real broker. ``wrk`` posts prepared requests (``bench/wrk/collector.lua``): first one
message per request to ``/v1/track|page|identify|group`` (the type's route), then ``/v1/batch``
with ``BATCH_SIZE`` messages a request. Messages are generated live traffic
(:class:`deploy.traffic.Traffic`) with ``sentAt``, so skew correction runs as it does for SDKs;
about half lack a ``messageId`` (the collector hashes one). Every 200 means the request's records
were acknowledged by Kafka (``acks=all``).

Read the figures with these in mind:

* ``wrk`` is closed-loop (``connections`` requests always in flight): latency percentiles include
  queueing in the API. It runs on the same machine and competes with the API and the broker.
* ``accepted_in_kafka`` sums the source topics' end offsets after the runs: at least every
  accepted message (plus the requests still in flight when ``wrk`` stopped, and the warm-ups).
* Any non-2xx answer (a 429 included) or socket error counts as an error; above
  ``MAX_ERROR_RATIO`` the run raises instead of reporting.

``python -m bench.collector`` runs a short version on a broker of its own.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
from aiokafka import TopicPartition

from bench.api_load import WrkResult, ensure_wrk, wrk_run
from bench.harness import process_usage, standalone
from collector.service import iso_ms
from deploy.traffic import Traffic
from kafka_io import clients
from kafka_io.clients import KafkaConnection
from tests.e2e.service import REPO, WRITE_KEY, Service

SCRIPT = Path(__file__).parent / "wrk" / "collector.lua"
WRK_THREADS = 2
BATCH_SIZE = 100
SEED = 5


def request_lines(singles: int, batches: int, contacts: int = 5_000) -> tuple[list[str], list[str]]:
    """``PATH\\tBODY`` lines: one message a request, and ``BATCH_SIZE`` messages a request."""
    traffic = Traffic(contacts, seed=SEED, live_jitter_ms=2_000)

    def message() -> dict[str, Any]:
        _, _, msg = traffic.message()
        if traffic.rng.random() < 0.5:
            del msg["messageId"]
        return msg

    sent_at = iso_ms(int(time.time() * 1000))
    single = []
    for _ in range(singles):
        msg = {**message(), "sentAt": sent_at}
        single.append(f"/v1/{msg['type']}\t{orjson.dumps(msg).decode()}")
    batch = [
        f"/v1/batch\t{orjson.dumps({'batch': [message() for _ in range(BATCH_SIZE)], 'sentAt': sent_at}).decode()}"
        for _ in range(batches)
    ]
    return single, batch


def run_wrk(wrk: str, url: str, requests_file: Path, connections: int, duration_s: float) -> WrkResult:
    authorization = "Basic " + base64.b64encode(f"{WRITE_KEY}:".encode()).decode()
    return wrk_run(wrk, SCRIPT, url, [str(requests_file), authorization], connections, duration_s, timeout="10s")


def wait_accepting(svc: Service, timeout_s: float = 60) -> None:
    """Until the collector's producer is connected (503 before)."""
    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        try:
            r = httpx.post(
                f"{svc.url}/v1/track",
                json={"userId": "bench-probe", "event": "Probe"},
                auth=(WRITE_KEY, ""),
                timeout=5,
            )
            if r.status_code == 200:
                return
            last = f"{r.status_code} {r.text[:200]}"
        except httpx.HTTPError as exc:
            last = repr(exc)
        time.sleep(0.3)
    raise TimeoutError(f"collector not accepting in {timeout_s} s: {last}\n{svc.logs('api')}")


async def _end_offsets(bootstrap: str, topics: list[str], partitions: int) -> int:
    consumer = clients.consumer(KafkaConnection(bootstrap))
    await consumer.start()
    try:
        return sum(
            (await consumer.end_offsets([TopicPartition(t, p) for t in topics for p in range(partitions)])).values()
        )
    finally:
        await consumer.stop()


def collector_load(
    bootstrap: str, work: Path, duration_s: float = 10, connections: int = 32, singles: int = 5_000, batches: int = 200
) -> dict[str, Any]:
    """Events/s the collector accepts (durably) for single-message requests and for batches of
    ``BATCH_SIZE``, with request latency percentiles and the API process's CPU."""
    wrk = ensure_wrk()
    svc = Service(bootstrap=bootstrap, data_dir=work / "collector-load")
    svc.data_dir.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "deploy.cli", "topics"], env=svc.env, cwd=REPO, check=True)
    single_lines, batch_lines = request_lines(singles, batches)
    single_file, batch_file = svc.data_dir / "single.txt", svc.data_dir / "batch.txt"
    single_file.write_text("\n".join(single_lines) + "\n")
    batch_file.write_text("\n".join(batch_lines) + "\n")
    svc.start_api()
    try:
        assert svc.api is not None
        wait_accepting(svc)
        run_wrk(wrk, svc.url, single_file, connections, 1)  # warm-up, not reported
        api0 = process_usage(svc.api.pid)
        single = run_wrk(wrk, svc.url, single_file, connections, duration_s)
        api1 = process_usage(svc.api.pid)
        run_wrk(wrk, svc.url, batch_file, connections, 1)
        api2 = process_usage(svc.api.pid)
        batch = run_wrk(wrk, svc.url, batch_file, connections, duration_s)
        api3 = process_usage(svc.api.pid)
        topics = [svc.topic("web"), svc.topic("email"), svc.topic("store")]
        in_kafka = asyncio.run(_end_offsets(bootstrap, topics, svc.partitions))
    finally:
        svc.stop()
    single.check("single-message requests")
    batch.check(f"/v1/batch of {BATCH_SIZE}")
    accepted = (single.requests - single.status_errors) + (batch.requests - batch.status_errors) * BATCH_SIZE
    return {
        "api_processes": 1,
        "connections": connections,
        "wrk_threads": single.threads,
        "duration_s": round(single.duration_s, 1),
        "single_events_per_s": round(single.per_s),
        "single_p50_ms": single.p50_ms,
        "single_p99_ms": single.p99_ms,
        "single_p999_ms": single.p999_ms,
        "single_errors": single.errors,
        "single_api_cpu_utilisation": round((api1.cpu_s - api0.cpu_s) / single.duration_s, 2),
        "single_api_cpu_us_per_event": round((api1.cpu_s - api0.cpu_s) / max(1, single.requests) * 1e6, 1),
        "batch_size": BATCH_SIZE,
        "batch_requests_per_s": round(batch.per_s),
        "batch_events_per_s": round(batch.per_s * BATCH_SIZE),
        "batch_p50_ms": batch.p50_ms,
        "batch_p99_ms": batch.p99_ms,
        "batch_p999_ms": batch.p999_ms,
        "batch_errors": batch.errors,
        "batch_api_cpu_utilisation": round((api3.cpu_s - api2.cpu_s) / batch.duration_s, 2),
        "batch_api_cpu_us_per_event": round((api3.cpu_s - api2.cpu_s) / max(1, batch.requests * BATCH_SIZE) * 1e6, 1),
        "accepted_events": accepted,
        "accepted_in_kafka": in_kafka,
        "wrk_cpu_utilisation": round(single.cpu_s / single.duration_s, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=5)
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args()
    standalone(
        "collector-load", lambda bootstrap, work: collector_load(bootstrap, work, args.duration, args.connections)
    )


if __name__ == "__main__":
    main()
