"""Where the lifecycle walk's work goes: checkpoints applied, by kind of walk, on the pure fold.

``python -m bench.walk_counts [events] [contacts]`` folds generated traffic (random event times
over 30 days, the worker benches' shape) with :class:`analytics.replay.Fold` and counts, for each
walk, why it started where it did: ``new`` (first walk of a contact), ``anchor`` (a merge or a
changed trait: from the anchor), ``no_position`` (new events older than every kept position),
``resume`` (from a kept position); and the checkpoints applied by each kind, plus those applied
while settling an anchor before old hits fold away (``fold``). Instrumentation only: the fold's
results are unchanged.
"""

from __future__ import annotations

import collections
import sys
from typing import Any
from unittest.mock import patch

import scorestream.fold as fold_module
import scorestream.walk as walk_module
from analytics.replay import Fold
from deploy.traffic import Traffic
from schemas.model_file import load_model


def walk_counts(events: int, contacts: int, seed: int = 3) -> dict[str, int]:
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
    with patch.object(fold_module, "walk", walk), patch.object(walk_module._Walker, "apply", apply):
        span = 30 * 86_400_000
        traffic = Traffic(contacts, seed=seed, start_ms=1_790_000_000_000 - span, span_ms=span)
        Fold(load_model()).run((r.channel, r.value, 0) for r in traffic.records(events))
    return dict(sorted(counts.items()))


if __name__ == "__main__":
    import json

    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200_000
    m = int(sys.argv[2]) if len(sys.argv) > 2 else 20_000
    print(json.dumps(walk_counts(n, m), indent=2))
