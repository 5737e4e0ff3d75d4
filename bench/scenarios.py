"""Benchmark scenarios against a real scorestream deployment (worker + API) on the local broker."""

from __future__ import annotations

import asyncio
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
from aiokafka import AIOKafkaProducer

from bench.harness import create_topic, prefill, process_usage, publish, wait_drained
from deploy.traffic import Traffic
from tests.e2e.service import API_KEY, REPO, Service


def _topics(svc: Service) -> dict[str, str]:
    return {"web": svc.topic("web"), "email": svc.topic("email"), "store": svc.topic("store")}


def _create_topics(svc: Service) -> None:
    svc.data_dir.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "deploy.cli", "topics"], env=svc.env, cwd=REPO, check=True)


def worker_throughput(bootstrap: str, work: Path, events: int, contacts: int) -> dict[str, Any]:
    """Events/s from a prefilled topic to the state fully applied (all stages committed).

    The clock starts when the worker process is launched, so worker start-up (Faust's group join
    and table recovery, a few seconds) is inside the figure; it is also reported separately.
    """
    svc = Service(bootstrap=bootstrap, data_dir=work / f"tp-{events}")
    _create_topics(svc)
    publish_rate = asyncio.run(
        prefill(bootstrap, _topics(svc), events, contacts, seed=3, now_ms=int(time.time() * 1000))
    )
    group = f"ss-{svc.suffix}"
    stages = [*_topics(svc).values(), f"{group}.identity", f"{group}.contacts"]
    started_wall_ms = int(time.time() * 1000)
    svc.start_worker()
    assert svc.worker is not None
    try:
        drained = wait_drained(bootstrap, group, stages, timeout_s=1800)
        usage = process_usage(svc.worker.pid)
        ready_s = _first_ready_s(svc, started_wall_ms)
    finally:
        svc.stop()
    busy = drained - ready_s if ready_s else drained
    return {
        "events": events,
        "contacts": contacts,
        "prefill_events_per_s": round(publish_rate),
        "seconds_to_applied": round(drained, 2),
        "worker_startup_s": round(ready_s, 2) if ready_s else None,
        "events_per_s": round(events / drained),
        "events_per_s_after_startup": round(events / busy) if busy > 0 else None,
        # CPU the worker used over the wall time (1.0 = one core busy throughout): below 1 means
        # it waited on the broker or on itself, not on Python
        "worker_cpu_utilisation": round(usage.cpu_s / drained, 2),
        "worker_cpu_us_per_event": round(usage.cpu_s / events * 1e6, 1),
        "worker_peak_rss_mb": round(usage.peak_rss_mb),
    }


def _first_ready_s(svc: Service, started_wall_ms: int) -> float | None:
    """Seconds from launch to the worker's ``ready`` announcement on the status topic."""
    for record in svc.read_topic(f"ss-{svc.suffix}.workers", expect=1, wait_s=5):
        body = orjson.loads(record.value)
        if body.get("state") == "ready":
            return max(0.0, (int(body["at_ms"]) - started_wall_ms) / 1000)
    return None


async def _probe_latency(svc: Service, rate: float, duration_s: float, probes: int) -> list[float]:
    traffic = Traffic(20_000, seed=5, start_ms=int(time.time() * 1000) - 86_400_000, span_ms=86_400_000)
    topics = _topics(svc)
    producer = AIOKafkaProducer(bootstrap_servers=svc.bootstrap, acks="all", linger_ms=1)
    await producer.start()
    latencies: list[float] = []
    stop = asyncio.Event()

    async def background() -> None:
        sent = 0
        started = time.perf_counter()
        records = traffic.records(10**12)
        while not stop.is_set():
            record = next(records)
            await producer.send(topics[record.channel], record.value, key=record.key)
            sent += 1
            ahead = sent / rate - (time.perf_counter() - started)
            if ahead > 0:
                await asyncio.sleep(ahead)

    async def probe(http: httpx.AsyncClient, i: int) -> None:
        uid = f"probe-{i}-{time.time_ns()}"
        body = orjson.dumps(
            {
                "type": "track",
                "event": "Demo Requested",
                "messageId": uid,
                "userId": uid,
                "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
        )
        t0 = time.perf_counter()
        await producer.send(topics["web"], body, key=uid.encode())
        while True:
            r = await http.get(f"/v1/contacts/{uid}")
            if r.status_code == 200:
                latencies.append((time.perf_counter() - t0) * 1000)
                return
            if time.perf_counter() - t0 > 30:
                latencies.append(float("inf"))
                return
            await asyncio.sleep(0.002)

    bg = asyncio.create_task(background())
    try:
        async with httpx.AsyncClient(base_url=svc.url, headers={"Authorization": f"Bearer {API_KEY}"}) as http:
            await asyncio.sleep(3)  # let the load settle
            interval = duration_s / probes
            for i in range(probes):
                t = time.perf_counter()
                await probe(http, i)
                await asyncio.sleep(max(0.0, interval - (time.perf_counter() - t)))
    finally:
        stop.set()
        await bg
        await producer.stop()
    return latencies


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)


def publish_to_api_latency(
    bootstrap: str, work: Path, rate: float, duration_s: float = 30, probes: int = 300
) -> dict[str, Any]:
    """Publish -> visible in GET /v1/contacts/{id}, for probe events among steady background load."""
    svc = Service(bootstrap=bootstrap, data_dir=work / f"lat-{int(rate)}")
    svc.start()
    try:
        latencies = asyncio.run(_probe_latency(svc, rate, duration_s, probes))
    finally:
        svc.stop()
    finite = [x for x in latencies if x != float("inf")]
    return {
        "rate_events_per_s": rate,
        "probes": len(latencies),
        "lost": len(latencies) - len(finite),
        "p50_ms": _pct(finite, 0.50),
        "p99_ms": _pct(finite, 0.99),
        "max_ms": round(max(finite), 1),
        "mean_ms": round(statistics.fmean(finite), 1),
    }


def pure_fold(events: int, contacts: int) -> dict[str, Any]:
    """The same stages in one process, no Kafka: the Python ceiling for this model and data."""
    from bench.pure import measure

    span = 30 * 86_400_000
    traffic = Traffic(contacts, seed=3, start_ms=int(time.time() * 1000) - span, span_ms=span)
    return measure([(r.channel, r.value) for r in traffic.records(events)])


def limits_and_peers(bootstrap: str, work: Path, events: int, contacts: int) -> dict[str, dict[str, Any]]:
    """The machine's limit and the peers, on one topic holding the same generated events.

    Kafka's own consumer, raw aiokafka + orjson, a hand-rolled durable aiokafka loop, a textbook
    Faust agent (a table write per event) and the Quix Streams peer (same rules, decay and data;
    its scores are checked against the core's).
    """
    from bench import baselines, quix_peer

    traffic = Traffic(contacts, seed=3)
    records = [(r.key, r.value) for r in traffic.records(events)]
    topic = "bench-source"
    asyncio.run(create_topic(bootstrap, topic))
    asyncio.run(publish(bootstrap, ((topic, key, value) for key, value in records)))
    out: dict[str, dict[str, Any]] = {}
    for name, run in (
        ("kafka_consumer_perf", baselines.kafka_consumer_perf),
        ("raw_aiokafka_orjson", baselines.raw_aiokafka_decode),
        ("hand_rolled_durable", baselines.hand_rolled_durable),
        ("stock_faust_table_per_event", baselines.stock_faust),
    ):
        try:
            out[name] = run(bootstrap, topic, events, work)
        except Exception as exc:
            out[name] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
    try:
        peer = quix_peer.run_quix_peer(bootstrap, topic, events, work)
        theirs = quix_peer.load_scores(peer["scores_path"])
        ours = quix_peer.reference_scores(records, incremental=True)
        peer["score_mismatches"] = len(quix_peer.compare_scores(ours, theirs))
        out["quix_streams_peer"] = {k: v for k, v in peer.items() if not str(k).endswith("_path")}
    except Exception as exc:
        out["quix_streams_peer"] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
    return out
