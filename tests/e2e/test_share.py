"""Two workers on a 4-partition deployment each hold only their share of the tables, and when one
stops the other restores the freed partitions (in bulk, at assignment time: ``streams.restore``)
and carries on: the API shows every contact as the calm run computes it."""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

import pytest
import rocksdict
import yaml

from deploy.traffic import Traffic
from schemas.events import decode
from tests.e2e.calm import MODEL, ROOMY, compare
from tests.e2e.service import Service
from tests.reference import Reference

OFFSET_KEY = b"__faust\0offset__"
RESTORED = re.compile(r"restored \d+ changelog records into (\d+) of \d+ newly held table partitions")
DB = re.compile(r"^(identity|contacts|accounts)-(\d+)\.db$")


def held(svc: Service, index: int) -> dict[tuple[str, int], set[bytes]]:
    """The table partitions on worker ``index``'s disk, with their keys (read-only: the worker holds them)."""
    tables = svc.data_dir / "worker" / str(index) / "v1" / "tables"
    out: dict[tuple[str, int], set[bytes]] = {}
    for path in sorted(tables.glob("*.db")) if tables.exists() else []:
        match = DB.match(path.name)
        if match is None:
            continue
        options = rocksdict.Options(raw_mode=True)
        try:
            db = rocksdict.Rdict(str(path), options=options, access_type=rocksdict.AccessType.read_only())
        except Exception:  # dropped meanwhile (a released partition)
            continue
        try:
            out[match[1], int(match[2])] = {k for k, _ in db.items() if k != OFFSET_KEY}
        finally:
            db.close()
    return out


def partitions(holding: dict[tuple[str, int], set[bytes]], table: str) -> set[int]:
    return {p for (t, p) in holding if t == table}


def converge(svc: Service, reference: Reference, timeout: float = 180) -> None:
    wrong: dict[str, list[str]] = {}

    def converged() -> bool:
        nonlocal wrong
        wrong = compare(svc, reference.live())
        return not wrong

    try:
        svc.wait_for(converged, timeout=timeout, interval=1.0)
    except AssertionError:
        sample = {cid: diff[:3] for cid, diff in list(wrong.items())[:3]}
        raise AssertionError(f"{len(wrong)} contacts differ, e.g. {sample}") from None


def split(svc: Service) -> tuple[dict[tuple[str, int], set[bytes]], dict[tuple[str, int], set[bytes]]]:
    """Both workers' holdings once each holds two contacts partitions (a rebalance may still be settling)."""

    def settled() -> tuple[dict[tuple[str, int], set[bytes]], dict[tuple[str, int], set[bytes]]] | None:
        zero, one = held(svc, 0), held(svc, 1)
        if len(partitions(zero, "contacts")) == 2 and len(partitions(one, "contacts")) == 2:
            return zero, one
        return None

    result: tuple[dict[tuple[str, int], set[bytes]], dict[tuple[str, int], set[bytes]]] = svc.wait_for(
        settled, timeout=90, interval=1.0
    )
    return result


@pytest.fixture
def service(kafka_bootstrap: str, tmp_path: Path) -> Service:
    (tmp_path / "model.yaml").write_text(yaml.safe_dump(ROOMY))
    return Service(
        bootstrap=kafka_bootstrap,
        data_dir=tmp_path,
        model=tmp_path / "model.yaml",
        workers=2,
        partitions=4,
        # released partitions are dropped at the next rebalance: the disk shows the share at once
        extra_env={"SCORESTREAM_RELEASED_KEEP_S": "0", "SCORESTREAM_LOG_LEVEL": "INFO"},
    )


def test_two_workers_hold_their_share_and_one_takes_over_the_others(service: Service) -> None:
    svc = service
    svc.start()
    try:
        now = int(time.time() * 1000)
        span = 10 * 86_400_000
        first = list(Traffic(contacts=400, seed=31, start_ms=now - span, span_ms=span).records(3_000))
        reference = Reference(MODEL)
        reference.feed([decode(r.value, r.channel, now) for r in first])
        svc.publish((r.channel, r.key, r.value) for r in first)
        converge(svc, reference)

        zero, one = split(svc)
        for table in ("identity", "contacts", "accounts"):
            mine, theirs = partitions(zero, table), partitions(one, table)
            assert not mine & theirs, f"{table}: both workers hold partitions {mine & theirs}"
            assert mine | theirs <= {0, 1, 2, 3}
        contacts0 = set().union(*(keys for (t, _), keys in zero.items() if t == "contacts"))
        contacts1 = set().union(*(keys for (t, _), keys in one.items() if t == "contacts"))
        live = {cid.encode() for cid in reference.live()}
        assert contacts0 and contacts1, "each worker holds some contacts"
        assert not contacts0 & contacts1, "no contact is held by both"
        assert live <= contacts0 | contacts1, "every contact is held by one of them"
        assert len(contacts0) < len(live) and len(contacts1) < len(live), "neither holds the whole table"

        # worker 1 stops: worker 0 is assigned its partitions and restores them in bulk
        assert svc.more_workers[1].poll() is None
        svc.more_workers[1].terminate()
        svc.more_workers[1].wait(timeout=60)
        second = list(Traffic(contacts=400, seed=32, start_ms=now - span, span_ms=span).records(2_000))
        reference.feed([decode(r.value, r.channel, now) for r in second])
        svc.publish((r.channel, r.key, r.value) for r in second)
        converge(svc, reference)

        alone = svc.wait_for(lambda: (h := held(svc, 0)) and len(partitions(h, "contacts")) == 4 and h, timeout=60)
        everything = set().union(*(keys for (t, _), keys in alone.items() if t == "contacts"))
        assert {cid.encode() for cid in reference.live()} <= everything
        restores = [int(n) for n in RESTORED.findall((svc.data_dir / "worker.log").read_text())]
        assert restores[-1] == 6, f"worker 0 restored worker 1's 2 partitions of 3 tables in bulk: {restores}"
    finally:
        svc.stop()


def test_with_a_standby_replica_a_worker_restores_its_standbys_with_its_actives(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """``SCORESTREAM_STANDBY_REPLICAS=1``: a worker is assigned the other's partitions as standbys
    and restores them in bulk with its actives (then Faust's standby recovery follows them). Worker 1
    restarts on an empty disk after the events: at its assignment its partitions, actives and
    standbys, are restored from the changelogs, and it holds every contact (without standbys, half)."""
    (tmp_path / "model.yaml").write_text(yaml.safe_dump(ROOMY))
    svc = Service(
        bootstrap=kafka_bootstrap,
        data_dir=tmp_path,
        model=tmp_path / "model.yaml",
        workers=2,
        partitions=4,
        extra_env={
            "SCORESTREAM_RELEASED_KEEP_S": "0",
            "SCORESTREAM_STANDBY_REPLICAS": "1",
            "SCORESTREAM_LOG_LEVEL": "INFO",
        },
    )
    svc.start()
    try:
        now = int(time.time() * 1000)
        span = 10 * 86_400_000
        events = list(Traffic(contacts=300, seed=33, start_ms=now - span, span_ms=span).records(1_500))
        reference = Reference(MODEL)
        reference.feed([decode(r.value, r.channel, now) for r in events])
        svc.publish((r.channel, r.key, r.value) for r in events)
        converge(svc, reference)
        live = {cid.encode() for cid in reference.live()}

        svc.more_workers[1].terminate()
        svc.more_workers[1].wait(timeout=60)
        shutil.rmtree(svc.data_dir / "worker" / "1" / "v1")  # a new machine: everything comes from the changelogs
        log = svc.data_dir / "worker-1.log"
        earlier = len(RESTORED.findall(log.read_text()))
        svc.start_worker(1)
        svc.wait_for(lambda: len(RESTORED.findall(log.read_text())) > earlier, timeout=120, interval=0.5)
        assert RESTORED.findall(log.read_text())[-1] == "12", "its 6 actives and 6 standbys, restored at once"

        holding = held(svc, 1)
        keys = set().union(*(k for (t, _), k in holding.items() if t == "contacts"))
        assert partitions(holding, "contacts") == {0, 1, 2, 3}
        assert live <= keys, "the standbys hold the other worker's contacts"
    finally:
        svc.stop()
