"""The HTTP API under load: single-contact lookups and batchGet, measured with ``wrk``.

A real deployment (worker + API subprocesses) is filled with generated traffic; once the worker
has committed everything and the API resolves every id the traffic created, ``wrk`` drives
``GET /v1/contacts/{id}`` and then ``POST /v1/contacts:batchGet`` (100 ids a request), ids drawn
uniformly from all known contacts (``bench/wrk/contacts.lua``).

Read the figures with these in mind:

* ``wrk`` is closed-loop: ``connections`` requests are always in flight, so at saturation the
  latency percentiles include queueing in the API (mean latency ~ connections / throughput).
* ``wrk`` runs on the same machine with ``WRK_THREADS`` threads and competes with the API (one
  Python process, so at most one core) for the CPUs; ``wrk_cpu_utilisation`` says how much it took.
* Any error (non-2xx status, socket error, timeout) is counted; above ``MAX_ERROR_RATIO`` the
  run is invalid and raises instead of reporting numbers.

``python -m bench.api_load`` runs a short version on a broker of its own.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.harness import prefill, process_usage, standalone, wait_drained
from deploy.traffic import Traffic
from tests.e2e.service import API_KEY, Service

SCRIPT = Path(__file__).parent / "wrk" / "contacts.lua"
WRK_THREADS = 2
API_PROCESSES = 1  # the figures are per API process (``scorestream api`` runs one; scale with more)
BATCH_SIZE = 100
MAX_ERROR_RATIO = 0.001
SEED = 11
_SAFE_ID = re.compile(r"^[A-Za-z0-9._@:-]+$")  # ids go into URLs and JSON unescaped by the Lua script


def ensure_wrk() -> str:
    """Path of ``wrk``; installs the Debian package when missing and running as root."""
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=False, env=env, capture_output=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=False, env=env, capture_output=True)
        found = shutil.which("wrk")
        if found:
            return found
    raise RuntimeError("wrk is not installed and could not be installed: run `make bench-tools` (apt-get install wrk)")


@dataclass(frozen=True)
class WrkResult:
    """One ``wrk`` run, from the ``WRK_RESULT`` line of ``contacts.lua``'s ``done()``."""

    threads: int
    duration_s: float
    requests: int
    status_errors: int
    socket_errors: int  # connect + read + write + timeout
    mean_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float
    cpu_s: float  # CPU wrk itself used (user + system)

    @property
    def errors(self) -> int:
        return self.status_errors + self.socket_errors

    @property
    def per_s(self) -> float:
        return self.requests / self.duration_s

    def check(self, what: str) -> None:
        """Raise if the run is not a measurement of successful responses."""
        if self.requests == 0 or self.errors > MAX_ERROR_RATIO * self.requests:
            raise RuntimeError(
                f"{what}: {self.errors} errors in {self.requests} requests "
                f"({self.status_errors} non-2xx, {self.socket_errors} socket errors/timeouts); benchmark invalid"
            )


def parse_wrk(stdout: str, cpu_s: float) -> WrkResult:
    line = next((ln for ln in stdout.splitlines() if ln.startswith("WRK_RESULT ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no WRK_RESULT line:\n{stdout[-2000:]}")
    r: dict[str, float] = json.loads(line.removeprefix("WRK_RESULT "))

    def ms(key: str) -> float:
        return round(r[key] / 1000, 2)

    return WrkResult(
        threads=int(r["threads"]),
        duration_s=r["duration_us"] / 1e6,
        requests=int(r["requests"]),
        status_errors=int(r["status"]),
        socket_errors=int(r["connect"] + r["read"] + r["write"] + r["timeout"]),
        mean_ms=ms("mean_us"),
        p50_ms=ms("p50_us"),
        p90_ms=ms("p90_us"),
        p99_ms=ms("p99_us"),
        p999_ms=ms("p999_us"),
        max_ms=ms("max_us"),
        cpu_s=cpu_s,
    )


def wrk_run(
    wrk: str, script: Path, url: str, script_args: list[str], connections: int, duration_s: float, timeout: str = "5s"
) -> WrkResult:
    """One ``wrk`` run of a Lua ``script`` (its arguments after ``--``), with the CPU wrk used."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run(
        [
            wrk,
            f"-t{WRK_THREADS}",
            f"-c{connections}",
            f"-d{max(1, round(duration_s))}s",
            "--timeout",
            timeout,
            "--latency",
            "-s",
            str(script),
            url,
            "--",
            *script_args,
        ],
        capture_output=True,
        text=True,
        timeout=duration_s + 60,
        check=False,
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"wrk exited with {proc.returncode}:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return parse_wrk(proc.stdout, cpu)


def run_wrk(
    wrk: str, url: str, mode: str, ids_file: Path, connections: int, duration_s: float, batch: int = BATCH_SIZE
) -> WrkResult:
    """One ``wrk`` run of ``contacts.lua`` in ``mode`` ("single" or "batch")."""
    return wrk_run(wrk, SCRIPT, url, [mode, str(ids_file), API_KEY, str(batch)], connections, duration_s)


def known_ids(contacts: int, events: int, seed: int) -> list[str]:
    """The id a CRM would look each generated contact up by: the user id once identified, else the
    anonymous id. Replays the generator's choices (same seed) without serialising the messages."""
    traffic = Traffic(contacts, seed=seed)
    touched: set[int] = set()
    for _ in range(events):
        _, c, _ = traffic.message()
        touched.add(c)
    return [traffic.user_id(c) if c in traffic.identified else traffic.anonymous_id(c) for c in sorted(touched)]


def wait_resolvable(svc: Service, ids: list[str], timeout_s: float) -> float:
    """Seconds until ``/readyz`` is 200 and every id resolves (batchGet, 1000 at a time)."""
    started = time.perf_counter()
    missing: list[str] = ids
    last = ""
    with svc.client() as http:
        while time.perf_counter() - started < timeout_s:
            ready = http.get("/readyz")
            if ready.status_code == 200:
                still: list[str] = []
                for i in range(0, len(missing), 1000):
                    r = http.post("/v1/contacts:batchGet", json={"ids": missing[i : i + 1000]})
                    r.raise_for_status()
                    still += r.json()["not_found"]
                missing = still
                single = http.get(f"/v1/contacts/{ids[0]}")
                if not missing and single.status_code == 200:
                    return time.perf_counter() - started
                last = f"{len(missing)} ids not found (e.g. {missing[:3]}), single lookup {single.status_code}"
            else:
                last = f"readyz {ready.status_code}: {ready.text[:300]}"
            time.sleep(0.5)
    raise TimeoutError(f"API did not resolve all {len(ids)} ids in {timeout_s} s: {last}")


def fill(svc: Service, contacts: int, events: int) -> tuple[list[str], Path, float, float]:
    """Fill ``svc`` (started) with ``events`` generated events of ``contacts`` contacts and wait
    until the worker has applied them and the API resolves every id: the ids, a file of them for
    ``wrk``'s script, and the seconds until drained and until visible."""
    topics = {"web": svc.topic("web"), "email": svc.topic("email"), "store": svc.topic("store")}
    asyncio.run(prefill(svc.bootstrap, topics, events, contacts, seed=SEED, now_ms=int(time.time() * 1000)))
    group = f"ss-{svc.suffix}"
    drained_s = wait_drained(svc.bootstrap, group, [*topics.values(), f"{group}.identity", f"{group}.contacts"], 900)
    ids = known_ids(contacts, events, SEED)
    if bad := [i for i in ids if not _SAFE_ID.match(i)]:
        raise ValueError(f"ids the Lua script cannot send unescaped: {bad[:5]}")
    visible_s = wait_resolvable(svc, ids, timeout_s=120)
    ids_file = svc.data_dir / "ids.txt"
    ids_file.write_text("\n".join(ids) + "\n")
    return ids, ids_file, drained_s, visible_s


def api_lookups(
    bootstrap: str, work: Path, contacts: int = 20_000, duration_s: float = 15, connections: int = 32
) -> dict[str, Any]:
    """Single-contact lookups/s and batchGet throughput of one API process, with latency percentiles.

    Fills a fresh deployment with ``5 * contacts`` generated events, waits until everything is
    applied and visible, warms the API up for a second, then runs ``wrk`` (``WRK_THREADS`` threads,
    ``connections`` connections) for ``duration_s`` on each endpoint. ``api_cpu_utilisation`` is the
    API process's CPU seconds over the run's wall time (1.0 = one core busy throughout).
    """
    wrk = ensure_wrk()
    events = 5 * contacts
    svc = Service(bootstrap=bootstrap, data_dir=work / "api-load")
    svc.start()
    try:
        assert svc.api is not None and svc.worker is not None
        ids, ids_file, drained_s, visible_s = fill(svc, contacts, events)

        run_wrk(wrk, svc.url, "single", ids_file, connections, 1)  # warm-up, not reported
        api0, worker0 = process_usage(svc.api.pid), process_usage(svc.worker.pid)
        single = run_wrk(wrk, svc.url, "single", ids_file, connections, duration_s)
        api1, worker1 = process_usage(svc.api.pid), process_usage(svc.worker.pid)
        batch = run_wrk(wrk, svc.url, "batch", ids_file, connections, duration_s)
        api2 = process_usage(svc.api.pid)
    finally:
        svc.stop()
    single.check("GET /v1/contacts/{id}")
    batch.check("POST /v1/contacts:batchGet")
    return {
        "api_processes": API_PROCESSES,
        "contacts": len(ids),
        "events": events,
        "connections": connections,
        "wrk_threads": single.threads,
        "duration_s": round(single.duration_s, 1),
        "seconds_to_visible": round(drained_s + visible_s, 1),
        "single_lookups_per_s": round(single.per_s),
        "single_mean_ms": single.mean_ms,
        "single_p50_ms": single.p50_ms,
        "single_p90_ms": single.p90_ms,
        "single_p99_ms": single.p99_ms,
        "single_p999_ms": single.p999_ms,
        "single_max_ms": single.max_ms,
        "single_requests": single.requests,
        "single_errors": single.errors,
        "batch_size": BATCH_SIZE,
        "batch_requests_per_s": round(batch.per_s),
        "batch_contacts_per_s": round(batch.per_s * BATCH_SIZE),
        "batch_p50_ms": batch.p50_ms,
        "batch_p99_ms": batch.p99_ms,
        "batch_p999_ms": batch.p999_ms,
        "batch_errors": batch.errors,
        # CPU over the single-lookup run (1.0 = one core); the API is one Python process
        "api_cpu_utilisation": round((api1.cpu_s - api0.cpu_s) / single.duration_s, 2),
        "api_cpu_us_per_lookup": round((api1.cpu_s - api0.cpu_s) / max(1, single.requests) * 1e6, 1),
        "api_cpu_utilisation_batch": round((api2.cpu_s - api1.cpu_s) / batch.duration_s, 2),
        "api_peak_rss_mb": round(api2.peak_rss_mb),
        "wrk_cpu_utilisation": round(single.cpu_s / single.duration_s, 2),
        "worker_cpu_utilisation": round((worker1.cpu_s - worker0.cpu_s) / single.duration_s, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--contacts", type=int, default=5_000)
    parser.add_argument("--duration", type=float, default=5)
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args()
    standalone(
        "api-load", lambda bootstrap, work: api_lookups(bootstrap, work, args.contacts, args.duration, args.connections)
    )


if __name__ == "__main__":
    main()
