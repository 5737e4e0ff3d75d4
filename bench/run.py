"""``make bench``: run the benchmarks on a local broker, write JSON + Markdown, print the table.

Absolute numbers are reported, never asserted: the machines are shared and noisy. Comparisons
are made in the same run, on the same data.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
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

from bench import probes, scenarios, tables
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


def command_line() -> str:
    """The command that produced this run's figures (how to run it again)."""
    return shlex.join(["python", "-m", "bench.run", *sys.argv[1:]])


def markdown(results: dict[str, Any]) -> str:
    """The run's command, the latency and sustained tables, then every figure."""
    lines = [f"Command: `{results.get('command', '')}` ({results.get('date', '')})", ""]
    lines += tables.latency(results["figures"]) + tables.sustained(results["figures"])
    lines += tables.throughput(results["figures"])
    lines += ["| figure | value |", "| --- | --- |"]
    lines += [f"| {name} | {value} |" for name, value in flat(results["figures"]) if not name.endswith(".command")]
    return "\n".join(lines) + "\n"


@dataclass
class Bench:
    """One run: its arguments, the broker, the work directory, the figures so far and how to save them."""

    args: argparse.Namespace
    bootstrap: str
    work: Path
    figures: dict[str, dict[str, Any]]
    save: Callable[[], None]

    @property
    def spine(self) -> Path:
        """The spine model's file (written once into the work directory)."""
        path = self.work / "spine-model.yaml"
        return path if path.exists() else scenarios.spine_model(self.work)


SCENARIOS = (
    "pure,groups_interests,throughput,clv,timers,big,peers,latency,sustained,service,service_sustained,"
    "api,api_middleware,telemetry,privacy_gate,collector,recovery,webhooks,sink,analytics,replay,privacy,"
    "privacy_archive,console"
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--name", default="spine")
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--contacts", type=int, default=20_000)
    parser.add_argument("--big-events", type=int, default=1_000_000, help="events of the large throughput run")
    parser.add_argument("--big-contacts", type=int, default=100_000, help="contacts of the large throughput run")
    parser.add_argument(
        "--prefill-events",
        default=None,
        help="comma-separated sizes of the prefilled topics the throughput and peers scenarios run on "
        "(default: --events,--big-events; `big` in --skip keeps only the first)",
    )
    parser.add_argument("--recovery-contacts", type=int, default=1_000_000, help="contacts held for recovery/memory")
    parser.add_argument("--rates", default="500,1000,2000,5000,10000", help="comma-separated latency rates (events/s)")
    parser.add_argument("--models", default="full,spine", help="models of the latency and sustained scenarios")
    parser.add_argument("--probes", type=int, default=3000, help="latency probes per rate and model")
    parser.add_argument("--probe-rate", type=float, default=50.0, help="probes published per second")
    parser.add_argument("--anonymous-share", type=float, default=1 / 3, help="share of anonymous probes")
    parser.add_argument("--poll-ms", type=float, default=5.0, help="shortest time between API polls")
    parser.add_argument("--warmup-s", type=float, default=5.0, help="load before the first probe")
    parser.add_argument(
        "--load-processes", type=int, default=1, help="load generator processes sharing the background rate"
    )
    parser.add_argument("--drain-s", type=float, default=30.0, help="wait after the last probe before it is lost")
    parser.add_argument(
        "--sustain-rates",
        default="1000,2000,3000,5000,7500,10000",
        help="rates tried in increasing order for the sustained maximum (stops at the first that fails)",
    )
    parser.add_argument("--sustain-seconds", type=float, default=120.0, help="seconds held at each sustained rate")
    parser.add_argument("--sustain-probe-rate", type=float, default=20.0, help="probes a second while sustaining")
    parser.add_argument("--service-rates", default=None, help="rates of the whole-service scenario (default: --rates)")
    parser.add_argument(
        "--service-sustain-rates",
        default=None,
        help="rates of the whole service's sustained maximum (default: --sustain-rates)",
    )
    parser.add_argument(
        "--middleware-seconds", type=float, default=15.0, help="wrk seconds per round of api_middleware"
    )
    parser.add_argument(
        "--middleware-rounds", type=int, default=3, help="alternating rounds (on, off) of api_middleware"
    )
    parser.add_argument(
        "--middleware-parts", action="store_true", help="api_middleware: also rate limits, metrics, access log alone"
    )
    parser.add_argument("--privacy-events", type=int, default=200_000, help="privacy: archived synthetic events")
    parser.add_argument("--privacy-contacts", type=int, default=50_000, help="privacy: contacts of those events")
    parser.add_argument(
        "--privacy-people", type=int, default=25_000, help="privacy: known people with a history (>= 20,003)"
    )
    parser.add_argument("--privacy-backlog", type=int, default=50_000, help="privacy: backlog of the throughput runs")
    parser.add_argument("--skip", default="", help=f"comma-separated scenarios to skip: {SCENARIOS}")
    parser.add_argument("--only", default="", help="comma-separated scenarios to run (the others are skipped)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (broker logs, worker data)")
    return parser


def _rates(text: str) -> list[float]:
    return [float(r) for r in text.split(",") if r]


def _models(b: Bench) -> list[tuple[str, Path | None]]:
    """(figure suffix, model file) of each model asked: the full model keeps the plain names."""
    chosen = set(b.args.models.split(","))
    return [
        (suffix, path)
        for name, suffix, path in (("full", "", None), ("spine", "_spine_model", b.spine))
        if name in chosen
    ]


def _plan(b: Bench, rate: float = 0.0, sustained: bool = False) -> probes.Plan:
    a = b.args
    if sustained:
        rate_per_s = a.sustain_probe_rate
        count = max(1, round(a.sustain_seconds * rate_per_s))
    else:
        rate_per_s, count = a.probe_rate, a.probes
    return probes.Plan(
        rate=rate,
        probes=count,
        probe_rate=rate_per_s,
        anonymous_share=a.anonymous_share,
        warmup_s=a.warmup_s,
        drain_s=a.drain_s,
        poll_ms=a.poll_ms,
        load_processes=a.load_processes,
    )


def _worker_scenarios(b: Bench, skip: set[str]) -> None:
    """The worker's scenarios: the fold, throughput, CLV, timers, the peers, latency, sustained rate."""
    if "pure" not in skip:
        b.figures["pure_python_fold"] = scenarios.pure_fold(b.args.events, b.args.contacts)
        b.save()
    if "groups_interests" not in skip:  # the full model with and without score groups and interests
        from bench.groups_interests import measure as groups_interests

        b.figures["groups_interests"] = groups_interests(b.args.events, b.args.contacts)
        b.save()
    for size in _sizes(b, skip):
        if "throughput" not in skip:
            _throughput(b, size)
        if "peers" not in skip:
            _peers(b, size)
    if "clv" not in skip:
        b.figures["clv_fit_cdnow"] = scenarios.clv_fit_cdnow()
        b.save()
    if "timers" not in skip:
        b.figures["timer_lateness"] = scenarios.timer_lateness(b.bootstrap, b.work)
        b.save()
    if "latency" not in skip:
        for rate in _rates(b.args.rates):
            for suffix, model in _models(b):
                b.figures[f"latency_{int(rate)}{suffix}"] = scenarios.publish_to_api_latency(
                    b.bootstrap, b.work, _plan(b, rate), model=model
                )
                b.save()
    if "sustained" not in skip:
        for suffix, model in _models(b):

            def at(plan: probes.Plan, model: Path | None = model) -> dict[str, Any]:
                return scenarios.publish_to_api_latency(b.bootstrap, b.work / "sustain", plan, model=model)

            b.figures[f"sustained{suffix}"] = scenarios.max_sustained_rate(
                _rates(b.args.sustain_rates), _plan(b, sustained=True), at
            )
            b.save()


def _sizes(b: Bench, skip: set[str]) -> list[int]:
    """The prefilled topics' sizes (events) of the throughput and peers scenarios."""
    text = b.args.prefill_events or f"{b.args.events},{b.args.big_events}"
    sizes = [int(n) for n in text.split(",") if n]
    return sizes[:1] if "big" in skip else sizes


def _size_suffix(b: Bench, size: int) -> str:
    """Figures of the first size keep the plain names (``throughput_spine``); others end in ``_<k>k``."""
    first = int((b.args.prefill_events or str(b.args.events)).split(",")[0])
    return "" if size == first else f"_{size // 1000}k"


def _contacts(b: Bench, size: int) -> int:
    events: int = b.args.events
    return int(b.args.contacts if size <= events else b.args.big_contacts)


def _peers(b: Bench, size: int) -> None:
    """The machine's limit and the peers on the same events; our throughput over theirs."""
    suffix = _size_suffix(b, size)
    peers = scenarios.limits_and_peers(b.bootstrap, b.work, size, _contacts(b, size))
    b.figures.update({f"{name}{suffix}": figures for name, figures in peers.items()})
    # the peers run the spine's engagement job; the full model is set beside them too
    # (issue 4: the full model keeps the speed issue's throughput against the peers)
    ratios = _peer_ratios(b.figures, suffix)
    if ratios:
        b.figures[f"ratios{suffix}"] = ratios
    b.save()


def _throughput(b: Bench, size: int) -> None:
    """The worker's throughput on ``size`` prefilled events: spine and full model, shuffled (and,
    for the first size, in event-time order)."""
    suffix = _size_suffix(b, size)
    contacts = _contacts(b, size)
    # the same events under the spine's engagement-only model and under the full model
    b.figures[f"throughput_spine{suffix}"] = scenarios.worker_throughput(
        b.bootstrap, b.work, size, contacts, model=b.spine, label="-spine"
    )
    b.save()
    b.figures[f"throughput_full_model{suffix}"] = scenarios.worker_throughput(
        b.bootstrap, b.work, size, contacts, label="-full"
    )
    _vs_spine(b.figures, f"throughput_spine{suffix}", f"throughput_full_model{suffix}")
    b.save()
    if suffix:
        return
    # the same events in event-time order (live traffic, a time-ordered backfill)
    for name, path in (("spine", b.spine), ("full_model", None)):
        b.figures[f"throughput_{name}_in_time_order"] = scenarios.worker_throughput(
            b.bootstrap, b.work, size, contacts, model=path, label=f"-{name}-ordered", ordered=True
        )
        b.save()
    _vs_spine(b.figures, "throughput_spine_in_time_order", "throughput_full_model_in_time_order")
    b.save()


def _vs_spine(figures: dict[str, dict[str, Any]], spine: str, full: str) -> None:
    spine_rate = figures[spine]["events_per_s_after_startup"]
    full_rate = figures[full]["events_per_s_after_startup"]
    if spine_rate and full_rate:
        figures[full]["vs_spine_model"] = round(full_rate / spine_rate, 2)


def _peer_ratios(figures: dict[str, dict[str, Any]], suffix: str = "") -> dict[str, float]:
    """Our throughput (spine and full model) over each peer's, on the same size."""
    ratios: dict[str, float] = {}
    for label, run in (("scorestream", "throughput_spine"), ("full_model", "throughput_full_model")):
        ours = figures.get(f"{run}{suffix}", {}).get("events_per_s_after_startup")
        if ours:
            ratios.update(
                {
                    f"{label}_vs_{name}": round(ours / rate, 2)
                    for name in ("hand_rolled_durable", "stock_faust_table_per_event", "quix_streams_peer")
                    if (rate := figures.get(f"{name}{suffix}", {}).get("events_per_s"))
                }
            )
    return ratios


def _whole_service(b: Bench, skip: set[str]) -> None:
    """Everything ``make run`` starts, under live load: latency at each rate, the sustained maximum."""
    from bench.service_load import service_latency

    if "service" not in skip:
        for rate in _rates(b.args.service_rates or b.args.rates):
            b.figures[f"service_{int(rate)}"] = service_latency(b.bootstrap, b.work, _plan(b, rate))
            b.save()
    if "service_sustained" not in skip:

        def at(plan: probes.Plan) -> dict[str, Any]:
            return service_latency(b.bootstrap, b.work / "service-sustain", plan)

        rates = _rates(b.args.service_sustain_rates or b.args.sustain_rates)
        b.figures["service_sustained"] = scenarios.max_sustained_rate(rates, _plan(b, sustained=True), at)
        b.save()


def _service_scenarios(b: Bench, skip: set[str]) -> None:
    """The other processes' scenarios: API, collector, recovery, webhooks, sink, analytics, replay."""
    if "api" not in skip:
        from bench.api_load import api_lookups

        b.figures["api"] = api_lookups(b.bootstrap, b.work)
        b.save()
    if "api_middleware" not in skip:
        from bench.api_middleware import api_middleware

        b.figures["api_middleware"] = api_middleware(
            b.bootstrap,
            b.work,
            b.args.contacts,
            b.args.middleware_seconds,
            rounds=b.args.middleware_rounds,
            parts=b.args.middleware_parts,
        )
        b.save()
    if "telemetry" not in skip:
        from bench.telemetry_cost import measure

        b.figures["telemetry"] = measure()
        b.save()
    if "privacy_gate" not in skip:
        from bench.privacy_gate import measure as gate_cost

        b.figures["privacy_gate"] = gate_cost()
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
    if "privacy" not in skip:
        from bench.privacy import privacy_figures

        a = b.args
        b.figures["privacy"] = privacy_figures(
            b.bootstrap, b.work, a.privacy_events, a.privacy_contacts, a.privacy_people, a.privacy_backlog
        )
        b.save()
    if "privacy_archive" not in skip:
        from bench.privacy_archive import measure as archive_erasure

        b.figures["privacy_archive"] = archive_erasure()
        b.save()
    if "console" not in skip:
        from bench.console import measure as console_figures

        b.figures["console"] = console_figures()
        b.save()


def _skipped(args: argparse.Namespace) -> set[str]:
    every = set(SCENARIOS.split(","))
    skip = set(filter(None, args.skip.split(",")))
    only = set(filter(None, args.only.split(",")))
    unknown = (skip | only) - every
    if unknown:
        raise SystemExit(f"unknown scenarios {sorted(unknown)}; they are: {SCENARIOS}")
    if only:
        skip |= every - only - ({"big"} if "throughput" in only or "peers" in only else set())
    return skip


def main() -> None:
    args = _parser().parse_args()
    # SIGTERM (a timeout, Ctrl-C from make) unwinds through the finally blocks that stop the
    # worker, the API and the broker this run started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    skip = _skipped(args)
    work = Path(tempfile.mkdtemp(prefix="scorestream-bench-"))
    port = free_port()
    bootstrap = ensure_broker(work / "kafka", port)
    figures: dict[str, dict[str, Any]] = {}
    results = {
        "name": args.name,
        "command": command_line(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()},
        "figures": figures,
    }
    RESULTS.mkdir(exist_ok=True)
    stem = RESULTS / f"{time.strftime('%Y-%m-%d')}-{args.name}"

    def save() -> None:  # after every scenario, so a later failure keeps what was measured
        for section in figures.values():  # each figure carries the command that produced it
            section.setdefault("command", results["command"])
        stem.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
        stem.with_suffix(".md").write_text(markdown(results))

    try:
        bench = Bench(args, bootstrap, work, figures, save)
        _worker_scenarios(bench, skip)
        _whole_service(bench, skip)
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
        if not name.endswith(".command"):
            table.add_row(name, str(value))
    Console().print(table)
    Console().print(f"written: {stem}.json, {stem}.md")


if __name__ == "__main__":
    main()
