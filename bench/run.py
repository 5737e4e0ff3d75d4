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


def main() -> None:
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
    args = parser.parse_args()
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
        if "pure" not in skip:
            figures["pure_python_fold"] = scenarios.pure_fold(args.events, args.contacts)
            save()
        if "throughput" not in skip:
            # the same events under the spine's engagement-only model and under the full model
            spine = scenarios.spine_model(work)
            figures["throughput_spine"] = scenarios.worker_throughput(
                bootstrap, work, args.events, args.contacts, model=spine, label="-spine"
            )
            save()
            figures["throughput_full_model"] = scenarios.worker_throughput(
                bootstrap, work, args.events, args.contacts, label="-full"
            )
            spine_rate = figures["throughput_spine"]["events_per_s_after_startup"]
            full_rate = figures["throughput_full_model"]["events_per_s_after_startup"]
            if spine_rate and full_rate:
                figures["throughput_full_model"]["vs_spine_model"] = round(full_rate / spine_rate, 2)
            save()
            # the same events in event-time order (live traffic, a time-ordered backfill)
            for name, path in (("spine", spine), ("full_model", None)):
                figures[f"throughput_{name}_in_time_order"] = scenarios.worker_throughput(
                    bootstrap, work, args.events, args.contacts, model=path, label=f"-{name}-ordered", ordered=True
                )
                save()
            spine_rate = figures["throughput_spine_in_time_order"]["events_per_s_after_startup"]
            full_rate = figures["throughput_full_model_in_time_order"]["events_per_s_after_startup"]
            if spine_rate and full_rate:
                figures["throughput_full_model_in_time_order"]["vs_spine_model"] = round(full_rate / spine_rate, 2)
            save()
        if "clv" not in skip:
            figures["clv_fit_cdnow"] = scenarios.clv_fit_cdnow()
            save()
        if "timers" not in skip:
            figures["timer_lateness"] = scenarios.timer_lateness(bootstrap, work)
            save()
        if "peers" not in skip:
            figures.update(scenarios.limits_and_peers(bootstrap, work, args.events, args.contacts))
            # the peers run the spine's engagement job; the full model is set beside them too
            # (issue 4: the full model keeps the speed issue's throughput against the peers)
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
            if ratios:
                figures["ratios"] = ratios
            save()
        if "big" not in skip:
            figures["throughput_large"] = scenarios.worker_throughput(
                bootstrap, work, args.big_events, args.big_contacts
            )
            save()
        if "latency" not in skip:
            for rate in (float(r) for r in args.rates.split(",")):
                figures[f"latency_{int(rate)}"] = scenarios.publish_to_api_latency(bootstrap, work, rate)
                save()
                figures[f"latency_{int(rate)}_spine_model"] = scenarios.publish_to_api_latency(
                    bootstrap, work, rate, model=scenarios.spine_model(work)
                )
                save()
        if "sustained" not in skip:
            rates = [float(r) for r in args.sustain_rates.split(",")]
            figures["sustained"] = scenarios.max_sustained_rate(bootstrap, work, rates)
            save()
        if "api" not in skip:
            from bench.api_load import api_lookups

            figures["api"] = api_lookups(bootstrap, work)
            save()
        if "collector" not in skip:
            from bench.collector import collector_load

            figures["collector"] = collector_load(bootstrap, work)
            save()
        if "recovery" not in skip:
            figures["recovery"] = scenarios.recovery_and_memory(bootstrap, work, args.recovery_contacts)
            save()
        if "webhooks" not in skip:
            from bench.webhooks import webhook_dispatch

            figures["webhooks"] = webhook_dispatch(bootstrap, work)
            save()
        if "sink" not in skip:
            from bench.sink import sink_throughput

            figures["sink"] = sink_throughput(bootstrap, work, args.events, args.contacts)
            save()
        if "analytics" not in skip:
            from bench.analytics import analytics_figures

            figures["analytics"] = analytics_figures(bootstrap, work)
            save()
        if "replay" not in skip:
            from bench.replay import replay_throughput

            figures["replay"] = replay_throughput(
                bootstrap, work, args.events, args.contacts, live=figures.get("throughput_full_model")
            )
            save()
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
