"""The pure-Python ceiling: decode + route + the core fold, batch by batch, with no Kafka at all.

It runs :class:`analytics.replay.Fold`, the worker's stages in one process with the same codecs
between them and a dict standing in for each table (encoded values, as RocksDB would hold them),
each contact folded by :func:`scorestream.fold.step` (the worker's entry: triggers included):
replay's own implementation, so this is also replay's ceiling without Kafka.
"""

from __future__ import annotations

import time

from analytics.replay import Fold
from bench.harness import worker_gc
from schemas.model_file import load_model


def measure(records: list[tuple[str, bytes]]) -> dict[str, float]:
    fold = Fold(load_model())
    with worker_gc():
        started = time.perf_counter()
        fold.run((channel, raw, 0) for channel, raw in records)  # record time 0: no skew check
        elapsed = time.perf_counter() - started
    return {"events": len(records), "seconds": round(elapsed, 2), "events_per_s": round(len(records) / elapsed)}
