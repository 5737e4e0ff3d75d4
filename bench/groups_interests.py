"""The full model's fold throughput with two score groups and the interests section, beside the same
model without them (issue 20), in one run on the same events.

Each model folds the same generated events through :class:`analytics.replay.Fold` (the worker's
stages in one process, every contact by :func:`scorestream.fold.step`, states encoded between
batches as the tables hold them): the pure-Python fold of ``bench.pure``, no Kafka. The models:

- ``full``: the bundled default model (two score groups, ``interests``, ``machine_traffic``);
- ``without``: the same file with the groups' rules moved into ``engagement.rules`` (the same
  overall score: the groups weigh 1 at the overall half-life) and no ``interests`` section;
- ``without_machine``: ``without`` with no ``machine_traffic`` section either (what judging
  machine traffic in e-mail costs on top).

The models take turns (``rounds`` passes of each, in rotating order, so drift on a shared machine
falls on all of them); each model's best pass is its figure, and ``ratio`` is ``full`` over
``without``. Absolute numbers are reported, never asserted.

``python -m bench.groups_interests --events 50000 --contacts 5000`` (or ``python -m bench.run
--only groups_interests``).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from typing import Any

from analytics.replay import Fold
from bench.harness import worker_gc
from deploy.traffic import Traffic
from schemas.model_file import read_model_source
from scorestream import Model

SPAN_MS = 30 * 86_400_000


def variants() -> dict[str, Model]:
    """The three models compared (see the module docstring)."""
    source = read_model_source()
    full = Model.from_dict(source)
    plain = copy.deepcopy(source)
    engagement = plain["engagement"]
    for group in engagement.pop("groups", None) or []:
        engagement["rules"] = [*engagement.get("rules", []), *group.get("rules", [])]
    plain.pop("interests", None)
    plain["name"] = "without-groups-interests"
    bare = copy.deepcopy(plain)
    bare.pop("machine_traffic", None)
    bare["name"] = "without-machine"
    return {"full": full, "without": Model.from_dict(plain), "without_machine": Model.from_dict(bare)}


def one_pass(records: list[tuple[str, bytes]], model: Model) -> float:
    """Seconds to fold ``records`` from nothing under ``model``."""
    fold = Fold(model)
    with worker_gc():
        started = time.perf_counter()
        fold.run((channel, raw, 0) for channel, raw in records)  # record time 0: no skew check
        return time.perf_counter() - started


def measure(events: int, contacts: int, rounds: int = 3) -> dict[str, Any]:
    """Events/s of each model (its best pass), every pass's events/s, and the ratios."""
    traffic = Traffic(contacts, seed=3, start_ms=int(time.time() * 1000) - SPAN_MS, span_ms=SPAN_MS)
    records = [(r.channel, r.value) for r in traffic.records(events)]
    models = variants()
    names = list(models)
    passes: dict[str, list[int]] = {name: [] for name in names}
    for i in range(rounds):
        for name in names[i % len(names) :] + names[: i % len(names)]:
            passes[name].append(round(events / one_pass(records, models[name])))
    best = {name: max(rates) for name, rates in passes.items()}
    out: dict[str, Any] = {"events": events, "contacts": contacts, "rounds": rounds}
    for name in names:
        out[name] = {
            "events_per_s": best[name],
            "median_events_per_s": round(statistics.median(passes[name])),
            "us_per_event": round(1e6 / best[name], 1),
            "passes": ",".join(str(r) for r in passes[name]),
        }
    out["ratio_full_over_without"] = round(best["full"] / best["without"], 3)
    out["ratio_without_over_without_machine"] = round(best["without"] / best["without_machine"], 3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--contacts", type=int, default=5_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(json.dumps(measure(args.events, args.contacts, args.rounds), indent=2))


if __name__ == "__main__":
    main()
