"""Where a worker's time goes: py-spy samples of a real worker under load, summed per function.

``python -m bench.profile_worker --model full --load live --rate 1000`` starts a broker and a
worker, publishes live traffic (stamped as sent, up to ``bench.scenarios.LIVE_JITTER_MS`` late) at
``--rate`` for ``--seconds`` while py-spy samples the worker, and prints the share of samples in
which each function is on the stack. ``--load backfill`` prefills 200k events (random event
times over 30 days) first and samples the worker while it works through them. ``--model spine``
uses the default model cut to engagement and fit (``bench.scenarios.spine_model``).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson

from bench.harness import prefill
from bench.load import LIVE_JITTER_MS
from bench.scenarios import _create_topics, _topics, spine_model
from deploy.traffic import Traffic
from kafka_io import clients
from kafka_io.clients import KafkaConnection
from tests.e2e.service import Service, free_port
from tests.kafka_broker import ensure_broker, stop_broker


async def live_load(svc: Service, rate: float, seconds: float) -> None:
    traffic = Traffic(20_000, seed=5, live_jitter_ms=LIVE_JITTER_MS)
    topics = _topics(svc)
    producer = clients.producer(KafkaConnection(svc.bootstrap), acks="all", linger_ms=1)
    await producer.start()
    try:
        started, sent = time.perf_counter(), 0
        while time.perf_counter() - started < seconds:
            due = int((time.perf_counter() - started) * rate) + 1
            while sent < due:
                channel, _, msg = traffic.message()
                key = (msg.get("userId") or msg.get("anonymousId") or "").encode() or None
                await producer.send(topics[channel], orjson.dumps(msg), key=key)
                sent += 1
            await asyncio.sleep(0.005)
    finally:
        await producer.stop()


def summarise(raw: Path, top: int) -> list[tuple[float, str]]:
    """Share of samples with each function (``name (file)``) on the stack, largest first."""
    counts: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        total += int(n)
        frames = {f.split(":")[0] + ")" if " (" in f else f for f in stack.split(";")}
        for frame in frames:
            counts[frame] += int(n)
    return [(100 * n / total, f) for f, n in counts.most_common(top)] if total else []


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["full", "spine"], default="full")
    parser.add_argument("--load", choices=["live", "backfill"], default="live")
    parser.add_argument("--rate", type=float, default=1000)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--top", type=int, default=45)
    args = parser.parse_args()
    beside = Path(sys.executable).parent / "py-spy"  # the virtualenv's, when not activated
    spy = str(beside) if beside.exists() else shutil.which("py-spy")
    if spy is None:
        raise SystemExit("py-spy is not installed: pip install -e '.[dev]'")
    work = Path(tempfile.mkdtemp(prefix="scorestream-profile-"))
    port = free_port()
    bootstrap = ensure_broker(work / "kafka", port)
    raw = work / "samples.txt"
    try:
        svc = Service(
            bootstrap=bootstrap, data_dir=work / "svc", model=spine_model(work) if args.model == "spine" else None
        )
        _create_topics(svc)
        if args.load == "backfill":
            asyncio.run(prefill(bootstrap, _topics(svc), 200_000, 20_000, seed=3, now_ms=int(time.time() * 1000)))
        svc.start_worker()
        assert svc.worker is not None
        time.sleep(5)  # past start-up
        command = [spy, "record", "--format", "raw", "-o", str(raw), "--pid", str(svc.worker.pid)]
        command += ["--duration", str(int(args.seconds)), "--rate", "200", "--nonblocking"]
        sampler = subprocess.Popen(
            command,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        if args.load == "live":
            asyncio.run(live_load(svc, args.rate, args.seconds + 2))
        sampler.wait()
        svc.stop()
    finally:
        stop_broker(work / "kafka", port)
    try:
        shares = summarise(raw, args.top)
    finally:
        shutil.rmtree(work, ignore_errors=True)  # the broker's logs: hundreds of MB a run
    for share, frame in shares:
        print(f"{share:5.1f}%  {frame}")


if __name__ == "__main__":
    main()
