"""``make bench``: run the benchmarks on a local broker, write JSON + Markdown, print the table.

Absolute numbers are reported, never asserted: the machines are shared and noisy. Comparisons
are made in the same run, on the same data.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from bench import scenarios
from tests.e2e.service import free_port
from tests.kafka_broker import ensure_broker, stop_broker

RESULTS = Path(__file__).parent / "results"


def flat(figures: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """``section.key.subkey`` rows from the nested figures."""
    rows: list[tuple[str, Any]] = []
    for key, value in figures.items():
        name = f"{prefix}{key}"
        rows.extend(flat(value, f"{name}.") if isinstance(value, dict) else [(name, value)])
    return rows


def markdown(results: dict[str, Any]) -> str:
    lines = ["| figure | value |", "| --- | --- |"]
    lines += [f"| {name} | {value} |" for name, value in flat(results["figures"])]
    return "\n".join(lines) + "\n"


@dataclass
class Bench:
    """One run: its arguments, the broker, the work directory, the figures so far and how to save them."""

    args: argparse.Namespace
    bootstrap: str
    work: Path
    figures: dict[str, dict[str, Any]]
    save: Callable[[], None]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--name", default="spine")
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--contacts", type=int, default=20_000)
    parser.add_argument("--big-events", type=int, default=1_000_000, help="events of the large throughput run")
    parser.add_argument("--big-contacts", type=int, default=100_000, help="contacts of the large throughput run")
    parser.add_argument("--recovery-contacts", type=int, default=1_000_000, help="contacts held for recovery/memory")
    parser.add_argument("--rates", default="1000,5000,10000", help="comma-separated latency rates (events/s)")
    parser.add_argument(
        "--sustain-rates",
        default="1000,2000,3000,4000,6000,8000,12000,16000",
        help="rates tried for the sustained maximum",
    )
    parser.add_argument(
        "--skip",
        default="",
        help="comma-separated scenarios to skip: "
        "pure,throughput,clv,timers,big,peers,latency,sustained,api,collector,recovery,webhooks,sink,analytics",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory (broker logs, worker data)")
    return parser


def _worker_scenarios(b: Bench, skip: set[str]) -> None:
    """The worker's scenarios: the fold, throughput, CLV, timers, the peers, latency, sustained rate."""
    if "pure" not in skip:
        b.figures["pure_python_fold"] = scenarios.pure_fold(b.args.events, b.args.contacts)
        b.save()
    if "throughput" not in skip:
        _throughput(b)
    if "clv" not in skip:
        b.figures["clv_fit_cdnow"] = scenarios.clv_fit_cdnow()
        b.save()
    if "timers" not in skip:
        b.figures["timer_lateness"] = scenarios.timer_lateness(b.bootstrap, b.work)
        b.save()
    if "peers" not in skip:
        b.figures.update(scenarios.limits_and_peers(b.bootstrap, b.work, b.args.events, b.args.contacts))
        # the peers run the spine's engagement job; the full model is set beside them too
        # (issue 4: the full model keeps the speed issue's throughput against the peers)
        ratios = _peer_ratios(b.figures)
        if ratios:
            b.figures["ratios"] = ratios
        b.save()
    if "big" not in skip:
        b.figures["throughput_large"] = scenarios.worker_throughput(
            b.bootstrap, b.work, b.args.big_events, b.args.big_contacts
        )
        b.save()
    if "latency" not in skip:
        for rate in (float(r) for r in b.args.rates.split(",")):
            b.figures[f"latency_{int(rate)}"] = scenarios.publish_to_api_latency(b.bootstrap, b.work, rate)
            b.save()
            b.figures[f"latency_{int(rate)}_spine_model"] = scenarios.publish_to_api_latency(
                b.bootstrap, b.work, rate, model=scenarios.spine_model(b.work)
            )
            b.save()
    if "sustained" not in skip:
        rates = [float(r) for r in b.args.sustain_rates.split(",")]
        b.figures["sustained"] = scenarios.max_sustained_rate(b.bootstrap, b.work, rates)
        b.save()


def _throughput(b: Bench) -> None:
    """The worker's throughput: spine and full model, shuffled and in event-time order."""
    # the same events under the spine's engagement-only model and under the full model
    spine = scenarios.spine_model(b.work)
    b.figures["throughput_spine"] = scenarios.worker_throughput(
        b.bootstrap, b.work, b.args.events, b.args.contacts, model=spine, label="-spine"
    )
    b.save()
    b.figures["throughput_full_model"] = scenarios.worker_throughput(
        b.bootstrap, b.work, b.args.events, b.args.contacts, label="-full"
    )
    spine_rate = b.figures["throughput_spine"]["events_per_s_after_startup"]
    full_rate = b.figures["throughput_full_model"]["events_per_s_after_startup"]
    if spine_rate and full_rate:
        b.figures["throughput_full_model"]["vs_spine_model"] = round(full_rate / spine_rate, 2)
    b.save()
    # the same events in event-time order (live traffic, a time-ordered backfill)
    for name, path in (("spine", spine), ("full_model", None)):
        b.figures[f"throughput_{name}_in_time_order"] = scenarios.worker_throughput(
            b.bootstrap, b.work, b.args.events, b.args.contacts, model=path, label=f"-{name}-ordered", ordered=True
        )
        b.save()
    spine_rate = b.figures["throughput_spine_in_time_order"]["events_per_s_after_startup"]
    full_rate = b.figures["throughput_full_model_in_time_order"]["events_per_s_after_startup"]
    if spine_rate and full_rate:
        b.figures["throughput_full_model_in_time_order"]["vs_spine_model"] = round(full_rate / spine_rate, 2)
    b.save()


def _peer_ratios(figures: dict[str, dict[str, Any]]) -> dict[str, float]:
    """Our throughput (spine and full model) over each peer's."""
    ratios: dict[str, float] = {}
    for label, run in (("scorestream", "throughput_spine"), ("full_model", "throughput_full_model")):
        ours = figures.get(run, {}).get("events_per_s_after_startup")
        if ours:
            ratios.update(
                {
                    f"{label}_vs_{name}": round(ours / rate, 2)
                    for name in ("hand_rolled_durable", "stock_faust_table_per_event", "quix_streams_peer")
                    if (rate := figures.get(name, {}).get("events_per_s"))
                }
            )
    return ratios


def _service_scenarios(b: Bench, skip: set[str]) -> None:
    """The other processes' scenarios: API, collector, recovery, webhooks, sink, analytics, replay."""
    if "api" not in skip:
        from bench.api_load import api_lookups

        b.figures["api"] = api_lookups(b.bootstrap, b.work)
        b.save()
    if "collector" not in skip:
        from bench.collector import collector_load

        b.figures["collector"] = collector_load(b.bootstrap, b.work)
        b.save()
    if "recovery" not in skip:
        b.figures["recovery"] = scenarios.recovery_and_memory(b.bootstrap, b.work, b.args.recovery_contacts)
        b.save()
    if "webhooks" not in skip:
        from bench.webhooks import webhook_dispatch

        b.figures["webhooks"] = webhook_dispatch(b.bootstrap, b.work)
        b.save()
    if "sink" not in skip:
        from bench.sink import sink_throughput

        b.figures["sink"] = sink_throughput(b.bootstrap, b.work, b.args.events, b.args.contacts)
        b.save()
    if "analytics" not in skip:
        from bench.analytics import analytics_figures

        b.figures["analytics"] = analytics_figures(b.bootstrap, b.work)
        b.save()
    if "replay" not in skip:
        from bench.replay import replay_throughput

        b.figures["replay"] = replay_throughput(
            b.bootstrap, b.work, b.args.events, b.args.contacts, live=b.figures.get("throughput_full_model")
        )
        b.save()


def main() -> None:
    args = _parser().parse_args()
    # SIGTERM (a timeout, Ctrl-C from make) unwinds through the finally blocks that stop the
    # worker, the API and the broker this run started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    skip = set(filter(None, args.skip.split(",")))
    work = Path(tempfile.mkdtemp(prefix="scorestream-bench-"))
    port = free_port()
    bootstrap = ensure_broker(work / "kafka", port)
    figures: dict[str, dict[str, Any]] = {}
    results = {
        "name": args.name,
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()},
        "figures": figures,
    }
    RESULTS.mkdir(exist_ok=True)
    stem = RESULTS / f"{time.strftime('%Y-%m-%d')}-{args.name}"

    def save() -> None:  # after every scenario, so a later failure keeps what was measured
        stem.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
        stem.with_suffix(".md").write_text(markdown(results))

    try:
        bench = Bench(args, bootstrap, work, figures, save)
        _worker_scenarios(bench, skip)
        _service_scenarios(bench, skip)
    finally:
        stop_broker(work / "kafka", port)
        # a run leaves gigabytes of broker logs: gone unless asked for (the figures are saved)
        if args.keep:
            print("work directory:", work, flush=True)
        else:
            shutil.rmtree(work, ignore_errors=True)
    table = Table(title=f"scorestream bench: {args.name}")
    table.add_column("figure")
    table.add_column("value", justify="right")
    for name, value in flat(figures):
        table.add_row(name, str(value))
    Console().print(table)
    Console().print(f"written: {stem}.json, {stem}.md")


if __name__ == "__main__":
    main()
