"""A second worker joins a loaded deployment: seconds until it is ready, then each worker's disk and RSS.

Issue 16, "workers hold only their share". One worker folds ``--contacts`` contacts (two events
each, ``bench.scenarios._known_contacts``) on 4 partitions, once. Then, in alternating rounds for
each checkout given (``name=path``: a git worktree of the commit to measure, e.g. before and after a
change), on the same topics and changelogs: worker 0 starts on an empty disk (timed until it
announces ``ready`` on ``<app>.workers``: a cold start with every partition), then worker 1 on an
empty disk (timed the same way: the join), and once the group has settled the resident memory of
both workers and the size of their table directories are read; both stop. Released partitions are
dropped at once (``SCORESTREAM_RELEASED_KEEP_S=0``; the default keeps them 10 minutes), so the disk
figures are the steady state. The figures are printed as JSON::

    git worktree add --detach /tmp/before <commit>; git worktree add --detach /tmp/after <commit>
    python -m bench.share_join --contacts 200000 --rounds 2 before=/tmp/before after=/tmp/after

``--bootstrap`` and ``--suffix`` (the ``topics`` a run printed) measure again on the same data.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.harness import process_usage, publish, wait_drained
from bench.scenarios import _known_contacts, _wait_status
from tests.e2e.service import Service


def disk_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / (1 << 20) if path.exists() else 0.0


class Deployment:
    """The topics of one :class:`Service`, with workers run from any checkout."""

    def __init__(self, bootstrap: str, data_dir: Path, suffix: str | None = None) -> None:
        self.svc = Service(
            bootstrap=bootstrap,
            data_dir=data_dir,
            extra_env={"SCORESTREAM_RELEASED_KEEP_S": "0", "SCORESTREAM_LOG_LEVEL": "INFO"},
        )
        if suffix:
            self.svc.suffix = suffix
        self.group = f"ss-{self.svc.suffix}"

    def spawn(self, checkout: Path, index: int) -> subprocess.Popen[bytes]:
        env = {
            **self.svc.env,
            "PYTHONPATH": f"{checkout / 'src'}:{checkout}",
            "SCORESTREAM_WORKER_INDEX": str(index),
        }
        log = (self.svc.data_dir / f"{checkout.name}-worker-{index}.log").open("ab")
        return subprocess.Popen(
            [sys.executable, "-m", "deploy.cli", "worker"], env=env, cwd=checkout, stdout=log, stderr=subprocess.STDOUT
        )

    def ready_s(self, proc: subprocess.Popen[bytes], started_ms: int) -> float:
        at_ms = asyncio.run(
            _wait_status(self.svc.bootstrap, f"{self.group}.workers", "ready", started_ms, 1800, proc.pid)
        )
        return (at_ms - started_ms) / 1000

    def stages(self) -> list[str]:
        topics = [self.svc.topic(ch) for ch in ("web", "email", "store")]
        return [*topics, f"{self.group}.identity", f"{self.group}.contacts"]


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def prefill(dep: Deployment, checkout: Path, contacts: int) -> float:
    subprocess.run([sys.executable, "-m", "deploy.cli", "topics"], env=dep.svc.env, cwd=checkout, check=True)
    worker = dep.spawn(checkout, 0)
    try:
        now_ms = int(time.time() * 1000)
        events = ((dep.svc.topic(ch), key, value) for ch, key, value in _known_contacts(contacts, now_ms))
        asyncio.run(publish(dep.svc.bootstrap, events))
        return wait_drained(dep.svc.bootstrap, dep.group, dep.stages(), timeout_s=7200)
    finally:
        stop(worker)


def one_round(dep: Deployment, checkout: Path, settle_s: float) -> dict[str, Any]:
    shutil.rmtree(dep.svc.data_dir / "worker", ignore_errors=True)
    started_ms = int(time.time() * 1000)
    first = dep.spawn(checkout, 0)
    second = None
    try:
        cold_s = dep.ready_s(first, started_ms)
        alone = {
            "rss_mb": round(process_usage(first.pid).rss_mb),
            "disk_mb": round(disk_mb(dep.svc.data_dir / "worker" / "0")),
        }
        started_ms = int(time.time() * 1000)
        second = dep.spawn(checkout, 1)
        join_s = dep.ready_s(second, started_ms)
        time.sleep(settle_s)  # worker 0's own recovery after the rebalance, and the drop of what it gave up
        wait_drained(dep.svc.bootstrap, dep.group, dep.stages(), timeout_s=600)
        both = {
            str(i): {
                "rss_mb": round(process_usage(proc.pid).rss_mb),
                "disk_mb": round(disk_mb(dep.svc.data_dir / "worker" / str(i))),
            }
            for i, proc in ((0, first), (1, second))
        }
    finally:
        for proc in (second, first):
            if proc is not None:
                stop(proc)
    return {
        "first_worker_cold_ready_s": round(cold_s, 2),
        "one_worker": alone,
        "second_worker_ready_s": round(join_s, 2),
        "two_workers": both,
    }


def run(
    bootstrap: str,
    work: Path,
    contacts: int,
    checkouts: dict[str, Path],
    rounds: int,
    settle_s: float,
    suffix: str | None = None,
) -> dict[str, Any]:
    """``suffix``: the topics of an earlier run on the same broker (no prefill)."""
    dep = Deployment(bootstrap, work / f"share-{contacts}", suffix)
    dep.svc.data_dir.mkdir(parents=True, exist_ok=True)
    applied_s = None if suffix else prefill(dep, next(iter(checkouts.values())), contacts)
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in checkouts}
    for _ in range(rounds):
        for name, checkout in checkouts.items():
            results[name].append(one_round(dep, checkout, settle_s))
    medians = {
        name: {
            key: statistics.median(r[key] for r in runs)
            for key in ("first_worker_cold_ready_s", "second_worker_ready_s")
        }
        for name, runs in results.items()
    }
    applied = None if applied_s is None else round(applied_s, 1)
    return {
        "contacts": contacts,
        "topics": dep.svc.suffix,
        "seconds_to_applied": applied,
        "rounds": results,
        "medians": medians,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkouts", nargs="+", help="name=path of a checkout to run the workers from")
    parser.add_argument("--contacts", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--bootstrap", help="a running broker (default: a fresh one of its own)")
    parser.add_argument("--settle-s", type=float, default=15.0)
    parser.add_argument("--suffix", help="reuse the topics of an earlier run (printed as 'topics') on --bootstrap")
    args = parser.parse_args()
    checkouts = {name: Path(path).resolve() for name, path in (c.split("=", 1) for c in args.checkouts)}

    def measure(bootstrap: str, work: Path) -> dict[str, Any]:
        return run(bootstrap, work, args.contacts, checkouts, args.rounds, args.settle_s, args.suffix)

    if args.bootstrap:
        print(json.dumps(measure(args.bootstrap, Path(tempfile.mkdtemp(prefix="scorestream-share-"))), indent=2))
        return
    from bench.harness import standalone

    standalone("share", measure)


if __name__ == "__main__":
    main()
