"""The webhook dispatcher's figures: the real dispatcher process on the local broker, delivering
to a real local HTTP receiver (``tests/webhook_receiver.py``, in this process).

- ``throughput``: N triggers published before the dispatcher starts, one fast subscriber;
  time from the process start (and from the first delivery) to the last delivery.
- ``healthy``: triggers published at a steady rate to one subscriber; delay from the trigger's
  publish to its arrival at the receiver (p50/p99).
- ``one_down``: the same with a second subscriber whose port refuses connections for the whole
  run (the default retry schedule): the healthy one's delays and throughput, how many deliveries
  to the dead one are pending or failed at the end (and how many were never attempted: per
  contact they wait behind the earlier one's next retry), and the dispatcher's memory.
"""

from __future__ import annotations

import asyncio
import os
import socket
import statistics
import time
import uuid
from pathlib import Path
from typing import Any

import orjson

from bench.harness import process_usage, standalone
from kafka_io import clients
from kafka_io.clients import KafkaConnection
from scorestream.delivery import DEFAULT_SCHEDULE_S, delivery_id, new_secret
from tests.e2e.hooks import Hooks, subscription, trigger
from tests.e2e.service import wait_for
from tests.webhook_receiver import Receiver


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)


def _deployment(bootstrap: str, work: Path, name: str, **env: str) -> Hooks:
    hooks = Hooks(
        bootstrap,
        work / f"webhooks-{name}",
        partitions=4,
        env_extra={
            "SCORESTREAM_LOG_LEVEL": "WARNING",
            "SCORESTREAM_WEBHOOK_TIMEOUT_S": "5",
            "SCORESTREAM_WEBHOOK_RETRY_SCHEDULE": ",".join(f"{s:g}" for s in DEFAULT_SCHEDULE_S),
            **env,
        },
    )
    hooks.create_topics()
    return hooks


async def _publish_at_rate(hooks: Hooks, tag: str, rate: float, seconds: float, keys: int) -> dict[str, float]:
    """Publish triggers at ``rate`` per second; trigger id -> publish time (acknowledged)."""
    producer = clients.producer(KafkaConnection(hooks.bootstrap), acks="all", linger_ms=1)
    await producer.start()
    sent: dict[str, float] = {}
    pending = []
    try:
        started = time.perf_counter()
        n = 0
        while time.perf_counter() - started < seconds:
            due = int((time.perf_counter() - started) * rate) + 1
            while n < due:
                t = trigger(tag, f"c{n % keys}", n)
                sent[t["id"]] = time.time()
                pending.append(
                    await producer.send(
                        hooks.settings.topic_triggers, orjson.dumps(t), key=str(t["contact_id"]).encode()
                    )
                )
                n += 1
            await asyncio.sleep(0.005)
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return sent


def _subscribe(hooks: Hooks, receiver: Receiver, path: str, tag: str) -> str:
    sub = subscription(receiver.url(path), tag, new_secret(os.urandom(32)))
    hooks.subscribe(sub)
    return sub.id


def throughput(bootstrap: str, work: Path, receiver: Receiver, count: int) -> dict[str, Any]:
    hooks = _deployment(bootstrap, work, "throughput")
    tag = f"b{uuid.uuid4().hex[:6]}"
    sub_id = _subscribe(hooks, receiver, "/fast", tag)
    triggers = [trigger(tag, f"c{n % 1000}", n) for n in range(count)]
    hooks.triggers(triggers)
    expected = {delivery_id(str(t["id"]), sub_id) for t in triggers}
    started = time.time()
    hooks.start()
    try:
        wait_for(lambda: len({r.webhook_id for r in receiver.at("/fast")} & expected) >= count, 600, "all delivered")
        arrivals = sorted(r.at for r in receiver.at("/fast"))
        assert hooks.proc is not None
        usage = process_usage(hooks.proc.pid)
    finally:
        hooks.stop()
    total_s = arrivals[-1] - started
    burst_s = arrivals[-1] - arrivals[0]
    return {
        "triggers": count,
        "requests": len(arrivals),
        "seconds_from_process_start": round(total_s, 2),
        "deliveries_per_s_from_process_start": round(count / total_s),
        "deliveries_per_s_after_first_delivery": round(count / burst_s) if burst_s > 0 else None,
        "dispatcher_cpu_s": round(usage.cpu_s, 1),
        "dispatcher_rss_mb": round(usage.rss_mb),
    }


def steady(
    bootstrap: str, work: Path, receiver: Receiver, rate: float, seconds: float, dead_too: bool
) -> dict[str, Any]:
    name = "one-down" if dead_too else "healthy"
    hooks = _deployment(bootstrap, work, name)
    tag = f"b{uuid.uuid4().hex[:6]}"
    path = f"/{name}"
    sub_id = _subscribe(hooks, receiver, path, tag)
    dead_id = None
    if dead_too:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            closed = s.getsockname()[1]
        dead = subscription(f"http://127.0.0.1:{closed}/down", tag, new_secret(os.urandom(32)))
        hooks.subscribe(dead)
        dead_id = dead.id
    hooks.start()
    try:
        time.sleep(3.0)  # joined and recovered (empty topics)
        sent = asyncio.run(_publish_at_rate(hooks, tag, rate, seconds, keys=2000))
        expected = {delivery_id(tid, sub_id): at for tid, at in sent.items()}
        wait_for(
            lambda: len({r.webhook_id for r in receiver.at(path)} & set(expected)) >= len(expected), 120, "drained"
        )
        assert hooks.proc is not None
        usage = process_usage(hooks.proc.pid)
        first: dict[str, float] = {}
        for r in receiver.at(path):
            first.setdefault(r.webhook_id, r.at)
        delays = [(first[d] - at) * 1000 for d, at in expected.items() if d in first]
        span = max(first.values()) - min(first.values())
        figures: dict[str, Any] = {
            "rate_per_s": rate,
            "seconds": seconds,
            "triggers": len(sent),
            "delay_ms_p50": _pct(delays, 0.50),
            "delay_ms_p99": _pct(delays, 0.99),
            "delay_ms_max": round(max(delays), 1),
            "delay_ms_mean": round(statistics.fmean(delays), 1),
            "healthy_deliveries_per_s": round(len(first) / span) if span > 0 else None,
            "dispatcher_rss_mb": round(usage.rss_mb),
            "dispatcher_cpu_s": round(usage.cpu_s, 1),
        }
        if dead_id is not None:
            records = [r for r in hooks.deliveries().values() if r.subscription_id == dead_id]
            figures["dead_subscriber"] = {
                "deliveries": len(records),
                "pending": sum(r.status == "pending" for r in records),
                "failed": sum(r.status == "failed" for r in records),
                "attempts": sum(r.attempt_count for r in records),
                # per contact in order: these wait behind an earlier delivery of theirs (its next retry)
                "waiting_behind_an_earlier_one": sum(r.attempt_count == 0 for r in records),
            }
        return figures
    finally:
        hooks.stop()


def webhook_dispatch(
    bootstrap: str, work: Path, count: int = 20_000, rate: float = 300.0, seconds: float = 20.0
) -> dict[str, Any]:
    """The three runs; returns their figures."""
    receiver = Receiver().start()
    try:
        return {
            "throughput": throughput(bootstrap, work, receiver, count),
            "healthy": steady(bootstrap, work, receiver, rate, seconds, dead_too=False),
            "one_down": steady(bootstrap, work, receiver, rate, seconds, dead_too=True),
        }
    finally:
        receiver.stop()


if __name__ == "__main__":  # a small run on a fresh local broker: python -m bench.webhooks [count rate seconds]
    import sys

    args = [float(a) for a in sys.argv[1:]]
    count, rate, seconds = (
        int(args[0]) if args else 2000,
        args[1] if len(args) > 1 else 100.0,
        args[2] if len(args) > 2 else 8.0,
    )
    standalone("bench-webhooks", lambda bootstrap, work: webhook_dispatch(bootstrap, work, count, rate, seconds))
