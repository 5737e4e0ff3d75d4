"""Where the lifecycle walk's work goes: checkpoints applied, by kind of walk, on the pure fold.

``python -m bench.walk_counts [events] [contacts]`` folds generated traffic (random event times
over 30 days, the worker benches' shape; with ``--live RATE``, live traffic instead: events
``RATE`` a second, each stamped up to ``--jitter`` ms before it is sent, so a busy contact's events
come slightly out of order) with :class:`analytics.replay.Fold` and counts, for each
walk, why it started where it did: ``new`` (first walk of a contact), ``anchor`` (a merge or a
changed trait: from the anchor), ``no_position`` (new events older than every kept position),
``resume`` (from a kept position); and the checkpoints applied by each kind, plus those applied
while settling an anchor before old hits fold away (``fold``); and what the kept positions
cost at the end: ``positions_mean`` / ``positions_max`` per contact (the newest included),
``state_bytes_mean`` and ``journey_bytes_mean`` (encoded, over contacts with a journey).
Instrumentation only: the fold's results are unchanged.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import itertools
from typing import Any
from unittest.mock import patch

import deploy.traffic as traffic_module
import scorestream.fold as fold_module
import scorestream.walk as walk_module
from analytics.replay import Fold
from deploy.traffic import Traffic
from schemas.model_file import load_model
from schemas.state import decode_state, encode


class _SimulatedClock:
    """``time.time()`` for the traffic generator: ``rate`` messages a second from 1,790,000,000 s."""

    def __init__(self, rate: float) -> None:
        self.ticks = itertools.count()
        self.rate = rate

    def time(self) -> float:
        return 1_790_000_000 + next(self.ticks) / self.rate


def walk_counts(
    events: int, contacts: int, seed: int = 3, live_rate: float | None = None, jitter_ms: int = 2_000
) -> dict[str, float]:
    counts: collections.Counter[str] = collections.Counter()
    walking: list[str] = []
    original_walk, original_apply = walk_module.walk, walk_module._Walker.apply

    def walk(state: Any, model: Any, lc: Any, as_of_ms: int, resume_before: int | None = None) -> Any:
        old = state.journey
        if old is None:
            kind = "new"
        elif resume_before is None:
            kind = "anchor"
        elif not [c for c in old.cursors if c.at_ms < resume_before]:
            kind = "no_position"
        else:
            kind = "resume"
        counts[f"walks_{kind}"] += 1
        walking.append(kind)
        try:
            return original_walk(state, model, lc, as_of_ms, resume_before=resume_before)
        finally:
            walking.pop()

    def apply(self: Any, cp: Any) -> None:
        counts[f"applied_{walking[-1] if walking else 'fold'}"] += 1
        original_apply(self, cp)

    # the fold calls the walk it imported: patched there
    live = patch.object(traffic_module, "time", _SimulatedClock(live_rate)) if live_rate else contextlib.nullcontext()
    with patch.object(fold_module, "walk", walk), patch.object(walk_module._Walker, "apply", apply), live:
        span = 30 * 86_400_000
        jitter = jitter_ms if live_rate else None
        traffic = Traffic(contacts, seed=seed, start_ms=1_790_000_000_000 - span, span_ms=span, live_jitter_ms=jitter)
        fold = Fold(load_model())
        fold.run((r.channel, r.value, 0) for r in traffic.records(events))
    out: dict[str, float] = dict(counts)
    positions: list[int] = []
    state_bytes = journey_bytes = 0
    for raw in fold.contacts.values():
        state = decode_state(raw)
        if state.journey is not None:
            positions.append(len(state.journey.cursors))
            state_bytes += len(raw)
            journey_bytes += len(encode(state.journey))
    if positions:
        out["positions_mean"] = round(sum(positions) / len(positions), 2)
        out["positions_max"] = max(positions)
        out["state_bytes_mean"] = round(state_bytes / len(positions))
        out["journey_bytes_mean"] = round(journey_bytes / len(positions))
    return dict(sorted(out.items()))


if __name__ == "__main__":
    import json

    parser = argparse.ArgumentParser(prog="python -m bench.walk_counts")
    parser.add_argument("events", type=int, nargs="?", default=200_000)
    parser.add_argument("contacts", type=int, nargs="?", default=20_000)
    parser.add_argument("--live", type=float, default=None, metavar="RATE", help="live traffic, events a second")
    parser.add_argument("--jitter", type=int, default=2_000, metavar="MS", help="live: up to this much late")
    args = parser.parse_args()
    print(json.dumps(walk_counts(args.events, args.contacts, live_rate=args.live, jitter_ms=args.jitter), indent=2))
