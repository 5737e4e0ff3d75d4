"""Where the pure fold's time goes, under cProfile: ``python -m bench.profile_fold [--sorted] [events] [contacts]``.

Folds generated traffic (the worker benches' shape: random event times over 30 days; ``--sorted``
in event-time order) with :class:`analytics.replay.Fold` under the default model, and prints the
functions by cumulative time, then what the walk's set-up (``_walker``, ``_resume``) calls.
"""

from __future__ import annotations

import cProfile
import pstats
import sys
import time

import orjson

from analytics.replay import Fold
from deploy.traffic import Traffic
from schemas.model_file import load_model


def main(argv: list[str]) -> None:
    ordered = "--sorted" in argv
    numbers = [int(a) for a in argv if a.isdigit()]
    events, contacts = (numbers + [200_000, 20_000][len(numbers) :])[:2]
    span = 30 * 86_400_000
    now = int(time.time() * 1000)
    traffic = Traffic(contacts, seed=3, start_ms=now - span, span_ms=span)
    records = [(r.channel, r.value, 0) for r in traffic.records(events)]
    if ordered:
        records.sort(key=lambda r: orjson.loads(r[1])["timestamp"])
    fold = Fold(load_model())
    profile = cProfile.Profile()
    profile.enable()
    fold.run(records)
    profile.disable()
    stats = pstats.Stats(profile)
    stats.sort_stats("cumulative").print_stats(30)
    stats.print_callees(r"walk.py:\d+\((_walker|_resume|anchor_at)\)")


if __name__ == "__main__":
    main(sys.argv[1:])
