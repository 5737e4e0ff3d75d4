"""Manual adjustments in the core (:mod:`scorestream.adjustments`): an adjustment is a hit earning its
own points, decays, is explained, counts in its score group; a revert zeroes it in any order, after
its hit folded into the base too, and through merges."""

from __future__ import annotations

import copy
import math
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scorestream import ContactState, Event, Model, absorb, apply_events, engagement_at
from scorestream.adjustments import ADJUSTED, CHANNEL, MAX_KEPT, REVERTED, Adjusted, Reverted, read
from scorestream.errors import ModelError
from scorestream.fold import step
from scorestream.scoring import group_scores
from scorestream.view import EarnedPoints, engagement_of_view, groups_of_view, view_of
from tests.factories import DAY, DEFAULT_MODEL, HOUR, MINUTE, T0

PROPERTY = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
HL = 14 * DAY
PRODUCT_HL = 30 * DAY


def raw_model(**storage: Any) -> dict[str, Any]:
    """Page views (1 point, capped), and a group ``product`` with its own half-life and weight 2."""
    raw: dict[str, Any] = {
        "name": "adjust",
        "engagement": {
            "half_life": "14d",
            "rules": [
                {"id": "page-view", "match": {"type": "page"}, "points": 1, "cap": {"points": 3, "window": "1d"}}
            ],
            "groups": [
                {
                    "id": "product",
                    "half_life": "30d",
                    "weight": 2,
                    "rules": [{"id": "pricing", "match": {"type": "page", "path": "/pricing*"}, "points": 10}],
                }
            ],
        },
    }
    if storage:
        raw["storage"] = storage
    return raw


MODEL = Model.from_dict(raw_model())


def adjusted(aid: str, points: float, ts: int = T0, group: str | None = None, **props: Any) -> Event:
    properties = {"adjustment_id": aid, "points": points, "group": group, "reason": "met at a trade fair", "by": "ann"}
    properties.update(props)
    return Event(
        message_id=aid,
        kind="track",
        event=ADJUSTED,
        channel=CHANNEL,
        timestamp_ms=ts,
        user_id="user-1",
        properties=properties,
    )


def reverted(aid: str, ts: int, mid: str | None = None, by: str = "bob") -> Event:
    return Event(
        message_id=mid or f"revert-{aid}-{ts}",
        kind="track",
        event=REVERTED,
        channel=CHANNEL,
        timestamp_ms=ts,
        user_id="user-1",
        properties={"adjustment_id": aid, "by": by},
    )


def page(i: int, ts: int, path: str = "/") -> Event:
    return Event(message_id=f"p{i:04d}", kind="page", channel="web", timestamp_ms=ts, user_id="user-1", path=path)


def fold(events: list[Event], model: Model = MODEL, contact_id: str = "user-1") -> ContactState:
    return apply_events(None, contact_id, events, model)


def score(state: ContactState, at: int, model: Model = MODEL) -> float:
    return engagement_at(state, model, at).score


# --- reading the events -------------------------------------------------------------------------


def test_an_adjustment_and_a_revert_are_read_from_the_crm_channel_only() -> None:
    assert read(adjusted("a-1", 30, group="product")) == Adjusted(
        "a-1", T0, 30.0, "product", "met at a trade fair", "ann"
    )
    found = read(reverted("a-1", T0 + HOUR, mid="r-1"))
    assert isinstance(found, Reverted) and found.adjustment_id == "a-1" and found.revert.by == "bob"
    on_the_web = Event(
        message_id="w-1", kind="track", event=ADJUSTED, channel="web", timestamp_ms=T0, properties={"points": 1000}
    )
    assert read(on_the_web) is None  # a website cannot adjust its visitors' scores
    assert fold([on_the_web]).adjustments == {}


@pytest.mark.parametrize(
    "props",
    [
        {"points": math.inf},
        {"points": 1000.5},
        {"points": "10"},
        {"points": True},
        {"reason": ""},
        {"reason": "x" * 501},
        {"by": 3},
        {"group": 7},
        {"adjustment_id": "another-id"},
    ],
)
def test_an_adjustment_out_of_contract_is_no_adjustment(props: dict[str, Any]) -> None:
    event = adjusted("a-1", 10)
    event = Event(
        **{
            **{f: getattr(event, f) for f in ("message_id", "kind", "event", "channel", "timestamp_ms")},
            "properties": {**event.properties, **props},
        }
    )
    assert read(event) is None
    assert score(fold([event]), T0) == 0.0


# --- points, decay, explanation, groups ---------------------------------------------------------


def test_an_adjustment_earns_its_points_decays_and_is_explained() -> None:
    state = fold([page(1, T0), adjusted("a-1", 30, ts=T0 + HOUR)])
    at = T0 + HOUR + HL
    assert score(state, at) == pytest.approx(decay_of(1, T0, at) + 15, abs=1e-6)
    top = {c.rule_id: c for c in engagement_at(state, MODEL, at).top}
    assert top["adjustment"].points == pytest.approx(15, abs=1e-6)
    assert top["adjustment"].description == "Manual adjustment"
    assert state.adjustments["a-1"].reason == "met at a trade fair"


def decay_of(points: float, ts: int, at: int, half_life: int = HL) -> float:
    return points * math.pow(2.0, -(at - ts) / half_life)


def test_a_negative_adjustment_lowers_the_score() -> None:
    state = fold([page(1, T0), page(2, T0 + HOUR, "/pricing"), adjusted("a-1", -50, ts=T0 + 2 * HOUR)])
    assert score(state, T0 + 2 * HOUR) < 0


def test_a_group_adjustment_counts_in_its_group_at_its_half_life_and_overall_times_its_weight() -> None:
    state = fold([adjusted("a-1", 20, ts=T0, group="product")])
    at = T0 + PRODUCT_HL
    product = {g.id: g for g in group_scores(state, MODEL, at)}["product"]
    assert product.score == pytest.approx(10, abs=1e-6)  # 20 halved at the group's 30 days
    assert product.top[0].rule_id == "adjustment:product"
    assert score(state, T0 + HL) == pytest.approx(20, abs=1e-6)  # 2 x 20, halved at 14 days


def test_an_adjustment_for_a_group_the_model_does_not_declare_counts_overall_only() -> None:
    state = fold([adjusted("a-1", 20, ts=T0, group="hardware")])
    assert state.hits[0].rules == ("adjustment",)
    assert score(state, T0) == 20
    assert all(g.score == 0 for g in group_scores(state, MODEL, T0))
    assert state.adjustments["a-1"].group == "hardware"  # the record keeps what was asked


def test_a_model_may_not_name_a_rule_like_an_adjustment() -> None:
    raw = raw_model()
    raw["engagement"]["rules"].append({"id": "adjustment:x", "match": {"type": "page"}, "points": 1})
    with pytest.raises(ModelError, match="reserved"):
        Model.from_dict(raw)


def test_the_same_adjustment_twice_counts_once() -> None:
    once = fold([adjusted("a-1", 30)])
    twice = fold([adjusted("a-1", 30), adjusted("a-1", 30)])
    again = apply_events(copy.deepcopy(once), "user-1", [adjusted("a-1", 30)], MODEL)
    assert score(twice, T0) == score(again, T0) == score(once, T0) == 30
    assert len(again.hits) == 1


# --- reverts ------------------------------------------------------------------------------------


def test_a_revert_zeroes_its_adjustment_whichever_comes_first() -> None:
    events = [page(1, T0), adjusted("a-1", 30, ts=T0 + HOUR), adjusted("a-2", 5, ts=T0 + 2 * HOUR)]
    after = fold([*events, reverted("a-1", T0 + 3 * HOUR)])
    before = fold([reverted("a-1", T0 + 3 * HOUR), *events])
    split = apply_events(fold([reverted("a-1", T0 + 3 * HOUR)]), "user-1", events, MODEL)
    expected = decay_of(1, T0, T0 + 5 * HOUR) + decay_of(5, T0 + 2 * HOUR, T0 + 5 * HOUR)
    for state in (after, before, split):
        assert score(state, T0 + 5 * HOUR) == pytest.approx(expected, abs=1e-6)
        revert = state.adjustments["a-1"].reverted
        assert revert is not None and revert.by == "bob"
    assert after.adjustments == before.adjustments == split.adjustments
    assert after.hits == before.hits


def test_the_earliest_of_two_reverts_is_kept_in_any_order() -> None:
    events = [adjusted("a-1", 30), reverted("a-1", T0 + 2 * HOUR, by="late"), reverted("a-1", T0 + HOUR, by="early")]
    one = fold(events)
    other = fold(events[::-1])
    assert one.adjustments == other.adjustments
    assert one.adjustments["a-1"].reverted.by == "early"  # type: ignore[union-attr]


def folding_model() -> Model:
    return Model.from_dict(raw_model(max_hits_per_contact=16, fold_after="30d"))


def test_a_revert_after_its_hit_folded_takes_its_points_out_of_the_base() -> None:
    model = folding_model()
    adjustment = adjusted("a-1", 40, ts=T0 + HOUR, group="product")
    pages = [page(i, T0 + 2 * HOUR + i * HOUR, "/pricing" if i % 3 == 0 else "/") for i in range(40)]
    state = fold([page(9999, T0), adjustment, *pages], model)
    assert all(h.mid != "a-1" for h in state.hits) and state.adjustments["a-1"].folded == 40
    assert "adjustment:product" in state.base and "adjustment:product" in state.group_base
    state = apply_events(state, "user-1", [reverted("a-1", T0 + 50 * HOUR)], model)
    never = fold([page(9999, T0), *pages], model)
    at = T0 + 60 * HOUR
    assert score(state, at, model) == pytest.approx(score(never, at, model), abs=1e-9)
    assert "adjustment:product" not in state.base and "adjustment:product" not in state.group_base
    assert [g.score for g in group_scores(state, model, at)] == pytest.approx(
        [g.score for g in group_scores(never, model, at)], abs=1e-9
    )
    # a second revert changes nothing
    again = apply_events(copy.deepcopy(state), "user-1", [reverted("a-1", T0 + 55 * HOUR, mid="r-2")], model)
    assert again.base == state.base


def test_a_revert_before_its_adjustment_folds_leaves_nothing_in_the_base() -> None:
    model = folding_model()
    pages = [page(i, T0 + 2 * HOUR + i * HOUR) for i in range(40)]
    state = fold([reverted("a-1", T0 + 50 * HOUR), adjusted("a-1", 40, ts=T0 + HOUR), *pages], model)
    assert state.adjustments["a-1"].folded == 0.0
    assert "adjustment" not in state.base or state.base["adjustment"] == 0.0


# --- order independence, duplicates, batching (property) -----------------------------------------

_times = st.integers(min_value=0, max_value=4 * 24 * 4).map(lambda q: T0 + q * 15 * MINUTE)
_items = st.lists(
    st.tuples(
        st.sampled_from(["page", "pricing", "adjust", "adjust-product", "adjust-other", "revert"]),
        _times,
        st.integers(min_value=0, max_value=5),
        st.integers(min_value=-100, max_value=100),
    ),
    min_size=1,
    max_size=25,
)


def _events(items: list[tuple[str, int, int, int]]) -> list[Event]:
    out: list[Event] = []
    for i, (kind, ts, n, points) in enumerate(items):
        if kind in ("page", "pricing"):
            out.append(page(i, ts, "/pricing" if kind == "pricing" else "/"))
        elif kind == "revert":
            out.append(reverted(f"a-{n}", ts, mid=f"r-{i}"))
        else:
            group = {"adjust": None, "adjust-product": "product", "adjust-other": "hardware"}[kind]
            out.append(adjusted(f"a-{n}", points, ts=ts, group=group))  # a later one with an id seen: a duplicate
    # the same adjustment id must carry the same content (one message): keep the first of each
    first: dict[str, Event] = {}
    return [e for e in out if e.event != ADJUSTED or first.setdefault(e.message_id, e) is e]


def _observed(state: ContactState, model: Model = MODEL) -> tuple[Any, ...]:
    times = (T0, T0 + 2 * DAY, T0 + 5 * DAY, T0 + 40 * DAY)
    return (
        [engagement_at(state, model, t) for t in times],
        [group_scores(state, model, t) for t in times],
        state.hits,
        state.adjustments,
    )


@PROPERTY
@given(items=_items, order=st.randoms(use_true_random=False), cuts=st.lists(st.integers(0, 30), max_size=4))
def test_any_order_any_batching_and_duplicates_give_the_same_state(
    items: list[tuple[str, int, int, int]], order: Any, cuts: list[int]
) -> None:
    events = _events(items)
    reference = fold(events)
    shuffled = [*events, *order.sample(events, min(3, len(events)))]
    order.shuffle(shuffled)
    state: ContactState | None = None
    bounds = sorted({c % (len(shuffled) + 1) for c in cuts})
    for a, b in zip([0, *bounds], [*bounds, len(shuffled)], strict=True):
        state = apply_events(state, "user-1", shuffled[a:b], MODEL)
    assert state is not None
    assert _observed(state) == _observed(reference)
    # a reverted adjustment earns nothing: the score is that of the events without it
    gone = {e.properties["adjustment_id"] for e in events if e.event == REVERTED}
    kept = [e for e in events if not (e.event == ADJUSTED and e.message_id in gone)]
    for t in (T0 + 5 * DAY, T0 + 40 * DAY):
        assert score(reference, t) == pytest.approx(score(fold(kept), t), abs=1e-6)


@PROPERTY
@given(items=_items, cut=st.integers(0, 30))
def test_the_view_follows_adjustments_and_reverts_batch_by_batch(
    items: list[tuple[str, int, int, int]], cut: int
) -> None:
    events = sorted(_events(items), key=lambda e: e.order_key)
    earned = EarnedPoints()  # kept across the contact's states, as the worker keeps it
    state: ContactState | None = None
    for batch in (events[: cut % (len(events) + 1)], events[cut % (len(events) + 1) :]):
        state = apply_events(state, "user-1", batch, MODEL)
        view = view_of(state, MODEL, earned)
        at = T0 + 6 * DAY
        assert engagement_of_view(view, MODEL, at).score == pytest.approx(score(state, at), abs=1e-6)
        expected = [g.score for g in group_scores(state, MODEL, at)]
        assert [g.score for g in groups_of_view(view, MODEL, at)] == pytest.approx(expected, abs=1e-6)
        assert view.adjustments == state.adjustments


# --- merges -------------------------------------------------------------------------------------


def test_a_merge_of_two_contacts_each_with_adjustments_keeps_both() -> None:
    anon = apply_events(None, "anonymous:x", [adjusted("a-1", 10, ts=T0)], MODEL)
    user = fold([adjusted("a-2", 20, ts=T0 + HOUR, group="product"), reverted("a-3", T0 + 2 * HOUR)])
    merged = absorb(user, anon, MODEL)
    assert set(merged.adjustments) == {"a-1", "a-2", "a-3"}
    both = fold([adjusted("a-1", 10, ts=T0), adjusted("a-2", 20, ts=T0 + HOUR, group="product")])
    assert score(merged, T0 + DAY) == pytest.approx(score(both, T0 + DAY), abs=1e-9)
    # the revert one side knew meets its adjustment from the other side
    later = absorb(merged, apply_events(None, "anonymous:y", [adjusted("a-3", 50, ts=T0)], MODEL), MODEL)
    assert later.adjustments["a-3"].reverted is not None
    assert score(later, T0 + DAY) == pytest.approx(score(both, T0 + DAY), abs=1e-9)


@PROPERTY
@given(items=_items, sides=st.lists(st.booleans(), min_size=25, max_size=25))
def test_a_merge_gives_what_one_contact_with_every_event_has(
    items: list[tuple[str, int, int, int]], sides: list[bool]
) -> None:
    """Adjustments and reverts split between a visitor and a user in any way: merged, the user has
    the scores and records of one contact that saw them all (a revert one side knew meets its
    adjustment from the other), and the same source absorbed again changes nothing."""
    events = _events(items)
    mine = [e for e, side in zip(events, sides, strict=False) if side]
    theirs = [e for e, side in zip(events, sides, strict=False) if not side]
    merged = absorb(fold(mine), apply_events(None, "anonymous:x", theirs, MODEL), MODEL)
    everything = fold(events)
    assert [engagement_at(merged, MODEL, t) for t in (T0, T0 + 5 * DAY)] == [
        engagement_at(everything, MODEL, t) for t in (T0, T0 + 5 * DAY)
    ]
    assert [group_scores(merged, MODEL, T0 + 5 * DAY)] == [group_scores(everything, MODEL, T0 + 5 * DAY)]
    assert merged.adjustments == everything.adjustments
    again = absorb(copy.deepcopy(merged), apply_events(None, "anonymous:x", theirs, MODEL), MODEL)
    assert again.adjustments == merged.adjustments and again.hits == merged.hits


def test_a_merge_brings_a_folded_adjustment_the_target_knows_reverted_out_of_the_base() -> None:
    model = folding_model()
    pages = [page(i, T0 + 2 * HOUR + i * HOUR) for i in range(40)]
    source = apply_events(None, "anonymous:x", [adjusted("a-1", 40, ts=T0 + HOUR), *pages], model)
    assert source.adjustments["a-1"].folded == 40
    target = fold([reverted("a-1", T0 + 50 * HOUR)], model)
    merged = absorb(target, source, model)
    never = apply_events(None, "anonymous:x", pages, model)
    at = T0 + 60 * HOUR
    assert score(merged, at, model) == pytest.approx(score(never, at, model), abs=1e-9)
    # the same source absorbed again (a redelivered merge) takes nothing out twice
    again = absorb(copy.deepcopy(merged), source, model)
    assert score(again, at, model) == pytest.approx(score(merged, at, model), abs=1e-9)


# --- the walk, bounds ---------------------------------------------------------------------------


def test_a_revert_walks_the_lifecycle_again() -> None:
    model = DEFAULT_MODEL  # a subscriber becomes a lead at 10 points of engagement
    events = [page(1, T0), adjusted("a-1", 50, ts=T0 + HOUR), page(2, T0 + 2 * HOUR)]
    first = step(None, "user-1", events, model).state
    assert first is not None and first.journey is not None and first.journey.stage == "lead"
    revert = reverted("a-1", T0 + 3 * HOUR)
    stepped = step(first, "user-1", [revert], model).state
    fresh = step(None, "user-1", [*events, revert], model).state
    assert stepped is not None and fresh is not None and stepped.journey is not None and fresh.journey is not None
    assert fresh.journey.stage == "subscriber"  # the adjustment never counted
    assert stepped.journey.history == fresh.journey.history
    assert stepped.journey.stage == fresh.journey.stage


def test_a_walk_resumed_after_earlier_batches_counts_a_new_adjustment() -> None:
    model = DEFAULT_MODEL  # a subscriber becomes a lead at 10 points of engagement
    history = [page(i, T0 + i * HOUR) for i in range(6)]
    state = None
    for event in history:  # batch by batch: each walk resumes from the previous one's position
        state = step(state, "user-1", [event], model).state
    later = adjusted("a-1", 50, ts=T0 + 7 * HOUR)
    stepped = step(state, "user-1", [later], model).state
    fresh = step(None, "user-1", [*history, later], model).state
    assert stepped is not None and fresh is not None and stepped.journey is not None and fresh.journey is not None
    assert fresh.journey.stage == "lead"
    assert stepped.journey.history == fresh.journey.history


def test_records_beyond_the_bound_are_the_oldest_folded_or_pending_ones() -> None:
    reverts = [reverted(f"x-{i:03d}", T0 + i * MINUTE) for i in range(MAX_KEPT + 20)]
    state = fold([adjusted("a-1", 10, ts=T0), *reverts])
    assert len(state.adjustments) == MAX_KEPT + 1  # the live one is always kept
    assert "a-1" in state.adjustments and "x-000" not in state.adjustments
    assert score(state, T0) == 10
