"""Score groups in the lifecycle walk: guards on a group's score (``engagement.<group>``) move a
contact at the exact instant the group's score crosses, a group's thresholds fire
``score.threshold_crossed`` with its ``group`` once per crossing, whatever the order, batching or
folding of the events."""

from __future__ import annotations

import copy
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.state import decode_state, encode
from schemas.triggers import Trigger
from scorestream import ContactState, Event, Model, engagement_at
from scorestream.fold import Tick, step
from scorestream.journey import Fired, Journey
from scorestream.scoring import group_scores
from scorestream.triggers import journey_triggers
from tests.factories import DAY, HOUR, MINUTE, T0, make_event

PROPERTY = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def raw_model(**storage: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "name": "groups-walk",
        "engagement": {
            "half_life": "14d",
            "rules": [{"id": "page-view", "match": {"type": "page"}, "points": 1}],
            "groups": [
                {
                    "id": "hardware",
                    "half_life": "30d",
                    "max": 100,
                    "thresholds": [20, 50],
                    "rules": [{"id": "hardware-page", "match": {"type": "page", "path": "/hardware*"}, "points": 10}],
                },
                {
                    "id": "training",
                    "half_life": "7d",
                    "weight": 0,
                    "max": 30,
                    "thresholds": [30],
                    "rules": [{"id": "training-page", "match": {"type": "page", "path": "/training*"}, "points": 8}],
                },
                {
                    "id": "quiet",  # neither thresholds nor guards: the walk does not follow it
                    "rules": [{"id": "blog", "match": {"type": "page", "path": "/blog*"}, "points": 3}],
                },
            ],
        },
        "lifecycle": {
            "stages": ["visitor", "hardware-lead", "trainee"],
            "transitions": [
                {
                    "id": "hardware-interest",
                    "from": "visitor",
                    "to": "hardware-lead",
                    "when": [{"field": "engagement.hardware", "op": "gte", "value": 40}],
                },
                {
                    "id": "hardware-cooled",
                    "from": "hardware-lead",
                    "to": "visitor",
                    "when": [{"field": "engagement.hardware", "op": "lt", "value": 20}],
                },
                {
                    # the training score is clamped to 30: this guard never holds
                    "id": "training-interest",
                    "from": "visitor",
                    "to": "trainee",
                    "when": [{"field": "engagement.training", "op": "gte", "value": 40}],
                },
            ],
        },
        "triggers": {"engagement_thresholds": [25]},
    }
    if storage:
        raw["storage"] = storage
    return raw


MODEL = Model.from_dict(raw_model())


def page(path: str, ts: int, **kw: Any) -> Event:
    return make_event(kind="page", event=None, channel="web", path=path, timestamp_ms=ts, **kw)


def run(batches: list[list[Event]], until: int | None = None, model: Model = MODEL) -> ContactState:
    state: ContactState | None = None
    for batch in batches:
        state, *_ = step(state, "user-1", list(batch), model)
    if until is not None:
        state, *_ = step(state, "user-1", [Tick(until)], model)
    assert state is not None
    return state


def journey(state: ContactState) -> Journey:
    assert state.journey is not None
    return state.journey


def hardware(state: ContactState, at: int, model: Model = MODEL) -> float:
    return next(g.score for g in group_scores(state, model, at) if g.id == "hardware")


def six_pages(start: int = T0) -> list[Event]:
    """Hardware pages an hour apart: the group reaches 20 at the third, 40 at the fifth, 50 at the sixth."""
    return [page("/hardware/x1", start + i * HOUR, message_id=f"hw-{start}-{i}") for i in range(6)]


def test_the_walk_follows_only_the_groups_it_needs() -> None:
    assert MODEL.lifecycle is not None
    assert [g.id for g in MODEL.lifecycle.watched] == ["hardware", "training"]
    assert MODEL.lifecycle.edges["visitor"] == (25 - 5e-7,)  # the overall threshold only
    assert MODEL.lifecycle.group_edges["visitor"]["hardware"] == (20 - 5e-7, 40 - 5e-7, 50 - 5e-7)


def test_a_group_guard_moves_the_contact_at_the_event_that_takes_the_group_to_40() -> None:
    events = six_pages()
    state = run([events])
    entered = journey(state).history[-1]
    assert (entered.stage, entered.rule) == ("hardware-lead", "hardware-interest")
    # four pages (decayed at 30 days) are just under 40; the fifth takes it over
    assert hardware(run([events[:4]]), T0 + 3 * HOUR) < 40 <= hardware(run([events[:5]]), T0 + 4 * HOUR)
    assert entered.entered_ms == T0 + 4 * HOUR and entered.cause == events[4].message_id


def test_a_group_guard_moves_the_contact_back_at_the_exact_instant_the_group_decays_below_20() -> None:
    state = run([six_pages()], until=T0 + 120 * DAY)
    history = journey(state).history
    assert [(e.stage, e.rule) for e in history][-2:] == [
        ("hardware-lead", "hardware-interest"),
        ("visitor", "hardware-cooled"),
    ]
    left = history[-1].entered_ms
    assert left > T0 + 5 * HOUR and history[-1].cause is None  # time, not an event
    assert hardware(state, left) < 20 <= hardware(state, left - 1)
    # the overall score (half-life 14 days, page views and hardware pages) says nothing of it
    assert engagement_at(state, MODEL, left).score < 20


def test_a_clamped_group_never_passes_its_max() -> None:
    events = [page("/training/a", T0 + i * MINUTE, message_id=f"tr-{i}") for i in range(10)]
    state = run([events], until=T0 + 60 * DAY)
    assert journey(state).stage == "visitor"  # training >= 40 cannot hold: the score stops at 30
    training = next(g for g in group_scores(state, MODEL, T0 + 10 * MINUTE) if g.id == "training")
    assert training.score == 30.0
    # its threshold at 30 (the max itself) is reached, then left as the clamped score decays
    crossings = [f for f in journey(state).fired if f.group == "training"]
    assert [(f.name, f.direction) for f in crossings] == [("30", "up"), ("30", "down")]
    assert crossings[0].at_ms == T0 + 3 * MINUTE  # 8 + 8 + 8 + 8 (raw 32, clamped to 30)


def test_group_thresholds_fire_once_per_crossing_with_the_group() -> None:
    events = six_pages()
    state = run([events], until=T0 + 120 * DAY)
    fired = [f for f in journey(state).fired if f.kind == "crossing"]
    mine = [(f.name, f.direction) for f in fired if f.group == "hardware"]
    assert mine == [("20", "up"), ("50", "up"), ("50", "down"), ("20", "down")]
    ups = {f.name: f for f in fired if f.group == "hardware" and f.direction == "up"}
    assert ups["20"].at_ms == T0 + 2 * HOUR and ups["20"].cause == events[2].message_id
    assert ups["50"].at_ms == T0 + 5 * HOUR and ups["50"].cause == events[5].message_id
    downs = {f.name: f for f in fired if f.group == "hardware" and f.direction == "down"}
    for name, f in downs.items():
        assert hardware(state, f.at_ms) < float(name) <= hardware(state, f.at_ms - 1)
    # the overall threshold (25) fires with no group
    assert [(f.name, f.direction, f.group) for f in fired if f.group is None] == [
        ("25", "up", None),
        ("25", "down", None),
    ]


def test_group_crossings_become_triggers_naming_the_group() -> None:
    state = run([six_pages()], until=T0 + 120 * DAY)
    assert MODEL.lifecycle is not None
    triggers = journey_triggers(None, journey(state), "user-1", MODEL, MODEL.lifecycle)
    crossed = [t for t in triggers if t["type"] == "score.threshold_crossed"]
    grouped = [t for t in crossed if "group" in t]
    assert [(t["group"], t["after"]["threshold"], t["after"]["above"]) for t in grouped] == [
        ("hardware", 20.0, True),
        ("hardware", 50.0, True),
        ("hardware", 50.0, False),
        ("hardware", 20.0, False),
    ]
    assert {t["after"]["score"] for t in grouped} == {"engagement.hardware"}
    assert grouped[0]["rule"] == "engagement.hardware-up-20"
    overall = [t for t in crossed if "group" not in t]
    assert [t["rule"] for t in overall] == ["engagement-up-25", "engagement-down-25"]
    assert len({t["id"] for t in crossed}) == len(crossed)
    for t in triggers:
        Trigger.model_validate(t)
    # walking again adds nothing new
    again = run([six_pages()], until=T0 + 120 * DAY)
    assert journey_triggers(journey(state), journey(again), "user-1", MODEL, MODEL.lifecycle) == []


_paths = st.sampled_from(["/hardware/a", "/hardware/b", "/training/c", "/blog/d", "/"])
_times = st.integers(min_value=0, max_value=20 * 24).map(lambda h: T0 + h * HOUR)


@st.composite
def histories(draw: st.DrawFn) -> list[Event]:
    drawn = draw(st.lists(st.tuples(_paths, _times), min_size=1, max_size=30))
    events = [page(p, ts, message_id=f"m{i:03d}") for i, (p, ts) in enumerate(drawn)]
    return events + draw(st.lists(st.sampled_from(events), max_size=4))  # a few re-sent


def observable(state: ContactState) -> tuple[Any, ...]:
    j = journey(state)
    return j.stage, j.since_ms, j.history, j.fired


@PROPERTY
@given(events=histories(), data=st.data())
def test_the_journey_with_groups_does_not_depend_on_order_batching_or_duplicates(
    events: list[Event], data: st.DataObject
) -> None:
    until = T0 + 90 * DAY
    whole = run([events], until=until)
    shuffled = data.draw(st.permutations(events))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(events)), max_size=5)))
    batches = [shuffled[a:b] for a, b in zip([0, *cuts], [*cuts, len(events)], strict=True)]
    assert observable(run([b for b in batches if b], until=until)) == observable(whole)
    one_by_one = run([[e] for e in sorted(events, key=lambda e: e.timestamp_ms)], until=until)
    assert observable(one_by_one) == observable(whole)


@PROPERTY
@given(events=histories())
def test_folding_old_hits_keeps_the_journey_with_groups(events: list[Event]) -> None:
    """Hits folded into the base (and the hardware group's second base at 30 days) walk the same
    journey from the anchor as kept hits."""
    folding = Model.from_dict(raw_model(max_hits_per_contact=8, fold_after="2d"))
    until = T0 + 90 * DAY
    kept = run([[e] for e in sorted(events, key=lambda e: (e.timestamp_ms, e.message_id))], until=until)
    folded = run(
        [[e] for e in sorted(events, key=lambda e: (e.timestamp_ms, e.message_id))], until=until, model=folding
    )
    assert observable(folded) == observable(kept)


def test_a_walk_resumed_from_a_kept_position_restores_the_group_scores() -> None:
    later = [page("/hardware/y", T0 + 10 * DAY + i * HOUR, message_id=f"late-{i}") for i in range(3)]
    events = [*six_pages(), *later]
    whole = run([events])
    resumed = run([events[:5], events[5:7], events[7:]])
    assert observable(resumed) == observable(whole)
    cursor = journey(whole).cursor
    assert cursor is not None and set(cursor.group_ref) == {"hardware", "training"}
    assert cursor.group_above == {"hardware": [20.0, 50.0]}
    # the state round-trips through its encoding with the group positions
    decoded = decode_state(encode(copy.deepcopy(whole)))
    assert decoded.journey == whole.journey
    assert decoded.journey is not None
    assert [f for f in decoded.journey.fired if f.group == "hardware"][:2] == [
        Fired("crossing", "20", T0 + 2 * HOUR, "up", "hw-1790000000000-2", "hardware"),
        Fired("crossing", "50", T0 + 5 * HOUR, "up", "hw-1790000000000-5", "hardware"),
    ]
