"""Replay's speed: events/s folding a prefilled topic from the beginning in one process
(``analytics.replay``), beside the live worker's throughput on the same generated events."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from analytics.replay import fold_source
from bench.harness import prefill, worker_gc
from bench.scenarios import _create_topics, _topics, worker_throughput
from schemas.model_file import load_model
from schemas.settings import Settings
from tests.e2e.service import Service


def replay_throughput(
    bootstrap: str, work: Path, events: int, contacts: int, live: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Replay events/s over ``events`` generated events (the worker benches' seed), and the ratio
    to the live worker's events/s after start-up: ``live`` (a :func:`worker_throughput` figure of
    this run) or measured here on the same events."""
    svc = Service(bootstrap=bootstrap, data_dir=work / f"replay-{events}")
    _create_topics(svc)
    asyncio.run(prefill(bootstrap, _topics(svc), events, contacts, seed=3, now_ms=int(time.time() * 1000)))
    settings = Settings(
        kafka_bootstrap=bootstrap,
        app_id=f"ss-{svc.suffix}",
        topic_web=svc.topic("web"),
        topic_email=svc.topic("email"),
        topic_store=svc.topic("store"),
        partitions=svc.partitions,
    )
    model = load_model()
    with worker_gc():
        fold, records, seconds = asyncio.run(fold_source(settings, model))
    contacts_out = sum(1 for _ in fold.contacts)
    if live is None:
        live = worker_throughput(bootstrap, work, events, contacts, label="-replay-live")
    live_rate = live.get("events_per_s_after_startup") or live.get("events_per_s")
    rate = records / seconds
    return {
        "events": records,
        "invalid": fold.invalid,
        "contact_records": contacts_out,
        "seconds": round(seconds, 2),
        "replay_events_per_s": round(rate),
        "live_worker_events_per_s": live_rate,
        "replay_vs_live": round(rate / live_rate, 2) if live_rate else None,
    }
