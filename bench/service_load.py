"""The whole service under live load: everything ``make run`` starts, probed on a fixed schedule.

``scorestream run`` (what ``make run`` runs) is started on the bench's broker with an app id,
topics and data directory of its own: one worker per core (at most the partitions), the API with
the embedded chDB analytics sink, and the webhook dispatcher, with their default settings (no
test overrides of the commit interval or the session timeout). Steady Zipf traffic and
open-loop probes (a third anonymous by default) measure publish -> visible in the API as
:mod:`bench.probes` describes; the highest sustained rate uses the same probes.

``python -m bench.service_load --rates 1000 --probes 1500`` runs it on a broker of its own.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx

from bench import probes
from bench.harness import process_usage
from bench.scenarios import _forget
from tests.e2e.service import API_KEY, REPO, WRITE_KEY, free_port, isolated_env


@dataclass
class WholeService:
    """One ``scorestream run`` on a shared broker: its process, environment and API address."""

    bootstrap: str
    data_dir: Path
    model: Path | None = None
    suffix: str = ""
    api_port: int = 0
    proc: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        self.suffix = self.suffix or uuid.uuid4().hex[:8]
        self.api_port = self.api_port or free_port()

    @property
    def env(self) -> dict[str, str]:
        env = isolated_env(self.bootstrap, f"ss-{self.suffix}", self.suffix, 4, self.data_dir)
        env.update(
            {
                "SCORESTREAM_API_KEYS": API_KEY,
                "SCORESTREAM_WRITE_KEYS": f"{WRITE_KEY}:*",
                "SCORESTREAM_API_PORT": str(self.api_port),
                "SCORESTREAM_LOG_LEVEL": "WARNING",
            }
        )
        if self.model is not None:
            env["SCORESTREAM_MODEL"] = str(self.model)
        return env

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def start(self, timeout_s: float = 240) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = (self.data_dir / "run.log").open("ab")
        # its own process group: the run supervises its children, and a stop reaches them all
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "deploy.cli", "run"],
            env=self.env,
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"scorestream run exited with {self.proc.returncode}: {self.logs()}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"scorestream run not ready in {timeout_s} s: {self.logs()}")

    def logs(self) -> str:
        path = self.data_dir / "run.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def children(self) -> list[int]:
        """The processes ``scorestream run`` started (workers, API, dispatcher)."""
        if self.proc is None:
            return []
        path = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        return [int(pid) for pid in path.read_text().split()] if path.exists() else []

    def stop(self) -> None:
        """SIGTERM to ``scorestream run``: it stops what it started and waits for them."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=30)


@contextmanager
def whole_service(bootstrap: str, data_dir: Path, model: Path | None = None) -> Iterator[WholeService]:
    svc = WholeService(bootstrap=bootstrap, data_dir=data_dir, model=model)
    svc.start()
    try:
        yield svc
    finally:
        svc.stop()


def service_latency(bootstrap: str, work: Path, plan: probes.Plan, model: Path | None = None) -> dict[str, Any]:
    """Publish -> visible in the API of the whole service at ``plan.rate``, on a fresh deployment;
    with the CPU seconds each of its processes used during the run."""
    label = f"svc-{int(plan.rate)}{'-' + model.stem if model else ''}-{uuid.uuid4().hex[:6]}"
    with whole_service(bootstrap, work / label, model) as svc:
        pids = svc.children()
        before = {pid: _cpu(pid) for pid in pids}
        started = time.perf_counter()
        figures = probes.measure(probes.target_of(svc.env, svc.url), plan)
        wall = time.perf_counter() - started
        after = {pid: _cpu(pid) for pid in pids}
    _forget(bootstrap, svc.suffix)
    figures["service_processes"] = len(pids)
    figures["service_cpu_cores"] = round(sum(after[p] - before[p] for p in pids) / wall, 2) if wall > 0 else None
    return figures


def _cpu(pid: int) -> float:
    try:
        return process_usage(pid).cpu_s
    except (FileNotFoundError, ProcessLookupError):
        return 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", default="1000", help="comma-separated rates (events/s)")
    parser.add_argument("--probes", type=int, default=1500)
    parser.add_argument("--probe-rate", type=float, default=50.0)
    parser.add_argument("--anonymous-share", type=float, default=1 / 3)
    args = parser.parse_args()
    from bench.harness import standalone

    plan = probes.Plan(rate=0, probes=args.probes, probe_rate=args.probe_rate, anonymous_share=args.anonymous_share)

    command = " ".join(["python -m bench.service_load", *sys.argv[1:]])

    def run(bootstrap: str, work: Path) -> dict[str, Any]:
        return {
            f"service_{int(r)}": {**service_latency(bootstrap, work, replace(plan, rate=float(r))), "command": command}
            for r in args.rates.split(",")
        }

    standalone("service", run)


if __name__ == "__main__":
    main()
