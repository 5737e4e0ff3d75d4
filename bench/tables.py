"""Markdown tables of a bench run's latency and sustained-rate figures (``bench.run`` writes them
above the list of every figure)."""

from __future__ import annotations

import re
from typing import Any

RATIOS = re.compile(r"^ratios(_\d+k)?$")
PEERS = ("hand_rolled_durable", "stock_faust_table_per_event", "quix_streams_peer")
LATENCY = re.compile(r"^(latency|service)_(\d+)(_spine_model)?$")
SUSTAINED = re.compile(r"^(sustained|service_sustained)(_spine_model)?$")


def _ms(value: Any) -> str:
    return "lost" if value is None else f"{value:,.0f}" if value >= 10 else f"{value:.1f}"


def _triple(figures: dict[str, Any], prefix: str) -> str:
    return " / ".join(_ms(figures.get(f"{prefix}{p}_ms")) for p in ("p50", "p99", "p999"))


def latency(figures: dict[str, Any]) -> list[str]:
    """One row per latency run and kind of probe: p50 / p99 / p99.9 publish -> visible, and its
    worker and API parts (ms; ``lost`` where the percentile falls on a lost probe)."""
    rows: list[str] = []
    for name, run in figures.items():
        match = LATENCY.match(name)
        if not match or not isinstance(run, dict) or "p50_ms" not in run:
            continue
        where = "bench" if match[1] == "latency" else "whole service"
        model = "spine" if match[3] else "full"
        for kind, part in (("all", run), ("identified", run.get("identified")), ("anonymous", run.get("anonymous"))):
            if not part or not part.get("probes"):
                continue
            rows.append(
                f"| {where} | {model} | {int(match[2]):,} | {run.get('achieved_background_events_per_s', '')} | "
                f"{kind} | {part['probes']} | {part['lost']} | {_triple(part, '')} | {_triple(part, 'worker_')} | "
                f"{_triple(part, 'api_')} |"
            )
    if not rows:
        return []
    return [
        "| where | model | events/s | background achieved | probes | n | lost | p50 / p99 / p99.9 ms | "
        "worker part | API part |",
        "| --- | --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: |",
        *rows,
        "",
    ]


def sustained(figures: dict[str, Any]) -> list[str]:
    """One row per rate tried for a sustained maximum: held or not, and why not."""
    rows: list[str] = []
    for name, run in figures.items():
        match = SUSTAINED.match(name)
        if not match or not isinstance(run, dict):
            continue
        where = "bench" if match[1] == "sustained" else "whole service"
        model = "spine" if match[2] else "full"
        for rate, tried in run.get("tried", {}).items():
            lag = tried.get("lag") or {}
            rows.append(
                f"| {where} | {model} | {int(rate):,} | {'yes' if tried['sustained'] else 'no'} | "
                f"{_ms(tried.get('p50_ms'))} / {_ms(tried.get('p99_ms'))} | {tried.get('lost')} | "
                f"{lag.get('growth', '')} | {'; '.join(tried.get('why_not', []))} |"
            )
        rows.append(
            f"| {where} | {model} | **max {run['max_sustained_events_per_s']:,.0f}** | "
            f"({run['seconds_per_rate']} s a rate) | | | | |"
        )
    if not rows:
        return []
    return [
        "| where | model | events/s | sustained | p50 / p99 ms | lost | lag growth (events) | why not |",
        "| --- | --- | ---: | --- | ---: | ---: | ---: | --- |",
        *rows,
        "",
    ]


def _rate(figures: dict[str, Any], name: str, key: str) -> str:
    value = figures.get(name, {}).get(key)
    return f"{value:,.0f}" if isinstance(value, int | float) else "-"


def throughput(figures: dict[str, Any]) -> list[str]:
    """One row per prefilled size: the worker's events/s (spine, full model) after start-up, the
    peers' events/s on the same events, and our ratios to them."""
    rows: list[str] = []
    for name, ratios in figures.items():
        match = RATIOS.match(name)
        if not match or not isinstance(ratios, dict):
            continue
        suffix = match[1] or ""
        events = figures.get(f"throughput_spine{suffix}", {}).get("events", "")
        ours = [
            _rate(figures, f"throughput_{m}{suffix}", "events_per_s_after_startup") for m in ("spine", "full_model")
        ]
        theirs = [_rate(figures, f"{peer}{suffix}", "events_per_s") for peer in PEERS]
        shown = " / ".join(
            f"{ratios.get(f'{label}_vs_{peer}', '-')}" for label in ("scorestream", "full_model") for peer in PEERS
        )
        rows.append(f"| {events:,} | {' | '.join(ours)} | {' | '.join(theirs)} | {shown} |" if events else "")
    rows = [row for row in rows if row]
    if not rows:
        return []
    return [
        "| events | spine | full | hand-rolled | stock Faust | Quix | ratios spine vs hand-rolled / Faust / Quix, "
        "then full vs the same |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | --- |",
        *rows,
        "",
    ]
