"""bench.privacy (``python -m bench.run --name privacy --only privacy``): regulations end to end.

One deployment (worker, API with its embedded chDB sink) holds ``events`` synthetic events of
``contacts`` contacts (:class:`deploy.traffic.Traffic`) and ``people`` known people, each with an
anonymous page view, an identify linking it (with an email) and an order: every event archived.
Then, through ``POST /v1/regulations`` (``DELETE_ONLY``, ``USER_ID``) and ``GET
/v1/regulations/{id}`` polled every 50 ms:

- ``one_person``: seconds from accepted (the POST's answer) to ``done`` for one person, three
  times (median, and each store's own seconds from the record);
- ``ten_thousand``: ten regulations of 1,000 people (:data:`BATCH`) sent together, seconds until
  all are ``done``;
- ``throughput``: the worker's events/s on a prefilled backlog (``backlog`` events of the same
  contacts: the worker stopped, the backlog published, the worker started, time to drained; as
  :func:`bench.scenarios.worker_throughput` measures it), once alone and once while a deletion of
  ``busy_people`` other people runs, in the same deployment. The backlog never names the people
  deleted, so both runs fold the same events.

Absolute figures depend on the machine (2 shared cores here); compare within one run.
"""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson

from bench.harness import process_usage, publish, wait_drained
from deploy.traffic import Traffic, iso
from schemas.regulations import MAX_SUBJECTS
from schemas.settings import Settings
from tests.e2e.service import Service

DAY = 86_400_000
POLL_S = 0.05
# people per regulation: 10 regulations of MAX_SUBJECTS (1,000) for the 10,000
BATCH = MAX_SUBJECTS


def person_id(i: int) -> str:
    return f"pp-{i}"


def people_records(topics: dict[str, str], people: range, now_ms: int) -> Iterator[tuple[str, bytes | None, bytes]]:
    """Per person: an anonymous page view, an identify linking it (with an email), an order."""
    for i in people:
        user, anonymous = person_id(i), f"pp-anon-{i}"
        t = now_ms - DAY - (i % 1000) * 60_000

        def one(kind: str, ts: int, i: int = i, **fields: Any) -> bytes:
            return orjson.dumps({"type": kind, "messageId": f"pp-{kind}-{i}", "timestamp": iso(ts), **fields})

        props = {"path": "/pricing"}
        yield topics["web"], anonymous.encode(), one("page", t, anonymousId=anonymous, properties=props)
        traits = {"email": f"pp{i}@people.example", "title": "Engineer"}
        yield topics["web"], user.encode(), one("identify", t + 1, userId=user, anonymousId=anonymous, traits=traits)
        order = {"order_id": f"pp-o-{i}", "revenue": 50.0, "currency": "EUR"}
        yield (
            topics["store"],
            user.encode(),
            one("track", t + 2, userId=user, event="Order Completed", properties=order),
        )


def traffic_records(
    topics: dict[str, str], events: int, contacts: int, seed: int, now_ms: int, first_seq: int
) -> Iterator[tuple[str, bytes | None, bytes]]:
    """``events`` of :class:`Traffic` over the last 30 days; message ids from ``first_seq`` on (a
    second backlog of the same contacts is new events, not duplicates)."""
    traffic = Traffic(contacts, seed=seed, start_ms=now_ms - 30 * DAY, span_ms=30 * DAY)
    traffic.seq = first_seq
    for r in traffic.records(events):
        yield topics[r.channel], r.key, r.value


class Deployment:
    """The bench's service and the two groups whose lag says "done": the worker's and the sink's."""

    def __init__(self, bootstrap: str, work: Path) -> None:
        data = work / f"privacy-{uuid.uuid4().hex[:6]}"
        self.svc = Service(
            bootstrap=bootstrap,
            data_dir=data,
            extra_env={
                "SCORESTREAM_SINK_IN_API": "true",
                "SCORESTREAM_CLICKHOUSE_URL": f"chdb://{data / 'chdb'}",
                "SCORESTREAM_LOG_LEVEL": "WARNING",
                # the bench polls every regulation every 50 ms: far beyond the admin scope's default
                "SCORESTREAM_RATE_LIMIT_ADMIN": "1000000/second",
            },
        )
        values = {k[len("SCORESTREAM_") :].lower(): v for k, v in self.svc.env.items() if k.startswith("SCORESTREAM_")}
        self.settings = Settings.model_validate(values)
        s = self.settings
        self.topics = {c: self.svc.topic(c) for c in ("web", "email", "store")}
        self.worker_topics = [*s.source_topics, s.identity_topic, s.contacts_topic, s.accounts_topic]
        self.sink_topics = [*s.source_topics, s.topic_deadletter, s.changelog_topic("contacts")]

    def drained(self, timeout_s: float = 1800) -> float:
        return wait_drained(self.svc.bootstrap, self.settings.app_id, self.worker_topics, timeout_s, quiet_s=1.0)

    def sink_drained(self, timeout_s: float = 1800) -> float:
        group = f"{self.settings.app_id}-sink"
        return wait_drained(self.svc.bootstrap, group, self.sink_topics, timeout_s, quiet_s=1.0)

    def publish(self, records: Iterator[tuple[str, bytes | None, bytes]]) -> float:
        return asyncio.run(publish(self.svc.bootstrap, records))

    def regulate(self, http: httpx.Client, ids: list[str]) -> str:
        body = {"regulationType": "DELETE_ONLY", "subjectType": "USER_ID", "subjectIds": ids}
        r = http.post("/v1/regulations", json=body, headers={"Idempotency-Key": uuid.uuid4().hex}, timeout=120)
        if r.status_code != 200:
            raise RuntimeError(
                f"POST /v1/regulations ({len(ids)} ids): {r.status_code} {r.text}\n{self.svc.logs('api')}"
            )
        return str(r.json()["data"]["regulateId"])

    def until_done(self, http: httpx.Client, ids: list[str], timeout_s: float = 3600) -> dict[str, dict[str, Any]]:
        """Poll every regulation of ``ids`` until each is finished; their last bodies."""
        left, out = set(ids), {}
        deadline = time.monotonic() + timeout_s
        while left and time.monotonic() < deadline:
            for reg_id in sorted(left):
                r = http.get(f"/v1/regulations/{reg_id}")
                r.raise_for_status()
                reg = r.json()["data"]["regulation"]
                if reg["status"] == "failed":
                    raise RuntimeError(f"regulation {reg_id} failed: {reg}")
                if reg["status"] == "done":
                    out[reg_id] = reg
                    left.discard(reg_id)
            time.sleep(POLL_S)
        if left:
            raise TimeoutError(f"regulations not done in {timeout_s} s: {sorted(left)}")
        return out


def store_seconds(reg: dict[str, Any]) -> dict[str, float | None]:
    """Each store's seconds from its start to its end, as the regulation's record says."""
    from datetime import datetime

    def ms(text: str | None) -> float | None:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() if text else None

    out: dict[str, float | None] = {}
    for store in reg["stores"]:
        start, end = ms(store.get("startedAt")), ms(store.get("finishedAt"))
        out[store["name"]] = round(end - start, 3) if start is not None and end is not None else None
    return out


def timed_deletion(d: Deployment, http: httpx.Client, people: list[str]) -> tuple[float, dict[str, dict[str, Any]]]:
    """Seconds from the first regulation's acceptance to the last one's ``done``."""
    started = time.perf_counter()
    ids = [d.regulate(http, people[i : i + BATCH]) for i in range(0, len(people), BATCH)]
    done = d.until_done(http, ids)
    return time.perf_counter() - started, done


def backlog_throughput(d: Deployment, events: int, contacts: int, seed: int, first_seq: int) -> dict[str, Any]:
    """The worker stopped, ``events`` published, the worker started: events/s until drained."""
    now = int(time.time() * 1000)
    _stop_worker(d.svc)
    d.publish(traffic_records(d.topics, events, contacts, seed, now, first_seq))
    started = time.perf_counter()
    d.svc.start_worker()
    assert d.svc.worker is not None
    seconds = d.drained()
    wall = time.perf_counter() - started
    usage = process_usage(d.svc.worker.pid)
    return {
        "events": events,
        "seconds_to_applied": round(seconds, 2),
        "events_per_s": round(events / seconds),
        "wall_s": round(wall, 2),
        "worker_cpu_s": round(usage.cpu_s, 1),
    }


def _stop_worker(svc: Service) -> None:
    proc = svc.worker
    if proc is not None and proc.poll() is None:
        proc.terminate()
        proc.wait(timeout=60)


def privacy_figures(
    bootstrap: str,
    work: Path,
    events: int = 200_000,
    contacts: int = 50_000,
    people: int = 25_000,
    backlog: int = 50_000,
    busy_people: int = 10_000,
) -> dict[str, Any]:
    """The figures of this module's doc (``people`` >= 10,003 + ``busy_people``)."""
    needed = 3 + 10_000 + busy_people
    if people < needed:
        raise ValueError(f"people must be at least {needed}")
    d = Deployment(bootstrap, work)
    now = int(time.time() * 1000)
    set_up = time.perf_counter()
    d.svc.start()
    try:
        rate = d.publish(
            x
            for part in (
                traffic_records(d.topics, events, contacts, seed=11, now_ms=now, first_seq=0),
                people_records(d.topics, range(people), now),
            )
            for x in part
        )
        d.drained()
        d.sink_drained()
        figures: dict[str, Any] = {
            "contacts": contacts,
            "people": people,
            "archived_events": events + 3 * people,
            "prefill_events_per_s": round(rate),
            "set_up_s": round(time.perf_counter() - set_up, 1),
        }
        with d.svc.client() as http:
            ones, per_store = [], []
            for i in range(3):
                seconds, done = timed_deletion(d, http, [person_id(i)])
                ones.append(seconds)
                per_store.append(store_seconds(next(iter(done.values()))))
            figures["one_person_s"] = {"median": round(statistics.median(ones), 2), "runs": [round(s, 2) for s in ones]}
            figures["one_person_stores_s"] = per_store[len(per_store) // 2]
            ten = [person_id(i) for i in range(3, 3 + 10_000)]
            seconds, done = timed_deletion(d, http, ten)
            figures["ten_thousand_s"] = round(seconds, 2)
            figures["ten_thousand_regulations"] = len(done)
            figures["ten_thousand_stores_s"] = [store_seconds(reg) for reg in done.values()]
            figures["ten_thousand_people_per_s"] = round(10_000 / seconds, 1)

            alone = backlog_throughput(d, backlog, contacts, seed=12, first_seq=10**9)
            busy = [person_id(i) for i in range(3 + 10_000, 3 + 10_000 + busy_people)]
            # the same again, the deletion sent as the worker starts on the backlog
            _stop_worker(d.svc)
            d.publish(traffic_records(d.topics, backlog, contacts, 13, int(time.time() * 1000), 2 * 10**9))
            d.svc.start_worker()
            assert d.svc.worker is not None
            deleting = time.perf_counter()
            ids = [d.regulate(http, busy[i : i + BATCH]) for i in range(0, len(busy), BATCH)]
            seconds = d.drained()
            usage = process_usage(d.svc.worker.pid)
            d.until_done(http, ids)
            with_deletion = {
                "events": backlog,
                "seconds_to_applied": round(seconds, 2),
                "events_per_s": round(backlog / seconds),
                "worker_cpu_s": round(usage.cpu_s, 1),
                "people_deleted": busy_people,
                "deletion_done_s": round(time.perf_counter() - deleting, 2),
            }
        figures["throughput_alone"] = alone
        figures["throughput_while_deleting"] = with_deletion
        figures["throughput_ratio"] = round(with_deletion["events_per_s"] / alone["events_per_s"], 3)
        return figures
    finally:
        d.svc.stop()
