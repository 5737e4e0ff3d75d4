"""Replay's fold: the same events in any order, with duplicates, give the same states; it keeps the
fold's triggers; the diff counts what changed."""

from __future__ import annotations

import random
from typing import Any

from analytics.replay import Fold, diff, views
from deploy.traffic import Traffic
from schemas.events import decode
from schemas.model_file import load_model, read_model_source
from schemas.state import decode_link, decode_state
from scorestream import Model
from scorestream.fold import step
from tests.factories import DAY, T0, iso, segment_json

MODEL = load_model()
AS_OF = T0 + 31 * DAY


def records(n: int = 1500, contacts: int = 60) -> list[tuple[str, bytes | None, int]]:
    traffic = Traffic(contacts, seed=11, start_ms=T0, span_ms=30 * DAY)
    out: list[tuple[str, bytes | None, int]] = [(r.channel, r.value, T0 + 30 * DAY) for r in traffic.records(n)]
    out.append(("web", b"{not json", T0))  # dead-lettered by the worker, counted here
    out.append(("web", None, T0))
    return out


def fold(recs: list[tuple[str, bytes | None, int]], model: Model = MODEL, batch: int = 5000) -> Fold:
    f = Fold(model)
    f.run(recs, batch=batch)
    return f


def test_any_order_and_duplicates_give_the_same_states() -> None:
    recs = records()
    in_order = fold(recs)
    shuffled = list(recs)
    rng = random.Random(5)
    again = rng.sample(recs, 300)  # redelivered
    shuffled += again
    rng.shuffle(shuffled)
    # small batches: contacts see their events over many steps, merges in between
    other = fold(shuffled, batch=97)
    assert in_order.invalid == 2
    assert other.invalid == 2 + sum(1 for r in again if r[1] is None or r[1] == b"{not json")
    a, b = views(in_order.contacts, MODEL, AS_OF), views(other.contacts, MODEL, AS_OF)
    assert len(a) > 40
    assert a == b
    assert diff(a, b).changed == 0
    assert any(v.stage is not None and v.stage != "subscriber" for v in a.values())
    # the identity links are the same decisions too
    links = {k: decode_link(v).contact_id for k, v in in_order.links.items()}
    assert links and links == {k: decode_link(v).contact_id for k, v in other.links.items()}


def test_a_model_with_doubled_points_moves_scores_and_stages() -> None:
    recs = records()
    doubled = Model.from_dict(doubled_source())
    live = views(fold(recs).contacts, MODEL, AS_OF)
    replayed = views(fold(recs, doubled).contacts, doubled, AS_OF)
    d = diff(live, replayed)
    assert d.both == len(live) == len(replayed)
    assert d.engagement_changed > 0
    assert d.engagement_replay["p90"] is not None and d.engagement_live["p90"] is not None
    assert d.engagement_replay["p90"] > d.engagement_live["p90"]
    assert d.engagement_replay["mean"] is not None and d.engagement_live["mean"] is not None
    assert d.engagement_replay["mean"] > d.engagement_live["mean"]
    assert sum(sum(row.values()) for row in d.stage_moves.values()) == d.stage_changed


def doubled_source() -> dict[str, Any]:
    """The default model with every engagement rule's points (and caps) doubled, renamed (the
    rules of its score groups too)."""
    source = read_model_source()
    grouped = [r for g in source["engagement"].get("groups", []) for r in g["rules"]]
    for rule in [*source["engagement"]["rules"], *grouped]:
        rule["points"] = rule["points"] * 2
        if "cap" in rule:
            rule["cap"]["points"] = rule["cap"]["points"] * 2
    source["name"] = "doubled"
    return source


def test_the_fold_keeps_the_triggers_of_every_step_and_of_the_settle() -> None:
    """Replay's triggers are the fold entry's: a contact walked to its newest event, then sent
    older events, has its walk put off; ``settle`` ticks it, as the worker's clock would, and the
    triggers that walk announces are kept with the others."""
    traits = {"email": "ann@acme.com", "title": "CEO", "industry": "software", "employees": 200}

    def rec(mid: str, ts: int, **fields: Any) -> tuple[str, bytes | None, int]:
        return "web", segment_json(messageId=mid, userId="ann", anonymousId=None, timestamp=iso(ts), **fields), ts

    pricing, plans = {"path": "/pricing"}, {"path": "/pricing/plans"}
    first = [rec("m-1", T0, type="identify", traits=traits), rec("m-5", T0 + 5000, type="page", properties=pricing)]
    late = [
        rec("m-2", T0 + 2000, event="Whitepaper Downloaded"),
        rec("m-3", T0 + 3000, event="Webinar Registered"),
        rec("m-4", T0 + 4000, type="page", properties=plans),
    ]
    f = Fold(MODEL)
    f.feed(first)
    f.feed(late)
    journey = decode_state(f.contacts["ann"]).journey
    assert journey is not None and journey.deferred_since == T0 + 2000  # put off
    walked = len(f.triggers)
    f.settle()
    assert len(f.triggers) > walked  # the walk the settle's tick made announced its changes
    events = [decode(value, channel, ms) for channel, value, ms in [*first, *late] if value is not None]
    once = step(None, "ann", events, MODEL)
    assert sorted(t["id"] for t in f.triggers) == sorted(t["id"] for t in once.triggers)
    assert {t["type"] for t in f.triggers} >= {"stage.changed", "score.threshold_crossed"}
    assert not [t for t in f.triggers if t["type"] == "rfm.segment_changed"]  # no cut given
