"""Open-loop latency probes: publish -> visible in the API, split where the worker hands over to
the API.

How a run goes (:func:`measure`):

1. Each anonymous probe gets a contact of its own, linked beforehand: an ``identify`` ties
   ``<probe>-anon`` to the user ``<probe>``, and the run waits until the API resolves every such
   anonymous id. The probe's event then carries only the anonymous id, so it crosses all three
   stages (ingest -> identity -> contacts) and must reach the linked contact. Identified probes
   carry a user id nobody has used yet.
2. Steady live Zipf traffic starts in a process of its own (:mod:`bench.load`) at ``rate`` minus
   the probes' own rate, so the worker sees ``rate`` events/s in all.
3. After a warm-up, probe ``i`` is published at ``t0 + i / probe_rate`` whatever happened before
   (a fixed schedule: a slow answer does not delay the next probe, so a worker that falls behind
   shows in every probe sent meanwhile, not in one). ``schedule_slip`` says how late the sender
   itself was.
4. A poller asks the API for every probe still outstanding in ``POST /v1/contacts:batchGet``
   (up to 1000 ids a request): a probe is visible when its contact is served with ``last_seen``
   at or after the probe's event time. Its time is when that answer arrived (an upper bound;
   polls are ``poll_ms`` apart, and further apart as the oldest outstanding probe ages: at most
   2% of its age and at most a second, so a worker seconds behind is not also buried in polls).
5. Once every probe is visible or ``drain_s`` after the last one was sent, the run stops; a probe
   never seen is **lost** and counts as infinitely late in the percentiles (a percentile that lands
   on a lost probe is ``null``).
6. The topic the API follows is read back from the first probe on: the first record of a probe's
   contact at or after its publish time (its CreateTime) splits its latency into the **worker**
   part (publish -> record on that topic) and the **API** part (record -> served). CreateTime is
   stamped when the worker hands the record to its producer, so the producer's linger and the
   broker's append count in the API part.

Consumer-group lag over the worker's topics is sampled through the probing window;
:func:`lag_trend` compares its last part with its first part.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import httpx
import orjson
from aiokafka.errors import KafkaError

from deploy.traffic import iso
from kafka_io import clients
from kafka_io.clients import KafkaConnection
from schemas.settings import Settings
from tests.e2e.service import API_KEY, REPO

BATCH_IDS = 1000  # schemas.api.MAX_BATCH_IDS
POLL_AGE_SHARE = 0.02  # polls of old probes at most this share of their age apart
POLL_MAX_S = 1.0
LAG_SAMPLE_S = 1.0


# ----------------------------------------------------------------------------------- pure helpers
def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (``q`` in [0, 1]) of ``values``; ``inf`` entries are lost probes:
    ``None`` when the percentile lands on one, or when there are no values."""
    if not values:
        return None
    ordered = sorted(values)
    value = ordered[max(0, math.ceil(q * len(ordered)) - 1)]
    return None if math.isinf(value) else round(value, 1)


def schedule(count: int, per_s: float) -> list[float]:
    """Seconds after the start at which probe ``i`` is due: ``i / per_s``, independent of answers."""
    return [i / per_s for i in range(count)]


def anonymous_flags(count: int, share: float) -> list[bool]:
    """Which of ``count`` probes are anonymous: ``share`` of them, spread evenly (i is anonymous
    when ``floor((i + 1) * share)`` steps up)."""
    return [math.floor((i + 1) * share) > math.floor(i * share) for i in range(count)]


def poll_delay_s(base_s: float, oldest_age_s: float) -> float:
    """Seconds between polls: ``base_s``, or 2% of the oldest outstanding probe's age if longer
    (at most a second)."""
    return max(base_s, min(POLL_MAX_S, POLL_AGE_SHARE * oldest_age_s))


@dataclass(frozen=True)
class LagTrend:
    """Consumer lag (events) over the first and the last part of a window, and whether it grew."""

    first_mean: float
    last_mean: float
    growth: float
    tolerance: float
    growing: bool
    samples: int


def lag_trend(samples: Sequence[tuple[float, int]], tolerance: float, part: float = 1 / 3) -> LagTrend | None:
    """Compare the mean lag of the last ``part`` of the window with that of the first ``part``:
    growing when it rose by more than ``tolerance`` events. A worker that keeps up holds a
    steady lag (about the rate times the commit interval); one that does not gains lag at the
    rate it falls short. ``None`` with fewer than three samples."""
    if len(samples) < 3:
        return None
    ordered = sorted(samples)
    start, end = ordered[0][0], ordered[-1][0]
    span = end - start
    first = [lag for t, lag in ordered if t <= start + part * span]
    last = [lag for t, lag in ordered if t >= end - part * span]
    first_mean = sum(first) / len(first)
    last_mean = sum(last) / len(last)
    growth = last_mean - first_mean
    return LagTrend(
        first_mean=round(first_mean, 1),
        last_mean=round(last_mean, 1),
        growth=round(growth, 1),
        tolerance=round(tolerance, 1),
        growing=growth > tolerance,
        samples=len(ordered),
    )


@dataclass
class Probe:
    """One probe event and what became of it (times in wall-clock ms)."""

    contact_id: str  # the user id its event must reach
    anonymous_id: str | None  # set: it is sent with this anonymous id only (crosses the identity stage)
    due_s: float  # seconds after the start of the schedule
    sent_ms: float | None = None
    slip_ms: float | None = None  # how late the sender published it against its schedule
    visible_ms: float | None = None  # the API's answer that first served it
    topic_ms: int | None = None  # CreateTime of its contact's first record on the topic the API follows

    @property
    def latency_ms(self) -> float:
        if self.sent_ms is None or self.visible_ms is None:
            return math.inf
        return self.visible_ms - self.sent_ms


def _figures(values: list[float], prefix: str) -> dict[str, float | None]:
    return {f"{prefix}{name}_ms": percentile(values, q) for name, q in (("p50", 0.5), ("p99", 0.99), ("p999", 0.999))}


def summarise(probes: Sequence[Probe]) -> dict[str, Any]:
    """Latency percentiles of ``probes`` (lost ones as infinitely late), and of the worker and API
    parts over the probes whose record on the API's topic was found."""
    sent = [p for p in probes if p.sent_ms is not None]
    latencies = [p.latency_ms for p in sent]
    finite = [v for v in latencies if not math.isinf(v)]
    split = [p for p in sent if p.topic_ms is not None and p.sent_ms is not None]
    worker = [float(p.topic_ms - p.sent_ms) for p in split if p.topic_ms is not None and p.sent_ms is not None]
    api = [p.visible_ms - p.topic_ms for p in split if p.visible_ms is not None and p.topic_ms is not None]
    return {
        "probes": len(sent),
        "lost": len(latencies) - len(finite),
        "never_on_api_topic": len(sent) - len(split),
        **_figures(latencies, ""),
        "max_ms": round(max(finite), 1) if finite else None,
        "mean_ms": round(sum(finite) / len(finite), 1) if finite else None,
        **_figures(worker, "worker_"),
        **_figures(api, "api_"),
    }


# ----------------------------------------------------------------------------------- the target
@dataclass(frozen=True)
class Target:
    """Where the probes go: the broker, the source topics, the API and the topic it follows."""

    bootstrap: str
    url: str
    topics: dict[str, str]  # channel -> source topic
    api_topic: str  # the topic the API follows for contacts: where the worker's part ends
    group: str  # the worker's consumer group
    stage_topics: list[str]  # the topics the group consumes (sources and internal stages)
    api_key: str = API_KEY


def settings_from_env(env: dict[str, str]) -> Settings:
    """The settings a process started with ``env`` reads (its ``SCORESTREAM_*`` variables)."""
    fields = Settings.model_fields
    values = {
        name: value
        for key, value in env.items()
        if key.startswith("SCORESTREAM_") and (name := key.removeprefix("SCORESTREAM_").lower()) in fields
    }
    return Settings.model_validate(values)


def api_topic(settings: Settings) -> str:
    """The topic the API reads contacts from: the compact views topic when the settings have one,
    else the contacts table's changelog."""
    views = getattr(settings, "views_topic", None)
    if callable(views):
        views = views()
    return str(views) if views else settings.changelog_topic("contacts")


def target_of(env: dict[str, str], url: str) -> Target:
    """The probe target of a deployment started with ``env`` and serving at ``url``."""
    settings = settings_from_env(env)
    sources = {"web": settings.topic_web, "email": settings.topic_email, "store": settings.topic_store}
    internal = [settings.identity_topic, settings.contacts_topic, settings.accounts_topic]
    return Target(
        bootstrap=settings.kafka_bootstrap,
        url=url,
        topics=sources,
        api_topic=api_topic(settings),
        group=settings.ns,
        stage_topics=[*sources.values(), *internal],
    )


# ----------------------------------------------------------------------------------- the run
@dataclass(frozen=True)
class Plan:
    """One probe run: ``rate`` events/s in all (background + probes), ``probes`` probes at
    ``probe_rate`` a second, ``anonymous_share`` of them anonymous."""

    rate: float
    probes: int = 3000
    probe_rate: float = 50.0
    anonymous_share: float = 1 / 3
    warmup_s: float = 5.0
    drain_s: float = 30.0
    poll_ms: float = 5.0
    lag_tolerance_s: float = 2.0  # lag may grow by this many seconds of traffic and still be "not growing"
    load_processes: int = 1  # generator processes sharing the background rate

    @property
    def probe_seconds(self) -> float:
        return self.probes / self.probe_rate

    @property
    def background_rate(self) -> float:
        return max(0.0, self.rate - self.probe_rate)


@dataclass
class _Run:
    target: Target
    plan: Plan
    probes: list[Probe]
    lag: list[tuple[float, int]] = field(default_factory=list)
    sending_done: bool = False
    polls: int = 0
    poll_errors: int = 0


def make_probes(plan: Plan) -> list[Probe]:
    run_id = uuid.uuid4().hex[:8]
    flags = anonymous_flags(plan.probes, plan.anonymous_share)
    return [
        Probe(
            contact_id=f"probe-{run_id}-{i}",
            anonymous_id=f"probe-{run_id}-{i}-anon" if anonymous else None,
            due_s=due,
        )
        for i, (due, anonymous) in enumerate(zip(schedule(plan.probes, plan.probe_rate), flags, strict=True))
    ]


def _event(probe: Probe, now_ms: int) -> tuple[bytes, bytes]:
    """The probe's event and key: identified (a new user id) or anonymous (a linked anonymous id)."""
    body: dict[str, Any] = {
        "type": "track",
        "event": "Demo Requested",
        "messageId": f"{probe.contact_id}-event",
        "timestamp": iso(now_ms),
    }
    if probe.anonymous_id is None:
        body["userId"] = probe.contact_id
        return orjson.dumps(body), probe.contact_id.encode()
    body["anonymousId"] = probe.anonymous_id
    return orjson.dumps(body), probe.anonymous_id.encode()


def _link(probe: Probe, at_ms: int) -> tuple[bytes, bytes]:
    """The ``identify`` that ties an anonymous probe's anonymous id to its user, before the run."""
    body = {
        "type": "identify",
        "messageId": f"{probe.contact_id}-link",
        "userId": probe.contact_id,
        "anonymousId": probe.anonymous_id,
        "timestamp": iso(at_ms),
        "traits": {"email": f"{probe.contact_id}@probe.example"},
    }
    return orjson.dumps(body), probe.contact_id.encode()


async def _batch_get(http: httpx.AsyncClient, ids: list[str]) -> dict[str, Any]:
    """The contacts the API serves among ``ids`` (by the id asked: user or anonymous id)."""
    found: dict[str, Any] = {}
    for start in range(0, len(ids), BATCH_IDS):
        chunk = ids[start : start + BATCH_IDS]
        r = await http.post("/v1/contacts:batchGet", json={"ids": chunk})
        r.raise_for_status()
        body = orjson.loads(r.content)
        missing = set(body["not_found"])
        found.update(zip([i for i in chunk if i not in missing], body["contacts"], strict=True))
    return found


async def _link_anonymous(run: _Run, http: httpx.AsyncClient, timeout_s: float = 300) -> float:
    """Publish the links of the anonymous probes; seconds until the API resolves every one."""
    linked = [p for p in run.probes if p.anonymous_id is not None]
    if not linked:
        return 0.0
    at_ms = int(time.time() * 1000) - 60_000
    producer = clients.producer(KafkaConnection(run.target.bootstrap), acks="all", linger_ms=5)
    await producer.start()
    started = time.perf_counter()
    try:
        sends = []
        for probe in linked:
            value, key = _link(probe, at_ms)
            sends.append(await producer.send(run.target.topics["web"], value, key=key))
        await asyncio.gather(*sends)
    finally:
        await producer.stop()
    waiting = {p.anonymous_id: p.contact_id for p in linked if p.anonymous_id is not None}
    while waiting:
        if time.perf_counter() - started > timeout_s:
            raise TimeoutError(f"{len(waiting)} anonymous probe links not served by the API in {timeout_s} s")
        found = await _batch_get(http, sorted(waiting))
        for ident, contact in found.items():
            if contact.get("contact_id") == waiting[ident]:
                del waiting[ident]
        await asyncio.sleep(0.2)
    return time.perf_counter() - started


def _ms_of(value: str | None) -> float | None:
    return None if value is None else datetime.fromisoformat(value).timestamp() * 1000


async def _send(run: _Run, t0: float) -> None:
    """Publish every probe at its due time, whatever happened to the ones before."""
    producer = clients.producer(KafkaConnection(run.target.bootstrap), acks="all", linger_ms=0)
    await producer.start()
    try:
        sends = []
        for probe in run.probes:
            wait = t0 + probe.due_s - time.perf_counter()
            if wait > 0:
                await asyncio.sleep(wait)
            now_ms = time.time() * 1000
            probe.slip_ms = max(0.0, (time.perf_counter() - t0 - probe.due_s) * 1000)
            value, key = _event(probe, int(now_ms))
            sends.append(await producer.send(run.target.topics["web"], value, key=key))
            probe.sent_ms = now_ms
        await asyncio.gather(*sends)
    finally:
        run.sending_done = True
        await producer.stop()


async def _poll(run: _Run, http: httpx.AsyncClient) -> None:
    """Ask the API for the outstanding probes until every one is visible or the drain ends."""
    base_s = run.plan.poll_ms / 1000
    outstanding: list[Probe] = []
    pending = iter(run.probes)
    upcoming = next(pending, None)
    drain_deadline: float | None = None
    while True:
        while upcoming is not None and upcoming.sent_ms is not None:
            outstanding.append(upcoming)
            upcoming = next(pending, None)
        if run.sending_done and upcoming is None:
            drain_deadline = drain_deadline or time.perf_counter() + run.plan.drain_s
            if not outstanding or time.perf_counter() > drain_deadline:
                return
        if not outstanding:
            await asyncio.sleep(base_s)
            continue
        asked = time.perf_counter()
        try:
            found = await _batch_get(http, [p.contact_id for p in outstanding])
        except httpx.HTTPError:  # a 503 while the API catches up, a timeout: ask again next round
            run.poll_errors += 1
            found = {}
        answered_ms = time.time() * 1000
        run.polls += 1
        still: list[Probe] = []
        for probe in outstanding:
            contact = found.get(probe.contact_id)
            seen = _ms_of(contact.get("last_seen")) if contact is not None else None
            # the probe's event time is its publish time, in whole ms
            if seen is not None and probe.sent_ms is not None and seen >= math.floor(probe.sent_ms):
                probe.visible_ms = answered_ms
            else:
                still.append(probe)
        outstanding = still
        oldest = (answered_ms - outstanding[0].sent_ms) / 1000 if outstanding and outstanding[0].sent_ms else 0.0
        await asyncio.sleep(max(0.0, poll_delay_s(base_s, oldest) - (time.perf_counter() - asked)))


async def _sample_lag(run: _Run, stop: asyncio.Event) -> None:
    """The worker group's lag over its topics (end offsets - committed), every second until
    ``stop``; one admin client and one consumer for the whole run, so sampling stays cheap."""
    kafka = KafkaConnection(run.target.bootstrap)
    admin = clients.admin(kafka)
    reader = clients.consumer(kafka, enable_auto_commit=False)
    await admin.start()
    await reader.start()
    try:
        tps = await clients.partitions_of(reader, run.target.stage_topics)
        while not stop.is_set():
            try:
                committed = await admin.list_consumer_group_offsets(run.target.group)
                ends = await reader.end_offsets(tps)
                done = sum(
                    min(committed[tp].offset, end)
                    for tp, end in ends.items()
                    if tp in committed and committed[tp].offset >= 0
                )
                run.lag.append((time.perf_counter(), sum(ends.values()) - done))
            except KafkaError:
                pass
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), LAG_SAMPLE_S)
    finally:
        await reader.stop()
        await admin.close()


def _start_load(target: Target, rate: float, seconds: float, seed: int) -> subprocess.Popen[str] | None:
    if rate <= 0:
        return None
    command = [sys.executable, "-m", "bench.load", "--bootstrap", target.bootstrap]
    command += ["--web", target.topics["web"], "--email", target.topics["email"], "--store", target.topics["store"]]
    command += ["--rate", str(rate), "--seconds", str(seconds), "--seed", str(seed)]
    return subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _stop_load(procs: list[subprocess.Popen[str] | None]) -> dict[str, Any]:
    """Stop the generators; what they sent, summed (``most_behind_events``: the largest of any)."""
    for proc in procs:
        if proc is not None and proc.poll() is None:
            proc.terminate()
    total: dict[str, Any] = {"sent": 0, "events_per_s": 0.0, "most_behind_events": 0, "cpu_cores": 0.0}
    for proc in procs:
        if proc is None:
            continue
        out, err = proc.communicate(timeout=60)
        lines = out.strip().splitlines()
        if not lines:
            raise RuntimeError(f"the load generator exited with {proc.returncode}: {err[-2000:]}")
        result = json.loads(lines[-1])
        total["sent"] += result["sent"]
        total["events_per_s"] += result["events_per_s"]
        total["cpu_cores"] += result.get("cpu_cores", 0.0)
        total["most_behind_events"] = max(total["most_behind_events"], result["most_behind_events"])
    return total


async def _measure(target: Target, plan: Plan, seed: int) -> tuple[_Run, dict[str, Any], float]:
    run = _Run(target, plan, make_probes(plan))
    headers = {"Authorization": f"Bearer {target.api_key}"}
    async with httpx.AsyncClient(base_url=target.url, headers=headers, timeout=30) as http:
        link_s = await _link_anonymous(run, http)
        longest = plan.warmup_s + plan.probe_seconds + plan.drain_s + 60
        share = plan.background_rate / plan.load_processes
        load = [_start_load(target, share, longest, seed + i) for i in range(plan.load_processes)]
        stop_lag = asyncio.Event()
        try:
            await asyncio.sleep(plan.warmup_s)
            sampler = asyncio.create_task(_sample_lag(run, stop_lag))
            t0 = time.perf_counter()
            sender = asyncio.create_task(_send(run, t0))
            poller = asyncio.create_task(_poll(run, http))
            await sender
            stop_lag.set()  # the lag window is the probing window
            await sampler
            await poller
        finally:
            stop_lag.set()
            generated = _stop_load(load)
    return run, generated, link_s


async def _topic_times(bootstrap: str, topic: str, probes: Iterable[Probe], since_ms: int) -> None:
    """Fill each probe's ``topic_ms``: its contact's first record on ``topic`` at or after its publish."""
    wanted = {p.contact_id: p for p in probes if p.sent_ms is not None}
    consumer = clients.consumer(KafkaConnection(bootstrap), enable_auto_commit=False, auto_offset_reset="earliest")
    await consumer.start()
    try:
        tps = await clients.partitions_of(consumer, [topic])
        if not tps:
            return
        consumer.assign(tps)
        starts = await consumer.offsets_for_times(dict.fromkeys(tps, since_ms))
        ends = await consumer.end_offsets(tps)
        for tp in tps:
            found = starts.get(tp)
            if found is None:
                consumer.seek(tp, ends[tp])
            else:
                consumer.seek(tp, found.offset)

        async def behind() -> bool:
            return any([await consumer.position(tp) < end for tp, end in ends.items()])

        while await behind():
            for records in (await consumer.getmany(timeout_ms=500, max_records=50_000)).values():
                for record in records:
                    probe = wanted.get(_key_text(record.key))
                    if probe is None or probe.topic_ms is not None or probe.sent_ms is None:
                        continue
                    if record.timestamp >= math.floor(probe.sent_ms):
                        probe.topic_ms = record.timestamp
    finally:
        await consumer.stop()


def _key_text(key: bytes | None) -> str:
    """A record key as text: raw bytes, or a JSON string (``"id"``)."""
    if key is None:
        return ""
    if key[:1] == b'"':
        try:
            return str(orjson.loads(key))
        except orjson.JSONDecodeError:
            pass
    return key.decode(errors="replace")


def measure(target: Target, plan: Plan, seed: int = 5) -> dict[str, Any]:
    """Run ``plan`` against ``target``; the figures (see the module's docstring)."""
    cpu_started, started = time.process_time(), time.perf_counter()
    run, generated, link_s = asyncio.run(_measure(target, plan, seed))
    prober_cpu = (time.process_time() - cpu_started) / (time.perf_counter() - started)
    sent = [p for p in run.probes if p.sent_ms is not None]
    if sent:
        since = int(min(p.sent_ms for p in sent if p.sent_ms is not None)) - 1000
        asyncio.run(_topic_times(target.bootstrap, target.api_topic, sent, since))
    slips = [p.slip_ms for p in sent if p.slip_ms is not None]
    anonymous = [p for p in run.probes if p.anonymous_id is not None]
    identified = [p for p in run.probes if p.anonymous_id is None]
    trend = lag_trend(run.lag, plan.lag_tolerance_s * plan.rate)
    achieved_bg = float(generated.get("events_per_s", 0.0))
    return {
        "rate_events_per_s": plan.rate,
        "background_events_per_s": round(plan.background_rate),
        "achieved_background_events_per_s": round(achieved_bg),
        "load_most_behind_events": generated.get("most_behind_events"),
        "load_cpu_cores": round(float(generated.get("cpu_cores", 0.0)), 2),
        "prober_cpu_cores": round(prober_cpu, 2),  # this process: the probes' sender and poller
        "probe_rate_per_s": plan.probe_rate,
        "probes_planned": plan.probes,
        "anonymous_share": round(plan.anonymous_share, 3),
        "poll_ms": plan.poll_ms,
        "polls": run.polls,
        "poll_errors": run.poll_errors,
        "load_processes": plan.load_processes,
        "api_topic": target.api_topic,
        "anonymous_links_served_s": round(link_s, 2),
        "schedule_slip_p99_ms": percentile(slips, 0.99),
        "schedule_slip_max_ms": round(max(slips), 1) if slips else None,
        **summarise(run.probes),
        "identified": summarise(identified),
        "anonymous": summarise(anonymous),
        "lag": None if trend is None else trend.__dict__,
    }


# ----------------------------------------------------------------------------------- sustained
MAX_P99_MS = 1000.0
MIN_ACHIEVED = 0.97  # the load generator reached at least this share of its rate


def sustained_failures(figures: dict[str, Any]) -> list[str]:
    """Why a probe run at a rate was not sustained (empty: it was): the publisher below its rate,
    a probe lost, publish -> visible p99 of 1 s or more, or the worker's lag growing."""
    reasons: list[str] = []
    wanted = figures["background_events_per_s"]
    if figures["achieved_background_events_per_s"] < MIN_ACHIEVED * wanted:
        reasons.append(f"publisher reached {figures['achieved_background_events_per_s']} of {wanted} events/s")
    if figures["lost"]:
        reasons.append(f"{figures['lost']} probes lost")
    p99 = figures["p99_ms"]
    if p99 is None or p99 >= MAX_P99_MS:
        reasons.append(f"p99 {p99} ms")
    lag = figures.get("lag")
    if lag is None:
        reasons.append("no lag samples")
    elif lag["growing"]:
        reasons.append(f"lag grew by {lag['growth']} events (tolerance {lag['tolerance']})")
    return reasons
