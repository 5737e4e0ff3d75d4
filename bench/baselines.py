"""Reference points for the worker's throughput, measured on the same prefilled topic and machine.

Each baseline reads the same ``events`` Segment JSON records of one topic from the beginning (its
own fresh consumer group, or no group) and returns at least ``events``, ``seconds`` and
``events_per_s``:

* :func:`kafka_consumer_perf`: Kafka's own ConsumerPerformance (JVM, no decoding): the broker and
  network ceiling.
* :func:`raw_aiokafka_decode`: aiokafka ``getmany`` + ``orjson.loads`` + a dict update: the
  Python client ceiling.
* :func:`pure_decode_fold`: no Kafka at all; the contract's ``decode`` and the core's
  ``apply_events`` per contact in batches of 5000: the pure-Python ceiling for one stage.
* :func:`stock_faust`: a textbook Faust agent, one event at a time, one RocksDB table write per
  event (or none with ``table_writes=False``), in its own process.
* :func:`hand_rolled_durable`: an aiokafka loop with a Faust table's guarantees: per batch, one
  RocksDB write and one changelog record (acks=all, awaited) per changed contact, then the commit.

Every baseline decodes with the same channel (``"web"``) and ``record_ms=0`` (the traffic always
carries a timestamp), so their decode costs are comparable. The in-process ceilings (raw aiokafka,
pure decode + fold, hand-rolled durable) run with the worker's garbage-collector settings
(:func:`bench.harness.worker_gc`); the stock-Faust baseline, like the Quix Streams peer, is a
textbook application and runs with the defaults. ``python -m bench.baselines`` starts a
broker, prefills a topic and prints all five.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

import orjson
from aiokafka import TopicPartition
from aiokafka.admin import NewTopic

from bench.harness import wait_drained, worker_gc
from kafka_io import clients
from kafka_io.clients import KafkaConnection
from schemas.events import InvalidMessage, decode
from schemas.model_file import load_model
from schemas.state import decode_state, encode
from scorestream import ContactState, Event, Model, apply_events
from scorestream.identity import anonymous_contact_id

REPO = Path(__file__).resolve().parent.parent
KAFKA_SH = REPO / "deploy" / "kafka" / "kafka.sh"
PYTHON = REPO / ".venv" / "bin" / "python"
CHANNEL = "web"
BATCH = 5000


# --------------------------------------------------------------------------------------- helpers
def _rate(events: int, seconds: float) -> int:
    return round(events / seconds) if seconds > 0 else 0


def contact_key(event: Event) -> str:
    """The contact an event belongs to before identity resolution: its user id, else its device."""
    return event.user_id or anonymous_contact_id(event.anonymous_id or "")


async def _partitions(bootstrap: str, topic: str) -> list[TopicPartition]:
    admin = clients.admin(KafkaConnection(bootstrap))
    await admin.start()
    try:
        described = await admin.describe_topics([topic])
    finally:
        await admin.close()
    parts = sorted(p["partition"] for t in described if t["topic"] == topic for p in t["partitions"])
    if not parts:
        raise RuntimeError(f"topic {topic} not found on {bootstrap}")
    return [TopicPartition(topic, p) for p in parts]


async def _read_all(bootstrap: str, topic: str, events: int) -> list[bytes]:
    """The first ``events`` values of ``topic`` (all partitions), without a consumer group."""
    tps = await _partitions(bootstrap, topic)
    consumer = clients.consumer(KafkaConnection(bootstrap), enable_auto_commit=False, max_poll_records=None)
    await consumer.start()
    values: list[bytes] = []
    try:
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        deadline = time.monotonic() + 120
        while len(values) < events:
            if time.monotonic() > deadline:
                raise TimeoutError(f"read {len(values)} of {events} records from {topic}")
            batches = await consumer.getmany(timeout_ms=1000, max_records=100_000)
            for records in batches.values():
                values.extend(r.value for r in records)
    finally:
        await consumer.stop()
    return values[:events]


def _fold_batch(
    raws: list[bytes], states: dict[str, ContactState], model: Model, read: Any = None
) -> tuple[set[str], int]:
    """Decode ``raws`` and fold them per contact (one ``apply_events`` per contact).

    ``read(key)`` loads a state missing from ``states`` (a store lookup); returns the changed keys
    and the number of invalid messages.
    """
    inbox: dict[str, list[Event]] = defaultdict(list)
    invalid = 0
    for raw in raws:
        try:
            event = decode(raw, CHANNEL, 0)
        except InvalidMessage:
            invalid += 1
            continue
        inbox[contact_key(event)].append(event)
    for key, evs in inbox.items():
        state = states.get(key)
        if state is None and read is not None:
            state = read(key)
        states[key] = apply_events(state, key, evs, model)
    return set(inbox), invalid


# ------------------------------------------------------------------------- 1. ConsumerPerformance
def kafka_consumer_perf(bootstrap: str, topic: str, events: int, work: Path) -> dict[str, Any]:
    """Kafka's ConsumerPerformance (kafka-tools) over the topic, in a fresh group.

    Its ``nMsg.sec`` includes the group join (``rebalance.time.ms``); ``fetch.nMsg.sec`` does not.
    The JVM start is outside both.
    """
    work.mkdir(parents=True, exist_ok=True)
    group = f"perf-{uuid.uuid4().hex[:10]}"
    cmd = [
        "bash",
        str(KAFKA_SH),
        "perf-consumer",
        "--bootstrap-server",
        bootstrap,
        "--topic",
        topic,
        "--num-records",
        str(events),
        "--timeout",
        "60000",
        "--group",
        group,
        "--command-property",
        "auto.offset.reset=earliest",
    ]
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=dict(os.environ), capture_output=True, text=True, timeout=300, check=False)
    wall = time.perf_counter() - started
    (work / "perf-consumer.out").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise RuntimeError(f"perf-consumer failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}")
    stats = _parse_perf(proc.stdout)
    consumed = int(stats["data.consumed.in.nMsg"])
    fetch_ms = float(stats["fetch.time.ms"])
    return {
        "events": consumed,
        "seconds": round(fetch_ms / 1000 + float(stats["rebalance.time.ms"]) / 1000, 3),
        "events_per_s": round(float(stats["nMsg.sec"])),
        "fetch_events_per_s": round(float(stats["fetch.nMsg.sec"])),
        "mb_per_s": round(float(stats["MB.sec"]), 2),
        "fetch_mb_per_s": round(float(stats["fetch.MB.sec"]), 2),
        "mb": round(float(stats["data.consumed.in.MB"]), 2),
        "rebalance_ms": int(float(stats["rebalance.time.ms"])),
        "wall_seconds_with_jvm": round(wall, 2),
    }


def _parse_perf(stdout: str) -> dict[str, str]:
    """The header line and the last data line of ConsumerPerformance's summary, by column name."""
    lines = [line for line in stdout.splitlines() if line.strip()]
    header_at = next(i for i, line in enumerate(lines) if "nMsg.sec" in line)
    names = [n.strip() for n in lines[header_at].split(",")]
    data = [line for line in lines[header_at + 1 :] if line.count(",") == len(names) - 1]
    if not data:
        raise RuntimeError(f"no summary line in perf-consumer output:\n{stdout}")
    values = [v.strip() for v in data[-1].split(",")]
    return dict(zip(names, values, strict=True))


# ------------------------------------------------------------------------------- 2. raw aiokafka
def raw_aiokafka_decode(bootstrap: str, topic: str, events: int, work: Path) -> dict[str, Any]:
    """aiokafka ``getmany`` (no group) + ``orjson.loads`` + a plain dict update per record."""
    with worker_gc():
        return asyncio.run(_raw_aiokafka_decode(bootstrap, topic, events))


async def _raw_aiokafka_decode(bootstrap: str, topic: str, events: int) -> dict[str, Any]:
    tps = await _partitions(bootstrap, topic)
    started = time.perf_counter()
    consumer = clients.consumer(
        KafkaConnection(bootstrap),
        enable_auto_commit=False,
        max_poll_records=None,
        fetch_max_bytes=64 << 20,
        max_partition_fetch_bytes=16 << 20,
    )
    await consumer.start()
    seen: dict[str, int] = {}
    consumed = 0
    try:
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        first_at: float | None = None
        deadline = time.monotonic() + 300
        while consumed < events:
            if time.monotonic() > deadline:
                raise TimeoutError(f"consumed {consumed} of {events}")
            batches = await consumer.getmany(timeout_ms=1000, max_records=100_000)
            for records in batches.values():
                if first_at is None:
                    first_at = time.perf_counter()
                for record in records:
                    body = orjson.loads(record.value)
                    key = body.get("userId") or body.get("anonymousId") or ""
                    seen[key] = seen.get(key, 0) + 1
                consumed += len(records)
        elapsed = time.perf_counter() - started
    finally:
        await consumer.stop()
    return {
        "events": consumed,
        "seconds": round(elapsed, 3),
        "events_per_s": _rate(consumed, elapsed),
        "keys": len(seen),
        "startup_s": round((first_at or started) - started, 3),
    }


# ---------------------------------------------------------------------------------- 3. pure fold
def pure_decode_fold(bootstrap: str, topic: str, events: int, work: Path) -> dict[str, Any]:
    """``decode`` + ``apply_events`` per contact in batches of 5000, records already in memory."""
    raws = asyncio.run(_read_all(bootstrap, topic, events))
    model = load_model()
    states: dict[str, ContactState] = {}
    invalid = 0
    with worker_gc():
        started = time.perf_counter()
        for start in range(0, len(raws), BATCH):
            invalid += _fold_batch(raws[start : start + BATCH], states, model)[1]
        elapsed = time.perf_counter() - started
    return {
        "events": len(raws),
        "seconds": round(elapsed, 3),
        "events_per_s": _rate(len(raws), elapsed),
        "contacts": len(states),
        "invalid": invalid,
    }


# -------------------------------------------------------------------------------- 4. stock Faust
_FAUST_APP = '''\
"""A textbook Faust app (written by bench/baselines.py): one event at a time, one table write each."""
import time

import faust

from schemas.events import InvalidMessage, decode
from schemas.model_file import load_model
from schemas.state import decode_state, encode
from scorestream import apply_events

APP_ID = {app_id!r}
TABLE_WRITES = {table_writes!r}
MARKER = {marker!r}

app = faust.App(
    APP_ID,
    broker="kafka://{bootstrap}",
    store="rocksdb://",
    datadir={datadir!r},
    web_enabled=False,
    topic_partitions={partitions},
    consumer_auto_offset_reset="earliest",
    key_serializer="raw",
    value_serializer="raw",
)
source = app.topic({topic!r}, key_type=bytes, value_type=bytes)
contacts = app.Table(
    "contacts", default=None, partitions={partitions}, key_type=bytes, value_type=bytes
)
model = load_model()
counts = {{}}
first = []


@app.agent(source)
async def score(stream):
    async for value in stream:
        if not first:
            first.append(time.time())
            with open(MARKER, "w") as f:
                f.write(repr(first[0]))
        try:
            event = decode(value, {channel!r}, 0)
        except InvalidMessage:
            continue
        key = event.user_id or "anonymous:" + str(event.anonymous_id)
        if TABLE_WRITES:
            raw = contacts.get(key.encode())
            state = apply_events(decode_state(raw) if raw else None, key, [event], model)
            contacts[key.encode()] = encode(state)
        else:
            counts[key] = apply_events(counts.get(key), key, [event], model)


if __name__ == "__main__":
    app.main()
'''


def stock_faust(bootstrap: str, topic: str, events: int, work: Path, *, table_writes: bool = True) -> dict[str, Any]:
    """A textbook Faust worker process; seconds from launch to all source offsets committed.

    ``worker_startup_s`` is launch to the first event in the agent; ``events_per_s_after_startup``
    excludes it. Faust commits every ``broker_commit_interval`` (2.8 s by default) and the drain
    probe polls every 0.25 s, so the figure includes up to ~3 s of commit latency.
    """
    partitions = len(asyncio.run(_partitions(bootstrap, topic)))
    app_id = f"faust-base-{uuid.uuid4().hex[:10]}"
    run_dir = work / app_id
    run_dir.mkdir(parents=True, exist_ok=True)
    marker = run_dir / "first-event"
    app_file = run_dir / "faust_app.py"
    app_file.write_text(
        _FAUST_APP.format(
            app_id=app_id,
            table_writes=table_writes,
            marker=str(marker),
            bootstrap=bootstrap,
            datadir=str(run_dir / "data"),
            partitions=partitions,
            topic=topic,
            channel=CHANNEL,
        )
    )
    env = dict(os.environ)
    env["PYTHONPATH"] = f"{REPO / 'src'}:{REPO}"
    log = app_file.with_suffix(".log").open("wb")
    launched_wall = time.time()
    proc = subprocess.Popen(
        [str(PYTHON), str(app_file), "worker", "-l", "warn"],
        cwd=run_dir,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        drained = _drained_while_alive(
            proc, app_file.with_suffix(".log"), bootstrap, app_id, topic, timeout_s=max(120.0, events / 500)
        )
    finally:
        _stop(proc)
        log.close()
    startup = float(marker.read_text()) - launched_wall if marker.exists() else None
    busy = drained - startup if startup is not None else None
    return {
        "events": events,
        "seconds": round(drained, 2),
        "events_per_s": _rate(events, drained),
        "worker_startup_s": round(startup, 2) if startup is not None else None,
        "events_per_s_after_startup": _rate(events, busy) if busy else None,
        "table_writes": table_writes,
    }


def _drained_while_alive(
    proc: subprocess.Popen[bytes], log_path: Path, bootstrap: str, group: str, topic: str, timeout_s: float
) -> float:
    """``wait_drained`` in 20 s slices, failing fast if the worker process dies."""
    started = time.perf_counter()
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"faust worker exited with {proc.returncode}; see {log_path}")
        offset = time.perf_counter() - started
        if offset > timeout_s:
            raise TimeoutError(f"group {group} not drained in {timeout_s} s")
        try:
            return offset + wait_drained(bootstrap, group=group, topics=[topic], timeout_s=20.0)
        except TimeoutError:
            continue


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=15)


# ------------------------------------------------------------------------ 5. hand-rolled durable
def hand_rolled_durable(bootstrap: str, topic: str, events: int, work: Path) -> dict[str, Any]:
    """A consumer-group loop with a Faust table's guarantees, batched.

    Per ``getmany`` batch: decode, one ``apply_events`` per contact, one RocksDB write batch with
    each changed key once, each changed key produced once to a compacted changelog (acks=all,
    awaited), then the offsets committed.
    """
    with worker_gc():  # the same collector settings as the worker: a ceiling, not a straw man
        return asyncio.run(_hand_rolled_durable(bootstrap, topic, events, work))


async def _hand_rolled_durable(bootstrap: str, topic: str, events: int, work: Path) -> dict[str, Any]:
    from rocksdict import Rdict, WriteBatch

    tps = await _partitions(bootstrap, topic)
    run_id = f"durable-{uuid.uuid4().hex[:10]}"
    changelog = f"{run_id}-contacts-changelog"
    admin = clients.admin(KafkaConnection(bootstrap))
    await admin.start()
    try:
        await admin.create_topics(
            [
                NewTopic(
                    changelog,
                    num_partitions=len(tps),
                    replication_factor=1,
                    topic_configs={"cleanup.policy": "compact"},
                )
            ]
        )
    finally:
        await admin.close()
    db_path = work / run_id / "contacts.rocksdb"
    db_path.parent.mkdir(parents=True, exist_ok=True)
    db: Any = Rdict(str(db_path))
    model = load_model()
    started = time.perf_counter()
    consumer = clients.consumer(
        KafkaConnection(bootstrap),
        topic,
        group_id=run_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=BATCH,
        fetch_max_bytes=64 << 20,
        max_partition_fetch_bytes=16 << 20,
    )
    producer = clients.producer(
        KafkaConnection(bootstrap), acks="all", linger_ms=5, max_batch_size=1 << 20, enable_idempotence=True
    )
    consumed = invalid = writes = batches = 0
    first_at: float | None = None

    def read(key: str) -> ContactState | None:
        raw = db.get(key.encode())
        return decode_state(raw) if raw is not None else None

    try:
        await producer.start()
        await consumer.start()
        deadline = time.monotonic() + max(120.0, events / 500)
        while consumed < events:
            if time.monotonic() > deadline:
                raise TimeoutError(f"consumed {consumed} of {events}")
            fetched = await consumer.getmany(timeout_ms=1000, max_records=BATCH)
            raws = [r.value for records in fetched.values() for r in records]
            if not raws:
                continue
            if first_at is None:
                first_at = time.perf_counter()
            states: dict[str, ContactState] = {}
            changed, bad = _fold_batch(raws, states, model, read)
            invalid += bad
            wb = WriteBatch()
            futures = []
            for key in changed:
                k, v = key.encode(), encode(states[key])
                wb.put(k, v)
                futures.append(await producer.send(changelog, v, key=k))
            db.write(wb)
            await asyncio.gather(*futures)
            await consumer.commit()
            consumed += len(raws)
            writes += len(changed)
            batches += 1
        elapsed = time.perf_counter() - started
    finally:
        await consumer.stop()
        await producer.stop()
        db.close()
    return {
        "events": consumed,
        "seconds": round(elapsed, 3),
        "events_per_s": _rate(consumed, elapsed),
        "startup_s": round((first_at or started) - started, 3),
        "events_per_s_after_startup": _rate(consumed, elapsed - ((first_at or started) - started)),
        "batches": batches,
        "changelog_writes": writes,
        "invalid": invalid,
    }


# ------------------------------------------------------------------------------------------ main
async def prefill_topic(bootstrap: str, topic: str, events: int, partitions: int = 4) -> None:
    """Create ``topic`` and publish ``Traffic(5000, seed=3).records(events)`` (keyed by contact)."""
    from bench.harness import create_topic, publish
    from deploy.traffic import Traffic

    await create_topic(bootstrap, topic, partitions)
    await publish(bootstrap, ((topic, r.key, r.value) for r in Traffic(5000, seed=3).records(events)))


def main() -> None:
    from tests.e2e.service import free_port
    from tests.kafka_broker import ensure_broker, stop_broker

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, app sources)")
    parser.add_argument("--skip", default="", help="comma-separated: perf,raw,pure,faust,faust_no_table,durable")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    skip = set(filter(None, args.skip.split(",")))
    work = Path(tempfile.mkdtemp(prefix="scorestream-baselines-"))
    port = free_port()
    bootstrap = ensure_broker(work / "kafka", port)
    try:
        topic = f"baseline-{uuid.uuid4().hex[:8]}"
        asyncio.run(prefill_topic(bootstrap, topic, args.events))
        runs: dict[str, Any] = {
            "perf": kafka_consumer_perf,
            "raw": raw_aiokafka_decode,
            "pure": pure_decode_fold,
            "faust": stock_faust,
            "faust_no_table": lambda b, t, n, w: stock_faust(b, t, n, w, table_writes=False),
            "durable": hand_rolled_durable,
        }
        for name, run in runs.items():
            if name in skip:
                continue
            try:
                result = run(bootstrap, topic, args.events, work / name)
            except Exception as exc:  # report and go on: one broken baseline must not hide the others
                result = {"error": f"{type(exc).__name__}: {exc}"}
            print(name, json.dumps(result), flush=True)
    finally:
        stop_broker(work / "kafka", port)
        if args.keep:
            print("work directory:", work, flush=True)
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
