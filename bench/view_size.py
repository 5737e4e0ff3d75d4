"""Compact views against full states: record sizes, and the API's lookup path before and after.

``python -m bench.view_size [--contacts N] [--events N] [--before REV]`` folds generated traffic
(``deploy.traffic``, the default model) with the core and one busy contact (600 events, 36-character
message ids: 500 hits kept), then reports:

* the bytes of the busy contact's state (what the contacts changelog carried to the API) and of its
  view (what ``<app>.views`` carries), and both totals over the population;
* single lookups per second in one process, ``replica.find`` + ``renderer.contact_json`` at a fixed
  instant, for the replica and renderer of revision ``REV`` (fed full states, as before views) and
  of this tree (fed views), in alternating rounds; the ratio is the figure (the machine is shared).

No broker, no HTTP: the API's HTTP stack costs the same either way (``bench.api_load`` measures it).
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from types import ModuleType
from typing import Any

from api.population_reader import PopulationReader
from api.render import ContactRenderer
from api.replica import Replica
from deploy.traffic import Traffic
from kafka_io.clients import KafkaConnection
from schemas.events import decode
from schemas.model_file import load_model
from schemas.state import encode
from schemas.view import encode_view
from scorestream import ContactState, Event, Model
from scorestream.fold import step
from scorestream.identity import anonymous_contact_id
from scorestream.view import view_of

ROOT = Path(__file__).resolve().parent.parent
NOW = int(time.time() * 1000)


def busy_contact(model: Model) -> ContactState:
    """One contact with 600 events (pages, email, orders, identifies): the 500-hit bound reached."""
    user, events = "busy-user", []
    base = NOW - 20 * 86_400_000
    for i in range(600):
        ts = base + i * 2_400_000
        mid = str(uuid.UUID(int=i))
        if i % 50 == 0:
            kw: dict[str, Any] = {"kind": "identify", "traits": {"title": "VP Marketing", "email": "busy@acme.com"}}
        elif i % 97 == 0:
            kw = {"kind": "track", "event": "Order Completed", "properties": {"order_id": f"o-{i}", "total": 120.0}}
        elif i % 3 == 0:
            kw = {"kind": "track", "event": "Email Opened", "channel": "email"}
        else:
            kw = {"kind": "page", "path": ["/pricing", "/demo", "/docs", "/blog/rfm-explained"][i % 4]}
        events.append(Event(message_id=mid, timestamp_ms=ts, user_id=user, channel=kw.pop("channel", "web"), **kw))
    state: ContactState | None = None
    for i in range(0, len(events), 20):
        state = step(state, user, events[i : i + 20], model).state
    assert state is not None
    return state


def population(model: Model, contacts: int, events: int) -> dict[str, ContactState]:
    traffic = Traffic(contacts, seed=11)
    by_contact: dict[str, list[Event]] = {}
    for record in traffic.records(events):
        event = decode(record.value, record.channel, NOW)
        key = event.user_id or anonymous_contact_id(event.anonymous_id or "x")
        by_contact.setdefault(key, []).append(event)
    states: dict[str, ContactState] = {}
    for key, evs in by_contact.items():
        state: ContactState | None = None
        for i in range(0, len(evs), 50):
            state = step(state, key, evs[i : i + 50], model).state
        if state is not None:
            states[key] = state
    return states


def _old_modules(rev: str) -> tuple[ModuleType, ModuleType]:
    """``api/replica.py`` and ``api/render.py`` of ``rev``, importable beside this tree's."""
    where = Path(tempfile.mkdtemp(prefix="view-size-"))
    sources = {}
    for name in ("replica", "render"):
        text = subprocess.run(
            ["git", "show", f"{rev}:api/{name}.py"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout
        sources[name] = text.replace("from api.replica import", "from old_replica import")
    modules = []
    for name, text in sources.items():
        path = where / f"old_{name}.py"
        path.write_text(text)
        spec = importlib.util.spec_from_file_location(f"old_{name}", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[f"old_{name}"] = module
        spec.loader.exec_module(module)
        modules.append(module)
    return modules[0], modules[1]


def _lookups(replica: Any, renderer: Any, ids: list[str], seconds: float) -> float:
    """Lookups per second (find + render) over ``ids`` in turn, for about ``seconds``."""
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        for ident in ids:
            entry = replica.find(ident)
            assert entry is not None
            renderer.contact_json(entry, NOW)
        done += len(ids)
    return done / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--contacts", type=int, default=5_000)
    parser.add_argument("--events", type=int, default=60_000)
    parser.add_argument("--before", default="a6df119", help="the revision whose API read full states")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    model = load_model()
    busy = busy_contact(model)
    states = population(model, args.contacts, args.events)
    states[busy.contact_id] = busy
    full = {k: encode(s) for k, s in states.items()}
    views = {k: encode_view(view_of(s, model)) for k, s in states.items()}
    print(
        f"busy contact: {len(busy.hits)} hits kept, state {len(full[busy.contact_id]):,} B, "
        f"view {len(views[busy.contact_id]):,} B"
    )
    print(f"  ratio state/view: {len(full[busy.contact_id]) / len(views[busy.contact_id]):.1f}x")
    total_full, total_view = sum(map(len, full.values())), sum(map(len, views.values()))
    print(f"{len(states):,} contacts: states {total_full:,} B, views {total_view:,} B ({total_full / total_view:.1f}x)")

    old_replica, old_render = _old_modules(args.before)
    kafka = KafkaConnection("127.0.0.1:1")
    before = old_replica.Replica(kafka=kafka, changelog_topic="c", status_topic="s")
    after = Replica(kafka=kafka, views_topic="c", status_topic="s")
    for key in states:
        before.apply(key.encode(), full[key])
        after.apply(key.encode(), views[key])
    population_reader = PopulationReader(kafka=kafka, topic="p")
    new_renderer = ContactRenderer(model, population_reader.value_body)
    old_values = old_render.ContactRenderer(model, _old_value_body(population_reader))
    every = sorted(states)
    sets = {
        f"all {len(every):,} in turn (more than the decoded cache holds before)": every,
        "200 contacts (all in both decoded caches)": every[:: max(1, len(every) // 200)][:200],
        "the busy contact alone": [busy.contact_id],
    }
    for what, ids in sets.items():
        rates: dict[str, list[float]] = {"before": [], "after": []}
        for _ in range(args.rounds):
            rates["before"].append(_lookups(before, old_values, ids, args.seconds))
            rates["after"].append(_lookups(after, new_renderer, ids, args.seconds))
        b, a = statistics.median(rates["before"]), statistics.median(rates["after"])
        runs = "; ".join(f"{k}: {', '.join(f'{v:,.0f}' for v in vs)}" for k, vs in rates.items())
        print(f"lookups/s, {what}: before {b:,.0f}, after {a:,.0f}, after/before {a / b:.2f}x ({runs})")


def _old_value_body(reader: PopulationReader) -> Any:
    """The value body as revision ``--before`` computed it: from the full state's ledger."""
    from schemas.value import value_body
    from scorestream.population import value_view

    return lambda state, now: value_body(value_view(state.value, now, reader.model, reader.segments))


if __name__ == "__main__":
    main()
