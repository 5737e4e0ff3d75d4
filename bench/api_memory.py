"""The API with many contacts held: memory per process, single lookups, time to ready.

The views topic of a fresh deployment (no worker) is prefilled with synthetic contact views (one
realistic view, folded by the core from a few events, copied under new ids: a user id, an
anonymous id each, an email for every other one) and a worker status saying "ready"; then, for
each size (cumulative: 1M, then 4M more for 5M):

* **empty store**: an API process starts on an empty view store directory and follows the topic
  from the beginning; ``ready_empty_s`` is the time from its start to ``/readyz`` 200;
* its resident memory once ready (``rss_mb_ready``) and after the lookups (``rss_mb_after_lookups``);
* ``wrk`` drives ``GET /v1/contacts/{id}`` (``bench/wrk/contacts.lua``) with ids drawn uniformly
  from every contact held, two user ids for one anonymous id;
* **warm store**: the process is stopped and started again on the store it left:
  ``ready_warm_s`` (it resumes from the stored offsets);
* **a second process** on the same host and store (another port) while the first runs: it reads
  the first one's store (a RocksDB secondary); ``second_ready_s`` and ``second_rss_mb`` (after
  a lookup run through it).

``python -m bench.api_memory --contacts 1000000,5000000`` runs it on a broker of its own and
prints the figures as JSON (``--json FILE`` also writes them).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson

from bench.api_load import ensure_wrk, run_wrk
from bench.harness import process_usage, publish, standalone
from kafka_io import clients
from kafka_io.clients import KafkaConnection
from kafka_io.partitioner import partition_for
from schemas.model_file import load_model
from schemas.view import encode_view
from scorestream import apply_events
from scorestream.view import ContactView, view_of
from tests.e2e.service import REPO, Service, free_port
from tests.factories import T0, make_event

SEED = 5
LOOKUP_IDS = 300_000  # ids in the wrk file (drawn uniformly from every contact held)


def template_view() -> ContactView:
    """A realistic view: a contact who identified, browsed and bought, folded by the core."""
    model = load_model()
    events = [
        make_event(kind="identify", user_id="u-0", traits={"email": "ann@acme.com", "company": "Acme"}),
        *(
            make_event(kind="page", event=None, channel="web", user_id="u-0", path=p)
            for p in ("/", "/pricing", "/docs")
        ),
        make_event(kind="track", event="Email Clicked", channel="email", user_id="u-0"),
        make_event(
            kind="track", event="Order Completed", channel="store", user_id="u-0", properties={"revenue": 120.0}
        ),
    ]
    return view_of(apply_events(None, "u-0", events, model), model)


def user_id(i: int) -> str:
    return f"u-{i:09d}"


def anonymous_id(i: int) -> str:
    return f"a-{i:09d}"


def views(topic: str, start: int, stop: int, template: ContactView) -> Iterator[tuple[str, bytes | None, bytes]]:
    """The views of contacts ``start`` to ``stop``: ``template`` under the contact's ids (encoded
    once with a placeholder of the ids' width, copied with the digits in: 0.3 us a view instead of
    the 15 us of a copy and an encoding)."""
    hole = b"X" * 9
    with_email, without = (
        encode_view(
            dataclasses.replace(
                template,
                contact_id="u-XXXXXXXXX",
                user_id="u-XXXXXXXXX",
                anonymous_ids=["a-XXXXXXXXX"],
                email=email,
            )
        )
        for email in ("cXXXXXXXXX@example.com", None)
    )
    for i in range(start, stop):
        digits = b"%09d" % i
        yield topic, b"u-" + digits, (with_email if i % 2 == 0 else without).replace(hole, digits)


async def publish_batches(bootstrap: str, records: Iterator[tuple[str, bytes | None, bytes]], partitions: int) -> float:
    """Publish ``(topic, key, value)`` records in batches built per partition (the partition of
    the key, as the worker's producer picks it); returns records/s. Several times faster than one
    ``send`` per record, which made a 5M prefill take longer than the run."""
    producer = clients.producer(KafkaConnection(bootstrap), acks="all", max_request_size=4 << 20)
    await producer.start()
    started = time.perf_counter()
    count = 0
    batches: dict[tuple[str, int], Any] = {}
    sent: list[Any] = []
    try:
        for topic, key, value in records:
            assert key is not None
            at = (topic, partition_for(key, partitions))
            batch = batches.get(at)
            if batch is None:
                batch = batches[at] = producer.create_batch()
            if batch.append(key=key, value=value, timestamp=None) is None:  # full: send it, start another
                sent.append(await producer.send_batch(batch, at[0], partition=at[1]))
                batch = batches[at] = producer.create_batch()
                batch.append(key=key, value=value, timestamp=None)
            count += 1
            if len(sent) >= 64:
                await asyncio.gather(*sent)
                sent.clear()
        for (topic, partition), batch in batches.items():
            sent.append(await producer.send_batch(batch, topic, partition=partition))
        await asyncio.gather(*sent)
    finally:
        await producer.stop()
    return count / (time.perf_counter() - started)


class Api:
    """One ``scorestream api`` process of the deployment, on a port of its own."""

    def __init__(self, svc: Service, log: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        out = (svc.data_dir / log).open("ab")
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "deploy.cli", "api"],
            env={**svc.env, "SCORESTREAM_API_PORT": str(self.port)},
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
        )

    def wait_ready(self, timeout_s: float) -> float:
        """Seconds from the process's start to ``/readyz`` 200."""
        deadline = time.perf_counter() + timeout_s
        while time.perf_counter() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the API exited with {self.proc.returncode}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return time.perf_counter() - self.started
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise TimeoutError(f"API not ready in {timeout_s} s")

    def rss_mb(self) -> float:
        return round(process_usage(self.proc.pid).rss_mb, 1)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def lookups(wrk: str, api: Api, ids_file: Path, connections: int, duration_s: float) -> dict[str, Any]:
    run_wrk(wrk, api.url, "single", ids_file, connections, 1)  # warm-up, not reported
    before = process_usage(api.proc.pid)
    result = run_wrk(wrk, api.url, "single", ids_file, connections, duration_s)
    after = process_usage(api.proc.pid)
    result.check("GET /v1/contacts/{id}")
    return {
        "single_lookups_per_s": round(result.per_s),
        "single_p50_ms": result.p50_ms,
        "single_p99_ms": result.p99_ms,
        "single_p999_ms": result.p999_ms,
        "single_errors": result.errors,
        "api_cpu_utilisation": round((after.cpu_s - before.cpu_s) / result.duration_s, 2),
    }


def size_figures(
    svc: Service, wrk: str, held: int, connections: int, duration_s: float, timeout_s: float
) -> dict[str, Any]:
    """The figures of one size (see the module docstring); the store starts empty."""
    shutil.rmtree(svc.data_dir / "api", ignore_errors=True)
    rng = random.Random(SEED + held)
    picks = [rng.randrange(held) for _ in range(LOOKUP_IDS)]
    ids_file = svc.data_dir / f"ids-{held}.txt"
    ids_file.write_text("".join(f"{anonymous_id(i) if n % 3 == 2 else user_id(i)}\n" for n, i in enumerate(picks)))
    first = Api(svc, f"api-{held}.log")
    try:
        out: dict[str, Any] = {"contacts": held, "ready_empty_s": round(first.wait_ready(timeout_s), 2)}
        out["rss_mb_ready"] = first.rss_mb()
        out.update(lookups(wrk, first, ids_file, connections, duration_s))
        out["rss_mb_after_lookups"] = first.rss_mb()
        out["peak_rss_mb"] = round(process_usage(first.proc.pid).peak_rss_mb, 1)
    finally:
        first.stop()
    first = Api(svc, f"api-{held}-warm.log")
    second: Api | None = None
    try:
        out["ready_warm_s"] = round(first.wait_ready(timeout_s), 2)
        second = Api(svc, f"api-{held}-second.log")
        out["second_ready_s"] = round(second.wait_ready(timeout_s), 2)
        second_lookups = lookups(wrk, second, ids_file, connections, duration_s)
        out["second_single_lookups_per_s"] = second_lookups["single_lookups_per_s"]
        out["second_single_p99_ms"] = second_lookups["single_p99_ms"]
        out["second_rss_mb"] = second.rss_mb()
        out["rss_mb_warm_writer"] = first.rss_mb()
    finally:
        if second is not None:
            second.stop()
        first.stop()
    out["store_disk_mb"] = round(
        sum(f.stat().st_size for f in (svc.data_dir / "api").rglob("*") if f.is_file()) / 2**20
    )
    return out


def api_memory(
    bootstrap: str,
    work: Path,
    sizes: list[int],
    duration_s: float = 10,
    connections: int = 32,
    timeout_s: float = 1800,
    cache_mb: int | None = None,
) -> dict[str, Any]:
    """The figures for each size in ``sizes`` (contacts held, ascending), see the module docstring."""
    wrk = ensure_wrk()
    extra = {} if cache_mb is None else {"SCORESTREAM_API_CACHE_MB": str(cache_mb)}
    svc = Service(bootstrap=bootstrap, data_dir=work / "api-memory", extra_env=extra)
    svc.data_dir.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "deploy.cli", "topics"], env=svc.env, cwd=REPO, check=True)
    app_id = f"ss-{svc.suffix}"
    status = orjson.dumps({"worker": "bench", "state": "ready", "model": load_model().version, "at_ms": T0})
    asyncio.run(publish(bootstrap, [(f"{app_id}.workers", b"bench", status)]))
    template = template_view()
    out: dict[str, Any] = {
        "view_bytes": len(encode_view(template)),
        "api_cache_mb": cache_mb or 64,
        "connections": connections,
        "duration_s": duration_s,
        "sizes": [],
    }
    held = 0
    for size in sorted(sizes):
        started = time.perf_counter()
        rate = asyncio.run(publish_batches(bootstrap, views(f"{app_id}.views", held, size, template), svc.partitions))
        held = size
        print(f"published {held} views ({rate:.0f}/s, {time.perf_counter() - started:.0f} s)", file=sys.stderr)
        figures = size_figures(svc, wrk, held, connections, duration_s, timeout_s)
        print(json.dumps(figures), file=sys.stderr)
        out["sizes"].append(figures)
    return out


def lookup_cost(contacts: int, work: Path, lookups: int = 200_000, rounds: int = 3) -> dict[str, Any]:
    """In one process, no HTTP: ``Replica.find`` over the same views kept in dicts and in the
    RocksDB store (a fresh decoded-view cache each round, then the same ids again), alternating,
    with the resident memory each store added. The API figures above include the HTTP stack."""
    from api.replica import Replica
    from api.view_store import RocksViewStore

    def rss() -> float:
        return process_usage(os.getpid()).rss_mb

    template = template_view()
    kafka = KafkaConnection("127.0.0.1:1")
    out: dict[str, Any] = {"contacts": contacts, "lookups": lookups}
    replicas: dict[str, Replica] = {}
    for name in ("memory", "rocksdb"):
        before = rss()
        started = time.perf_counter()
        r = Replica(kafka=kafka, views_topic="v", status_topic="s")
        if name == "rocksdb":
            r.store = RocksViewStore.open(work / "lookup-cost")
        for n, (_, key, value) in enumerate(views("v", 0, contacts, template)):
            r.apply(key or b"", value)
            if n % 10_000 == 9_999:
                r.store.commit()
        r.store.commit()
        out[f"{name}_fill_per_s"] = round(contacts / (time.perf_counter() - started))
        out[f"{name}_rss_added_mb"] = round(rss() - before)
        replicas[name] = r
    rng = random.Random(SEED)
    ids = [
        anonymous_id(i) if n % 3 == 2 else user_id(i)
        for n, i in enumerate(rng.randrange(contacts) for _ in range(lookups))
    ]
    timings: dict[str, list[float]] = {f"{name}_{kind}": [] for name in replicas for kind in ("cold", "cached")}
    for _ in range(rounds):
        for name, r in replicas.items():
            r._decoded.clear()
            r._decoded_bytes = 0
            hot = ids[:5_000]  # fit in the decoded-view cache: read once, then timed
            for kind, timed in (("cold", ids), ("warm-up", hot), ("cached", hot)):
                started = time.perf_counter()
                for ident in timed:
                    assert r.find(ident) is not None
                if kind != "warm-up":
                    timings[f"{name}_{kind}"].append((time.perf_counter() - started) / len(timed) * 1e6)
    for figure, values in timings.items():
        out[f"find_us_{figure}"] = round(sorted(values)[len(values) // 2], 2)
    out["find_ratio_rocksdb_vs_memory_cold"] = round(out["find_us_rocksdb_cold"] / out["find_us_memory_cold"], 2)
    replicas["rocksdb"].store.close()
    return out


def visibility(work: Path, changes: int = 300, catch_up_s: float = 0.005) -> dict[str, Any]:
    """How long after the writer commits a view a reading process (a RocksDB secondary catching
    up on its timer, as the API's readers do) returns it: one store, two handles, one process."""
    from api.view_store import RocksViewStore, ViewStore, _read_behind

    writer, reader = RocksViewStore.open(work / "visibility"), RocksViewStore.open(work / "visibility")

    class Follower:
        def __init__(self) -> None:
            self.store: ViewStore = reader
            self.error: str | None = None
            self.caught_up = asyncio.Event()

        def load_from_store(self) -> None:
            pass

    async def measure() -> list[float]:
        task = asyncio.create_task(_read_behind(Follower(), reader, catch_up_s, "visibility"))
        delays = []
        for i in range(changes):
            await asyncio.sleep(0.013)  # not in step with the reader's timer
            writer.put(f"c-{i}", b"x" * 574)
            writer.commit()
            started = time.perf_counter()
            while reader.get(f"c-{i}") is None:  # noqa: ASYNC110 (polling what another handle shows is the measure)
                await asyncio.sleep(0.0002)
            delays.append((time.perf_counter() - started) * 1000)
        task.cancel()
        return sorted(delays)

    delays = asyncio.run(measure())
    reader.close()
    writer.close()

    def at(q: float) -> float:
        return round(delays[min(len(delays) - 1, int(q * len(delays)))], 1)

    return {
        "changes": changes,
        "catch_up_ms": catch_up_s * 1000,
        "p50_ms": at(0.5),
        "p99_ms": at(0.99),
        "max_ms": round(delays[-1], 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--contacts", default="1000000,5000000", help="sizes, comma-separated (cumulative)")
    parser.add_argument("--duration", type=float, default=10)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--cache-mb", type=int, default=None, help="SCORESTREAM_API_CACHE_MB (default 64)")
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    parser.add_argument(
        "--lookup-cost",
        type=int,
        default=None,
        metavar="CONTACTS",
        help="instead: Replica.find in one process with this many views in dicts vs in RocksDB (no broker)",
    )
    parser.add_argument(
        "--visibility", action="store_true", help="instead: delay from a writer's commit to a reading process"
    )
    args = parser.parse_args()
    if args.lookup_cost or args.visibility:
        with tempfile.TemporaryDirectory(prefix="scorestream-lookup-cost-") as work:
            result = visibility(Path(work)) if args.visibility else lookup_cost(args.lookup_cost, Path(work))
        print(json.dumps(result, indent=2))
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        return
    sizes = [int(s) for s in args.contacts.split(",") if s]

    def run(bootstrap: str, work: Path) -> dict[str, Any]:
        result = api_memory(bootstrap, work, sizes, args.duration, args.connections, cache_mb=args.cache_mb)
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        return result

    standalone("api-memory", run)


if __name__ == "__main__":
    main()
