"""``make demo``: publish mixed traffic at a steady rate and show the most active contacts' scores."""

from __future__ import annotations

import asyncio
import time

import httpx
from rich.console import Console
from rich.table import Table

from deploy.traffic import Traffic
from kafka_io import clients
from schemas.api_keys import key_of
from schemas.settings import Settings


def _table(contacts: list[dict[str, object]]) -> Table:
    table = Table(title="most active contacts")
    for col in ("contact", "email", "engagement", "fit", "grade", "stage", "flags", "top rule"):
        table.add_column(col)
    for c in contacts:
        eng = c["engagement"]
        fit = c["fit"]
        assert isinstance(eng, dict) and isinstance(fit, dict)
        identity = c["identity"]
        assert isinstance(identity, dict)
        top = eng["top"][0]["rule"] if eng["top"] else "-"
        stage = c.get("stage")
        flags = c.get("flags") or []
        assert isinstance(flags, list)
        table.add_row(
            str(c["contact_id"]),
            str(identity.get("email") or "-"),
            f"{eng['score']:.1f}",
            f"{fit['score']:.0f}",
            str(c["grade"]),
            str(stage["name"]) if isinstance(stage, dict) else "-",
            ", ".join(str(f["flag"]) for f in flags) or "-",
            top,
        )
    return table


async def demo(settings: Settings, events: int, contacts: int, rate: float, seed: int) -> int:
    console = Console()
    plain = [k for entry in settings.api_keys if (k := key_of(entry.get_secret_value())) is not None]
    key = plain[0] if plain else (settings.data_dir / "dev-api-key").read_text().strip()
    url = f"http://{settings.api_host}:{settings.api_port}"
    span = 14 * 86_400_000
    traffic = Traffic(contacts, seed=seed, start_ms=int(time.time() * 1000) - span, span_ms=span)
    topics = {channel: topic for topic, channel in settings.source_topics.items()}
    producer = clients.producer(settings, acks="all", linger_ms=5)
    await producer.start()
    watched = [f"user-{i}" for i in range(10)] + [f"anon-{i}" for i in range(10)]
    started = time.monotonic()
    try:
        async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {key}"}) as http:
            for i, record in enumerate(traffic.records(events), start=1):
                await producer.send(topics[record.channel], record.value, key=record.key)
                lag = i / rate - (time.monotonic() - started)
                if lag > 0:
                    await asyncio.sleep(lag)
                if i % max(int(rate * 3), 1) == 0 or i == events:
                    await producer.flush()
                    await asyncio.sleep(0.3)
                    body = (await http.post("/v1/contacts:batchGet", json={"ids": watched})).json()
                    seen = {c["contact_id"]: c for c in body.get("contacts", [])}
                    console.clear()
                    console.print(f"published {i}/{events} events ({rate:.0f}/s) to {', '.join(topics.values())}")
                    console.print(_table(sorted(seen.values(), key=lambda c: -c["engagement"]["score"])[:10]))
    finally:
        await producer.stop()
    console.print(f"done: {events} events in {time.monotonic() - started:.1f} s; try GET {url}/v1/contacts/user-0")
    return 0
