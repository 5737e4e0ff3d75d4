"""Which workers the API counts as ready: the latest status of each, while its lease holds."""

from __future__ import annotations

import time

import orjson

from api.replica import Replica
from kafka_io.clients import KafkaConnection


def status(worker: str, state: str, lease_until_ms: int | None = None) -> bytes:
    body: dict[str, object] = {"worker": worker, "state": state, "model": "m@1", "at_ms": 1}
    if lease_until_ms is not None:
        body["lease_until_ms"] = lease_until_ms
    return orjson.dumps(body)


def test_a_ready_worker_counts_while_its_lease_holds_and_not_after() -> None:
    now = int(time.time() * 1000)
    replica = Replica(kafka=KafkaConnection("unused:9092"), views_topic="c", status_topic="s")
    replica.apply_status(status("renewed", "ready", now + 60_000))
    replica.apply_status(status("killed", "ready", now - 1))  # stopped renewing: SIGKILL, lost host
    replica.apply_status(status("stopped", "ready", now + 60_000))
    replica.apply_status(status("stopped", "stopped"))
    replica.apply_status(status("old-worker", "ready"))  # a worker from before leases: until it says otherwise
    assert replica.ready_workers == ["old-worker", "renewed"]
    replica.apply_status(status("killed", "ready", now + 60_000))  # back (restarted under the same id)
    assert replica.ready_workers == ["killed", "old-worker", "renewed"]
