"""Benchmark scenarios against a real scorestream deployment (worker + API) on the local broker."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import yaml
from aiokafka.errors import KafkaError

from bench import probes
from bench.harness import create_topic, drop_topics, prefill, process_usage, publish, wait_drained
from deploy.traffic import Traffic, iso
from kafka_io import clients
from kafka_io.clients import KafkaConnection
from schemas.model_file import read_model_source
from schemas.settings import Settings
from tests.e2e.service import REPO, Service


def _topics(svc: Service) -> dict[str, str]:
    return {"web": svc.topic("web"), "email": svc.topic("email"), "store": svc.topic("store")}


def _create_topics(svc: Service) -> None:
    svc.data_dir.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "deploy.cli", "topics"], env=svc.env, cwd=REPO, check=True)


def spine_model(work: Path) -> Path:
    """The default model cut to the spine's engagement and fit scoring: no ledger, lifecycle,
    flags, personas, triggers or accounts (the issue-3 model, for side-by-side figures)."""
    source = read_model_source()
    for section in ("value", "lifecycle", "flags", "personas", "triggers", "accounts"):
        source.pop(section, None)
    source["name"] = "spine"
    path = work / "spine-model.yaml"
    path.write_text(yaml.safe_dump(source))
    return path


def worker_throughput(
    bootstrap: str,
    work: Path,
    events: int,
    contacts: int,
    model: Path | None = None,
    label: str = "",
    ordered: bool = False,
) -> dict[str, Any]:
    """Events/s from a prefilled topic to the state fully applied (all stages committed).

    The clock starts when the worker process is launched, so worker start-up (Faust's group join
    and table recovery, a few seconds) is inside the figure; it is also reported separately.
    ``model``: a model file (default: the bundled full model). The events are the same for the
    same ``events``/``contacts`` (a seeded generator).
    """
    svc = Service(bootstrap=bootstrap, data_dir=work / f"tp-{events}{label}", model=model)
    _create_topics(svc)
    publish_rate = asyncio.run(
        prefill(bootstrap, _topics(svc), events, contacts, seed=3, now_ms=int(time.time() * 1000), ordered=ordered)
    )
    group = f"ss-{svc.suffix}"
    stages = [*_topics(svc).values(), f"{group}.identity", f"{group}.contacts", f"{group}.accounts"]
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
        "events_in_time_order": ordered,
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
    try:
        ready_ms = asyncio.run(_wait_status(svc.bootstrap, f"ss-{svc.suffix}.workers", "ready", started_wall_ms, 5))
    except TimeoutError:
        return None
    return (ready_ms - started_wall_ms) / 1000


def publish_to_api_latency(bootstrap: str, work: Path, plan: probes.Plan, model: Path | None = None) -> dict[str, Any]:
    """Publish -> visible in the API for open-loop probes among steady Zipf load at ``plan.rate``
    on a fresh worker + API (see :mod:`bench.probes`): identified and anonymous probes, each split
    at the record the worker writes to the topic the API follows (worker part / API part)."""
    label = f"lat-{int(plan.rate)}{'-' + model.stem if model else ''}"
    svc = Service(bootstrap=bootstrap, data_dir=work / f"{label}-{uuid.uuid4().hex[:6]}", model=model)
    svc.start()
    try:
        assert svc.worker is not None and svc.api is not None
        pids = {"worker": svc.worker.pid, "api": svc.api.pid}
        before = {name: process_usage(pid).cpu_s for name, pid in pids.items()}
        started = time.perf_counter()
        figures = probes.measure(probes.target_of(svc.env, svc.url), plan)
        wall = time.perf_counter() - started
        # the API's share includes answering the probes' polls (``polls`` in the figures)
        for name, pid in pids.items():
            figures[f"{name}_cpu_cores"] = round((process_usage(pid).cpu_s - before[name]) / wall, 2)
        return figures
    finally:
        svc.stop()
        _forget(bootstrap, svc.suffix)


def _forget(bootstrap: str, suffix: str) -> None:
    """A finished live deployment's topics, gone: a long run at 10k events/s would fill the
    broker's disk (its logs stay in its data directory)."""
    with contextlib.suppress(KafkaError):
        asyncio.run(drop_topics(bootstrap, suffix))


def max_sustained_rate(
    rates: list[float], plan: probes.Plan, measure_at: Callable[[probes.Plan], dict[str, Any]]
) -> dict[str, Any]:
    """The highest of ``rates`` (events/s, tried in increasing order, stopping at the first that
    fails) held with nothing lost, publish -> visible p99 under 1 s and the worker's lag not
    growing (:func:`bench.probes.sustained_failures`). ``plan`` gives the probes and the time
    held (``probes / probe_rate`` seconds after the warm-up); ``measure_at`` runs it at a rate
    on a fresh deployment. Everything shares the machine's cores with the publisher."""
    tried: dict[str, Any] = {}
    best = 0.0
    for rate in sorted(rates):
        got = measure_at(replace(plan, rate=rate))
        failures = probes.sustained_failures(got)
        tried[str(int(rate))] = {
            "achieved_background_events_per_s": got["achieved_background_events_per_s"],
            "probes": got["probes"],
            "lost": got["lost"],
            "p50_ms": got["p50_ms"],
            "p99_ms": got["p99_ms"],
            "p999_ms": got["p999_ms"],
            "worker_p99_ms": got["worker_p99_ms"],
            "api_p99_ms": got["api_p99_ms"],
            "anonymous_p99_ms": got["anonymous"]["p99_ms"],
            "schedule_slip_p99_ms": got["schedule_slip_p99_ms"],
            "lag": got["lag"],
            "sustained": not failures,
            "why_not": failures,
        }
        if failures:
            break
        best = rate
    return {"max_sustained_events_per_s": best, "seconds_per_rate": round(plan.probe_seconds), "tried": tried}


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
    topic = f"bench-source-{events}"
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


def _known_contacts(count: int, now_ms: int) -> Iterator[tuple[str, bytes, bytes]]:
    """Two events per contact, each contact known by user id: an identify with the traits the fit
    rules read, and an email click. (channel, key, value) for :func:`bench.harness.publish`."""
    day = 86_400_000
    for i in range(count):
        user = f"user-{i}"
        ts = now_ms - (i % 30) * day
        identify = {
            "type": "identify",
            "messageId": f"id-{i}",
            "userId": user,
            "timestamp": iso(ts),
            "traits": {"email": f"{user}@acme.com", "title": "VP Marketing", "employees": 250, "industry": "software"},
        }
        click = {
            "type": "track",
            "event": "Email Link Clicked",
            "messageId": f"click-{i}",
            "userId": user,
            "timestamp": iso(ts + 60_000),
            "properties": {"campaign_id": f"cmp-{i % 20}", "url": "https://acme.com/pricing"},
        }
        yield "web", user.encode(), orjson.dumps(identify)
        yield "email", user.encode(), orjson.dumps(click)


async def _wait_status(
    bootstrap: str, topic: str, state: str, since_ms: int, timeout_s: float, pid: int | None = None
) -> int:
    """``at_ms`` of the first ``state`` announcement on the worker status topic at or after
    ``since_ms`` (of worker process ``pid`` only, when given)."""
    consumer = clients.consumer(
        KafkaConnection(bootstrap), topic, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=200)).values():
                for record in records:
                    body = orjson.loads(record.value)
                    mine = pid is None or str(body.get("worker", "")).endswith(f":{pid}")
                    if mine and body.get("state") == state and int(body["at_ms"]) >= since_ms:
                        return int(body["at_ms"])
        raise TimeoutError(f"no {state!r} announcement on {topic} in {timeout_s} s")
    finally:
        await consumer.stop()


def _restart_worker_s(svc: Service, timeout_s: float = 900) -> float:
    """Start the worker and return seconds until it announces ``ready`` (tables recovered)."""
    started_ms = int(time.time() * 1000)
    svc.start_worker()
    ready_ms = asyncio.run(_wait_status(svc.bootstrap, f"ss-{svc.suffix}.workers", "ready", started_ms, timeout_s))
    return (ready_ms - started_ms) / 1000


def _stop_worker(svc: Service) -> None:
    assert svc.worker is not None
    svc.worker.terminate()
    svc.worker.wait(timeout=120)


def recovery_and_memory(bootstrap: str, work: Path, contacts: int) -> dict[str, Any]:
    """A worker and an API holding ``contacts`` contacts: resident memory, and how long a restarted
    worker takes to be ready again, with its local RocksDB (warm) and without it (cold: every table
    rebuilt from its changelog topic, as on a new machine)."""
    svc = Service(bootstrap=bootstrap, data_dir=work / f"rec-{contacts}")
    svc.start()
    try:
        now_ms = int(time.time() * 1000)
        asyncio.run(
            publish(bootstrap, ((svc.topic(ch), key, value) for ch, key, value in _known_contacts(contacts, now_ms)))
        )
        group = f"ss-{svc.suffix}"
        stages = [*_topics(svc).values(), f"{group}.identity", f"{group}.contacts"]
        applied_s = wait_drained(bootstrap, group, stages, timeout_s=3600)
        assert svc.worker is not None and svc.api is not None
        worker_mem = process_usage(svc.worker.pid)
        last = f"user-{contacts - 1}"
        with svc.client() as http:  # the API has caught up with the changelog
            svc.wait_for(lambda: http.get(f"/v1/contacts/{last}").status_code == 200, timeout=600, interval=1)
        api_mem = process_usage(svc.api.pid)
        _stop_worker(svc)
        warm_s = _restart_worker_s(svc)
        _stop_worker(svc)
        shutil.rmtree(svc.data_dir / "worker")  # the tables' RocksDB files: gone, as on a new machine
        cold_s = _restart_worker_s(svc)
        recovered_mem = process_usage(svc.worker.pid)
        svc.api.terminate()
        svc.api.wait(timeout=60)
        api_started = time.perf_counter()
        svc.api = svc._spawn("api", "api.log")
        svc.wait_ready(timeout=900)  # /readyz: the replica has read the whole changelog
        api_ready_s = time.perf_counter() - api_started
        with svc.client() as http:
            body = http.get(f"/v1/contacts/{last}").json()
        assert body["contact_id"] == last, body
    finally:
        svc.stop()
    per_million = 1_000_000 / contacts
    return {
        "contacts": contacts,
        "events": 2 * contacts,
        "seconds_to_applied": round(applied_s, 1),
        "worker_rss_mb": round(worker_mem.rss_mb),
        "worker_rss_mb_per_million_contacts": round(worker_mem.rss_mb * per_million),
        "api_rss_mb": round(api_mem.rss_mb),
        "api_rss_mb_per_million_contacts": round(api_mem.rss_mb * per_million),
        "warm_restart_ready_s": round(warm_s, 2),
        "cold_recovery_ready_s": round(cold_s, 2),
        "cold_recovery_contacts_per_s": round(contacts / cold_s) if cold_s > 0 else None,
        "worker_rss_mb_after_cold_recovery": round(recovered_mem.rss_mb),
        "api_restart_ready_s": round(api_ready_s, 2),
    }


def timer_lateness(bootstrap: str, work: Path, contacts: int = 2000, timeout_s: float = 10.0) -> dict[str, Any]:
    """How late a time-driven trigger is written after its due time: ``contacts`` carts left
    open (one ``Product Added`` each, stamped now), a cart timer of ``timeout_s``, the default tick
    interval; lateness = the ``cart.abandoned`` record's time on the triggers topic - its ``at_ms``."""
    source = read_model_source()
    for timer in source["lifecycle"]["timers"]:
        if timer["id"] == "cart-abandoned":
            timer["after"] = f"{timeout_s}s"
    model = work / "timers-model.yaml"
    model.write_text(yaml.safe_dump(source))
    svc = Service(bootstrap=bootstrap, data_dir=work / "timers", model=model)
    svc.start()
    try:
        now = int(time.time() * 1000)
        spread_ms = 5_000  # carts over 5 s, so timers come due continuously, not all at one tick
        records = [
            (
                svc.topic("web"),
                f"cart-{i}".encode(),
                orjson.dumps(
                    {
                        "type": "track",
                        "event": "Product Added",
                        "messageId": f"cart-{i}",
                        "userId": f"cart-{i}",
                        "timestamp": iso(now + i * spread_ms // contacts),
                        "properties": {"product_id": "sku-1", "price": 10},
                    }
                ),
            )
            for i in range(contacts)
        ]
        asyncio.run(publish(bootstrap, iter(records)))
        time.sleep(max(0.0, (now + spread_ms + timeout_s * 1000) / 1000 - time.time()))
        found = asyncio.run(_read_triggers(bootstrap, f"triggers-{svc.suffix}", "cart.abandoned", contacts, 60.0))
    finally:
        svc.stop()
    late = sorted(float(written - due) for due, written in found)
    return {
        "carts": contacts,
        "timer_s": timeout_s,
        "tick_interval_s": Settings.model_fields["timer_interval_s"].default,
        "fired": len(late),
        "late_ms_p50": round(probes.percentile(late, 0.50) or 0) if late else None,
        "late_ms_p99": round(probes.percentile(late, 0.99) or 0) if late else None,
        "late_ms_max": round(late[-1]) if late else None,
    }


async def _read_triggers(bootstrap: str, topic: str, kind: str, expect: int, wait_s: float) -> list[tuple[int, int]]:
    """(due ``at_ms``, record timestamp) of the ``kind`` triggers on ``topic``, up to ``expect``."""
    consumer = clients.consumer(KafkaConnection(bootstrap), topic, auto_offset_reset="earliest")
    await consumer.start()
    out: list[tuple[int, int]] = []
    try:
        deadline = time.monotonic() + wait_s
        while len(out) < expect and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                for r in records:
                    body = orjson.loads(r.value)
                    if body["type"] == kind:
                        out.append((int(body["at_ms"]), int(r.timestamp)))
    finally:
        await consumer.stop()
    return out


def clv_fit_cdnow() -> dict[str, Any]:
    """The population fitter on the CDNOW calibration data against the published parameters."""
    from scorestream.clv import fit_bgnbd, fit_gamma_gamma, summarise
    from tests.cdnow import (
        CALIBRATION_END_MS,
        PUBLISHED_BGNBD,
        PUBLISHED_BGNBD_LL,
        PUBLISHED_GG,
        WEEK_MS,
        purchases,
    )

    summaries = [summarise(p, CALIBRATION_END_MS, WEEK_MS) for p in purchases().values()]
    started = time.perf_counter()
    bg = fit_bgnbd(summaries)
    bg_s = time.perf_counter() - started
    started = time.perf_counter()
    gg = fit_gamma_gamma(summaries)
    gg_s = time.perf_counter() - started
    return {
        "customers": len(summaries),
        "bgnbd": {
            "r": round(bg.params.r, 4),
            "alpha_weeks": round(bg.params.alpha, 4),
            "a": round(bg.params.a, 4),
            "b": round(bg.params.b, 4),
            "log_likelihood": round(bg.log_likelihood, 2),
            "seconds": round(bg_s, 2),
        },
        "bgnbd_published": {
            **{k: getattr(PUBLISHED_BGNBD, k) for k in ("r", "alpha", "a", "b")},
            "ll": PUBLISHED_BGNBD_LL,
        },
        "gamma_gamma": {
            "p": round(gg.params.p, 3),
            "q": round(gg.params.q, 3),
            "v": round(gg.params.v, 3),
            "seconds": round(gg_s, 2),
        },
        "gamma_gamma_published": {k: getattr(PUBLISHED_GG, k) for k in ("p", "q", "v")},
    }
