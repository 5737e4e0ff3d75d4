"""What the worker reports when Prometheus scrapes it (:mod:`telemetry.metrics` has the families):
consumer lag per partition, keys per table partition, views sent, contacts with an instant due.

Read in the metrics server's thread, from structures the worker's loop owns: every read is a
plain attribute or dictionary lookup (a copy of a dictionary before iterating it), and a read that
races a rebalance fails alone (:class:`telemetry.metrics.Source` skips it); nothing is computed
per event for these."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from telemetry import metrics

TABLES = ("identity", "contacts", "accounts")


def consumer_lag(app: Any) -> Iterator[tuple[str, int, int]]:
    """``(topic, partition, lag)`` per partition the worker's consumer is assigned and has
    committed: the partition's highwater (the offset the next record written gets) minus the
    committed offset (the next one the group reads after a restart). Standby and recovering
    changelog partitions have no committed offset and are left out."""
    consumer = getattr(app, "_consumer", None)  # never create it from this thread
    if consumer is None:
        return iter(())
    committed: dict[Any, int | None] = dict(consumer._committed_offset)
    assigned = {(tp.topic, tp.partition): tp for tp in consumer.assignment()}

    def end(topic: str, partition: int) -> int | None:
        try:
            high = consumer.highwater(assigned[(topic, partition)])
        except (AssertionError, KeyError):  # revoked meanwhile
            return None
        return int(high) if high is not None else None

    def done(topic: str, partition: int) -> int | None:
        return committed.get(assigned[(topic, partition)])

    return metrics.lag_of(sorted(assigned), end, done)


def table_keys(wiring: Any) -> Iterator[tuple[str, int, int]]:
    """``(table, partition, keys)`` of every table partition open in this worker (RocksDB's
    ``estimate-num-keys``: cheap, and exact enough for a size trend)."""
    for name in TABLES:
        store = getattr(getattr(wiring, name).data, "_dbs", None)
        for partition, db in sorted(dict(store or {}).items()):
            value = db.property_int_value("rocksdb.estimate-num-keys")
            if value is not None:
                yield name, partition, int(value)


def watch(wiring: Any, pipeline: Any) -> None:
    """Serve the worker's scrape-time families from ``wiring``'s app and tables and ``pipeline``."""
    metrics.scraped(metrics.WORKER_LAG, lambda: consumer_lag(wiring.app))
    metrics.scraped(metrics.TABLE_KEYS, lambda: table_keys(wiring))
    metrics.scraped(metrics.VIEWS_SENT, lambda: [(pipeline.views.views_sent,)])
    metrics.scraped(metrics.TIMERS_DUE, lambda: [(len(pipeline.timer_index),)])
