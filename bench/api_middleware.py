"""What the API's per-request work costs the hot route: ``GET /v1/contacts/{id}`` with rate limits,
metrics and the access log on, against all three off, in one run.

One deployment (worker + API subprocesses) is filled with generated traffic; then the API is started
again and again on the same data, alternating the two configurations (``on`` first), and each
time, once every id resolves, ``wrk`` drives single-contact lookups (``bench/wrk/contacts.lua``,
ids drawn uniformly) for ``duration_s`` after a one-second warm-up:

* ``on``: ``SCORESTREAM_RATE_LIMIT_READ`` at a limit the run never reaches (every request is
  counted against the key's window, none refused), ``SCORESTREAM_METRICS_ENABLED=true`` (the
  latency histogram observed per request), ``SCORESTREAM_ACCESS_LOG=true`` with JSON log lines
  (``SCORESTREAM_LOG_FORMAT=json``, ``SCORESTREAM_LOG_LEVEL=INFO``: one line per request, written to
  the API's log file);
* ``off``: ``SCORESTREAM_RATE_LIMIT_READ=0``, ``SCORESTREAM_METRICS_ENABLED=false``,
  ``SCORESTREAM_ACCESS_LOG=false`` (same log format and level).

Both keep the request id (``X-Request-ID`` on every answer: it is not optional) and both take the
direct path (no Starlette middleware). Each configuration's figures are the median of its rounds;
``on_vs_off_*`` are the ratios. With ``parts`` (``bench.run --middleware-parts``), each of the three
is also measured alone, the others off (``rate_limit_only_*``, ``metrics_only_*``,
``access_log_only_*``): which one costs what. Read them as ``bench.api_load``'s (closed-loop ``wrk`` on the same
machine). Alternating rounds spread a loaded machine's drift over both configurations; on a
shared machine the spread between rounds of one configuration says how far to trust the ratio.

``python -m bench.api_middleware`` runs a short version on a broker of its own;
``python -m bench.run --only api_middleware`` writes JSON + Markdown with the other benches.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path
from typing import Any

from bench.api_load import ensure_wrk, fill, run_wrk, wait_resolvable
from bench.harness import process_usage, standalone
from tests.e2e.service import Service

NEVER_REACHED = "1000000/second"  # a read limit that is checked on every request and never refuses one
COMMON = {"SCORESTREAM_LOG_FORMAT": "json", "SCORESTREAM_LOG_LEVEL": "INFO"}
CONFIGURATIONS: dict[str, dict[str, str]] = {
    "on": {
        **COMMON,
        "SCORESTREAM_RATE_LIMIT_READ": NEVER_REACHED,
        "SCORESTREAM_METRICS_ENABLED": "true",
        "SCORESTREAM_ACCESS_LOG": "true",
    },
    "off": {
        **COMMON,
        "SCORESTREAM_RATE_LIMIT_READ": "0",
        "SCORESTREAM_METRICS_ENABLED": "false",
        "SCORESTREAM_ACCESS_LOG": "false",
    },
}
# with ``parts``: each of the three alone (the others off), to say which one costs what
PARTS: dict[str, dict[str, str]] = {
    "rate_limit_only": {**CONFIGURATIONS["off"], "SCORESTREAM_RATE_LIMIT_READ": NEVER_REACHED},
    "metrics_only": {**CONFIGURATIONS["off"], "SCORESTREAM_METRICS_ENABLED": "true"},
    "access_log_only": {**CONFIGURATIONS["off"], "SCORESTREAM_ACCESS_LOG": "true"},
}


def _round(
    svc: Service, wrk: str, ids: list[str], ids_file: Path, connections: int, duration_s: float
) -> dict[str, Any]:
    """One API start with ``svc.extra_env`` as it is: wait until every id resolves, warm up, measure."""
    svc.start_api()
    try:
        svc.wait_ready()
        wait_resolvable(svc, ids, timeout_s=120)
        assert svc.api is not None
        run_wrk(wrk, svc.url, "single", ids_file, connections, 1)  # warm-up, not reported
        before = process_usage(svc.api.pid)
        single = run_wrk(wrk, svc.url, "single", ids_file, connections, duration_s)
        after = process_usage(svc.api.pid)
    finally:
        assert svc.api is not None
        svc.api.terminate()
        svc.api.wait(timeout=30)
    single.check("GET /v1/contacts/{id}")
    cpu_s = after.cpu_s - before.cpu_s
    return {
        "lookups_per_s": round(single.per_s),
        "p50_ms": single.p50_ms,
        "p99_ms": single.p99_ms,
        "p999_ms": single.p999_ms,
        "requests": single.requests,
        "errors": single.errors,
        "api_cpu_us_per_lookup": round(cpu_s / max(1, single.requests) * 1e6, 1),
        "api_cpu_utilisation": round(cpu_s / single.duration_s, 2),
    }


def _median(rounds: list[dict[str, Any]], key: str) -> float:
    return round(float(statistics.median(r[key] for r in rounds)), 2)


def api_middleware(
    bootstrap: str,
    work: Path,
    contacts: int = 20_000,
    duration_s: float = 15,
    connections: int = 32,
    rounds: int = 3,
    parts: bool = False,
) -> dict[str, Any]:
    """Single-contact lookups/s and latency percentiles with rate limits, metrics and the access log
    on and off: ``rounds`` alternating API starts of each on one prefilled deployment (see the
    module's doc); ``parts``: each of the three alone too (``<part>_only_*``)."""
    configurations = {**CONFIGURATIONS, **(PARTS if parts else {})}
    wrk = ensure_wrk()
    events = 5 * contacts
    svc = Service(bootstrap=bootstrap, data_dir=work / "api-middleware", extra_env=dict(CONFIGURATIONS["off"]))
    svc.start()
    try:
        assert svc.api is not None and svc.worker is not None
        ids, ids_file, _, _ = fill(svc, contacts, events)  # bench.api_load's deployment and ids
        svc.api.terminate()  # the first API only waited for the data: each round starts its own
        svc.api.wait(timeout=30)
        measured: dict[str, list[dict[str, Any]]] = {name: [] for name in configurations}
        for _ in range(rounds):
            for name, env in configurations.items():
                svc.extra_env = dict(env)
                measured[name].append(_round(svc, wrk, ids, ids_file, connections, duration_s))
    finally:
        svc.stop()
    figures: dict[str, Any] = {
        "contacts": len(ids),
        "events": events,
        "connections": connections,
        "duration_s": duration_s,
        "rounds": rounds,
        "on_settings": ", ".join(f"{k}={v}" for k, v in CONFIGURATIONS["on"].items()),
        "off_settings": ", ".join(f"{k}={v}" for k, v in CONFIGURATIONS["off"].items()),
    }
    for name, runs in measured.items():
        for key in ("lookups_per_s", "p50_ms", "p99_ms", "p999_ms", "api_cpu_us_per_lookup"):
            figures[f"{name}_{key}"] = _median(runs, key)
        figures[f"{name}_lookups_per_s_rounds"] = [r["lookups_per_s"] for r in runs]
        figures[f"{name}_p99_ms_rounds"] = [r["p99_ms"] for r in runs]
    for name in configurations:
        if name == "off":
            continue
        for key in ("lookups_per_s", "p99_ms", "api_cpu_us_per_lookup"):
            off = figures[f"off_{key}"]
            figures[f"{name}_vs_off_{key}"] = round(figures[f"{name}_{key}"] / off, 3) if off else None
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--contacts", type=int, default=2_000)
    parser.add_argument("--duration", type=float, default=3)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--parts", action="store_true", help="also each of the three alone")
    args = parser.parse_args()
    standalone(
        "api-middleware",
        lambda bootstrap, work: api_middleware(
            bootstrap, work, args.contacts, args.duration, args.connections, args.rounds, args.parts
        ),
    )


if __name__ == "__main__":
    main()
