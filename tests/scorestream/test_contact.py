"""The per-contact fold: order independence, idempotence, decay, caps, once-only, folding, merges."""

from __future__ import annotations

import copy
import dataclasses
import itertools
import math
from collections.abc import Sequence
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scorestream import ContactState, Event, Model, absorb, apply_events, engagement_at, fit_of, grade_of
from scorestream.contact import can_merge_into
from scorestream.fold import Absorb, Outgoing, step
from scorestream.identity import MergeInto
from scorestream.scoring import EngagementView, FitView, grade
from scorestream.state import decay, effective_points, new_contact
from tests.factories import DAY, DEFAULT_MODEL, HOUR, MINUTE, T0, make_event, model_from

PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# A model whose rules exercise every mechanism: caps (positive and negative), once-only, channels,
# paths and where-predicates; fit rules over identify traits.
MODEL = model_from(
    [
        {"id": "page-view", "match": {"type": "page"}, "points": 1, "cap": {"points": 3, "window": "1d"}},
        {
            "id": "pricing",
            "match": {"type": "page", "path": "/pricing*"},
            "points": 10,
            "cap": {"points": 20, "window": "1d"},
        },
        {
            "id": "careers",
            "match": {"type": "page", "path": "/careers*"},
            "points": -10,
            "cap": {"points": 20, "window": "7d"},
        },
        {"id": "demo", "match": {"type": "track", "event": "Demo Requested"}, "points": 40, "once": True},
        {"id": "signed-up", "match": {"type": "track", "event": "Signed Up"}, "points": 25, "once": True},
        {
            "id": "opened",
            "match": {"type": "track", "event": "Email Opened", "channel": "email"},
            "points": 2,
            "cap": {"points": 6, "window": "7d"},
        },
        {"id": "unsubscribed", "match": {"type": "track", "event": "Unsubscribed"}, "points": -25},
        {
            "id": "gated",
            "match": {
                "type": "track",
                "event": "Whitepaper Downloaded",
                "where": [{"field": "gated", "op": "eq", "value": True}],
            },
            "points": 15,
        },
        {
            "id": "vp-identified",
            "match": {"type": "identify", "where": [{"field": "title", "op": "eq", "value": "VP"}]},
            "points": 5,
        },
    ],
    half_life="14d",
    fit_rules=[
        {"id": "vp", "points": 25, "when": [{"field": "title", "op": "eq", "value": "VP"}]},
        {"id": "software", "points": 20, "when": [{"field": "industry", "op": "in", "value": ["software", "saas"]}]},
        {"id": "mid", "points": 15, "when": [{"field": "employees", "op": "gte", "value": 50}]},
        {"id": "has-email", "points": 5, "when": [{"field": "email", "op": "exists"}]},
    ],
)

NOW = T0 + 5 * DAY
HALF_LIFE = MODEL.half_life_ms

# --- hypothesis strategies -----------------------------------------------------------------------

_times = st.integers(min_value=0, max_value=4 * 24 * 4).map(lambda q: T0 + q * 15 * MINUTE)
_anon = st.sampled_from([None, "anon-a", "anon-b", "anon-c"])
_pages: st.SearchStrategy[dict[str, Any]] = st.builds(
    dict,
    kind=st.just("page"),
    channel=st.just("web"),
    path=st.sampled_from(["/", "/pricing", "/pricing/teams", "/careers", "/careers/eng", "/blog"]),
    name=st.sampled_from([None, "Page"]),
)
_tracks: st.SearchStrategy[dict[str, Any]] = st.builds(
    dict,
    kind=st.just("track"),
    event=st.sampled_from(
        ["Demo Requested", "Signed Up", "Email Opened", "Unsubscribed", "Whitepaper Downloaded", "Nothing Happened"]
    ),
    channel=st.sampled_from(["web", "email", "store"]),
    properties=st.sampled_from([{}, {"gated": True}, {"gated": False}]),
)
_identifies: st.SearchStrategy[dict[str, Any]] = st.builds(
    dict,
    kind=st.just("identify"),
    event=st.none(),
    channel=st.sampled_from(["web", "email"]),
    traits=st.dictionaries(
        st.sampled_from(["title", "industry", "employees", "email"]),
        st.sampled_from(["VP", "Engineer", "software", "retail", 10, 500, "Ada@Example.COM", "bob@example.com"]),
        max_size=3,
    ),
)
_fields = st.tuples(st.one_of(_pages, _tracks, _identifies), _times, _anon)


@st.composite
def event_lists(draw: st.DrawFn, max_size: int = 25) -> list[Event]:
    """Distinct events (unique message ids) plus a few exact re-sends of some of them."""
    drawn = draw(st.lists(_fields, min_size=1, max_size=max_size))
    events = [
        Event(message_id=f"m{i:03d}", timestamp_ms=ts, anonymous_id=anon, user_id="user-1", **fields)
        for i, (fields, ts, anon) in enumerate(drawn)
    ]
    resent = draw(st.lists(st.sampled_from(events), max_size=5))
    return events + resent


def split(events: Sequence[Event], cuts: Sequence[int]) -> list[list[Event]]:
    points = sorted({c % (len(events) + 1) for c in cuts})
    bounds = [0, *points, len(events)]
    return [list(events[a:b]) for a, b in itertools.pairwise(bounds)]


def fold(events: Sequence[Event], model: Model = MODEL, contact_id: str = "user-1") -> ContactState:
    return apply_events(None, contact_id, events, model)


def fold_batches(batches: Sequence[Sequence[Event]], model: Model = MODEL, contact_id: str = "user-1") -> ContactState:
    state: ContactState | None = None
    for batch in batches:
        state = apply_events(state, contact_id, batch, model)
    assert state is not None
    return state


def snapshot(state: ContactState, model: Model = MODEL) -> tuple[Any, ...]:
    """Everything observable about a contact, for comparing two folds."""
    views: list[EngagementView] = [engagement_at(state, model, t) for t in (T0, T0 + 2 * DAY, NOW, NOW + 30 * DAY)]
    fit: FitView = fit_of(state, model)
    return (
        [(v.score, v.band, v.top) for v in views],
        (fit.score, fit.grade, fit.top),
        state.traits,
        state.trait_at,
        state.email,
        state.hits,
        state.base,
        state.anonymous_ids,
        state.first_seen_ms,
        state.last_seen_ms,
        state.groups,
    )


def close(a: float, b: float) -> bool:
    # Views round scores to 6 decimal places, hence the absolute tolerance next to rel_tol=1e-9.
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-6)


def roughly(a: float, b: float) -> bool:
    # For models with a half-life of 100000 days: decay over a few days is below 1e-4 relative.
    return math.isclose(a, b, rel_tol=1e-4)


def score(state: ContactState, now: int, model: Model = MODEL) -> float:
    return engagement_at(state, model, now).score


# --- order independence and idempotence ----------------------------------------------------------


@PROPERTY
@given(data=st.data(), events=event_lists())
def test_any_permutation_gives_the_same_state(data: st.DataObject, events: list[Event]) -> None:
    expected = fold(events)
    shuffled = data.draw(st.permutations(events))
    actual = fold(shuffled)
    assert snapshot(actual) == snapshot(expected)
    assert actual == expected


@PROPERTY
@given(data=st.data(), events=event_lists())
def test_batches_in_any_order_give_the_same_state(data: st.DataObject, events: list[Event]) -> None:
    expected = fold(events)
    cuts = data.draw(st.lists(st.integers(min_value=0, max_value=1000), max_size=4))
    batches = split(data.draw(st.permutations(events)), cuts)
    batch_order = data.draw(st.permutations(batches))
    actual = fold_batches(batch_order)
    assert snapshot(actual) == snapshot(expected)
    one_by_one = fold_batches([[e] for e in reversed(events)])
    assert snapshot(one_by_one) == snapshot(expected)


@PROPERTY
@given(events=event_lists())
def test_applying_twice_is_idempotent(events: list[Event]) -> None:
    once = fold(events)
    twice = apply_events(copy.deepcopy(once), "user-1", events, MODEL)
    assert snapshot(twice) == snapshot(once)
    assert twice == once
    doubled = fold(events + events)
    assert doubled == once


def test_resent_message_id_counts_once() -> None:
    event = make_event(event="Demo Requested", channel="web")
    state = fold([event])
    again = apply_events(state, "user-1", [event, event], MODEL)
    assert len(again.hits) == 1
    assert score(again, event.timestamp_ms) == 40
    # dedupe is by message id, whatever the event time in the re-send
    late_copy = make_event(message_id=event.message_id, event="Email Opened", timestamp_ms=T0 + HOUR)
    assert len(apply_events(again, "user-1", [late_copy], MODEL).hits) == 1


def test_events_that_match_nothing_are_not_hits_but_update_the_contact() -> None:
    event = make_event(event="Nothing Happened", anonymous_id="anon-z", timestamp_ms=T0 - DAY)
    state = fold([make_event(event="Email Opened"), event])
    assert len(state.hits) == 1
    assert state.anonymous_ids == ["anon-z"]
    assert state.first_seen_ms == T0 - DAY
    assert state.last_seen_ms == T0


# --- decay ---------------------------------------------------------------------------------------


def test_single_event_decays_by_half_life() -> None:
    model = model_from([{"id": "r", "match": {"type": "track"}, "points": 8}], half_life="10d")
    state = fold([make_event(timestamp_ms=T0)], model)
    assert score(state, T0, model) == 8
    assert score(state, T0 + 10 * DAY, model) == 4
    assert score(state, T0 + 20 * DAY, model) == 2
    assert score(state, T0 + 5 * DAY, model) == round(8 / math.sqrt(2), 6)
    # an event stamped after "now" (clock skew) counts undecayed, it does not grow
    assert score(state, T0 - DAY, model) == 8


def test_negative_event_decays_towards_zero() -> None:
    model = model_from([{"id": "r", "match": {"type": "track"}, "points": -6}], half_life="1d")
    state = fold([make_event(timestamp_ms=T0)], model)
    assert score(state, T0, model) == -6
    assert score(state, T0 + DAY, model) == -3


@PROPERTY
@given(
    events=event_lists(),
    gap1=st.integers(min_value=0, max_value=60 * DAY),
    gap2=st.integers(min_value=0, max_value=60 * DAY),
)
def test_decay_composes(events: list[Event], gap1: int, gap2: int) -> None:
    state = fold(events)
    t1 = max(e.timestamp_ms for e in events) + gap1
    t2 = t1 + gap2
    direct = score(state, t2)
    via_t1 = score(state, t1) * math.pow(2.0, -(t2 - t1) / HALF_LIFE)
    assert close(direct, via_t1)


def test_decay_composes_precisely_for_large_scores() -> None:
    model = model_from([{"id": "r", "match": {"type": "track"}, "points": 1_000_000}], half_life="3d")
    state = fold([make_event(timestamp_ms=T0 + i * 7 * HOUR) for i in range(10)], model)
    t1, t2 = T0 + 4 * DAY, T0 + 11 * DAY + 5 * HOUR
    direct = score(state, t2, model)
    assert math.isclose(direct, score(state, t1, model) * math.pow(2.0, -(t2 - t1) / model.half_life_ms), rel_tol=1e-9)
    expected = math.fsum(decay(1_000_000, T0 + i * 7 * HOUR, t2, model.half_life_ms) for i in range(10))
    assert math.isclose(direct, expected, rel_tol=1e-9)


# --- caps ----------------------------------------------------------------------------------------

CAPPED = model_from(
    [{"id": "r", "match": {"type": "track"}, "points": 10, "cap": {"points": 20, "window": "1d"}}],
    half_life="100000d",
)


def test_cap_limits_points_within_the_window() -> None:
    events = [make_event(timestamp_ms=T0 + h * HOUR) for h in (0, 3, 20)]
    state = fold(events, CAPPED)
    last = T0 + 20 * HOUR
    assert roughly(score(state, last, CAPPED), 20)
    assert [v for hit in effective_points(state, CAPPED) for _, v in hit] == [10, 10, 0]
    more = apply_events(state, "user-1", [make_event(timestamp_ms=T0 + 2 * DAY)], CAPPED)
    assert roughly(score(more, T0 + 2 * DAY, CAPPED), 30)


def test_cap_exact_decay() -> None:
    model = model_from(
        [{"id": "r", "match": {"type": "track"}, "points": 10, "cap": {"points": 20, "window": "1d"}}], half_life="14d"
    )
    state = fold([make_event(timestamp_ms=T0 + h * HOUR) for h in (0, 3, 20)], model)
    last = T0 + 20 * HOUR
    expected = decay(10, T0, last, model.half_life_ms) + decay(10, T0 + 3 * HOUR, last, model.half_life_ms)
    assert close(score(state, last, model), expected)


def test_cap_window_is_trailing() -> None:
    # 10 at t, 10 at t+12h, then at t+24h the first event has left the window: room for 10 more.
    events = [make_event(timestamp_ms=T0 + h * HOUR) for h in (0, 12, 24, 30)]
    state = fold(events, CAPPED)
    assert [v for hit in effective_points(state, CAPPED) for _, v in hit] == [10, 10, 10, 0]


def test_cap_is_independent_of_arrival_order() -> None:
    events = [make_event(timestamp_ms=T0 + h * HOUR) for h in (5, 0, 3, 49, 20)]
    forward = fold(events, CAPPED)
    backward = fold_batches([[e] for e in reversed(events)], CAPPED)
    assert forward == backward
    assert roughly(score(forward, T0 + 3 * DAY, CAPPED), 30)


def test_negative_points_reduce_the_score_and_are_capped_by_magnitude() -> None:
    model = model_from(
        [
            {"id": "plus", "match": {"type": "track", "event": "Good"}, "points": 30},
            {
                "id": "minus",
                "match": {"type": "track", "event": "Bad"},
                "points": -10,
                "cap": {"points": 15, "window": "7d"},
            },
        ],
        half_life="100000d",
    )
    state = fold([make_event(event="Good", timestamp_ms=T0)], model)
    assert roughly(score(state, T0 + HOUR, model), 30)
    worse = apply_events(
        state, "user-1", [make_event(event="Bad", timestamp_ms=T0 + i * HOUR) for i in (1, 2, 3)], model
    )
    assert roughly(score(worse, T0 + 4 * HOUR, model), 15)
    top = engagement_at(worse, model, T0 + 4 * HOUR).top
    assert [(c.rule_id, round(c.points)) for c in top] == [("plus", 30), ("minus", -15)]


# --- once-only -----------------------------------------------------------------------------------

ONCE = model_from([{"id": "demo", "match": {"type": "track", "event": "Demo Requested"}, "points": 40, "once": True}])


@PROPERTY
@given(
    times=st.lists(st.integers(min_value=0, max_value=10), min_size=1, max_size=6).map(
        lambda hs: [T0 + h * DAY for h in hs]
    ),
    data=st.data(),
)
def test_once_only_awards_the_earliest_event(times: list[int], data: st.DataObject) -> None:
    events = [make_event(event="Demo Requested", timestamp_ms=ts, message_id=f"m{i}") for i, ts in enumerate(times)]
    earliest = min(events, key=lambda e: e.order_key)
    arrival = data.draw(st.permutations(events))
    state = fold_batches([[e] for e in arrival], ONCE)
    now = T0 + 30 * DAY
    assert score(state, now, ONCE) == round(decay(40, earliest.timestamp_ms, now, ONCE.half_life_ms), 6)
    earned = {hit.mid: v for hit, pts in zip(state.hits, effective_points(state, ONCE), strict=True) for _, v in pts}
    assert earned[earliest.message_id] == 40
    assert sum(1 for v in earned.values() if v) == 1


def test_once_only_tie_broken_by_message_id() -> None:
    late_id = make_event(event="Demo Requested", message_id="b", timestamp_ms=T0)
    early_id = make_event(event="Demo Requested", message_id="a", timestamp_ms=T0)
    state = fold([late_id, early_id], ONCE)
    assert [(h.mid, pts) for h, pts in zip(state.hits, effective_points(state, ONCE), strict=True)] == [
        ("a", [("demo", 40)]),
        ("b", [("demo", 0.0)]),
    ]


# --- overflow folding ----------------------------------------------------------------------------

FOLDING = model_from(
    [{"id": "r", "match": {"type": "track", "event": "Email Opened"}, "points": 10}],
    half_life="2d",
    storage={"max_hits_per_contact": 8, "dedupe_memory": 64},
)


def _thirty() -> list[Event]:
    return [make_event(message_id=f"m{i:02d}", timestamp_ms=T0 + i * 3 * HOUR) for i in range(30)]


def _expected(events: Sequence[Event], now: int, model: Model, points: float = 10) -> float:
    return math.fsum(decay(points, e.timestamp_ms, now, model.half_life_ms) for e in events)


def test_overflow_folds_oldest_hits_and_keeps_the_score() -> None:
    events = _thirty()
    now = T0 + 4 * DAY
    for state in (fold(events, FOLDING), fold_batches([[e] for e in events], FOLDING)):
        # folded in steps: at most max_hits kept, at least max_hits - max_hits // 8 after a fold
        assert 7 <= len(state.hits) <= 8
        first = 30 - len(state.hits)
        assert [h.mid for h in state.hits] == [f"m{i:02d}" for i in range(first, 30)]
        assert state.folded_ids == [f"m{i:02d}" for i in range(first)]
        assert close(score(state, now, FOLDING), _expected(events, now, FOLDING))
        assert close(score(state, now + 9 * DAY, FOLDING), _expected(events, now + 9 * DAY, FOLDING))


def test_duplicates_of_folded_events_are_ignored() -> None:
    events = _thirty()
    now = T0 + 4 * DAY
    state = fold(events, FOLDING)
    again = apply_events(copy.deepcopy(state), "user-1", events[:5] + events[-2:], FOLDING)
    assert again.hits == state.hits
    assert again.base == state.base
    assert close(score(again, now, FOLDING), _expected(events, now, FOLDING))


def test_dedupe_memory_is_bounded() -> None:
    model = model_from(
        [{"id": "r", "match": {"type": "track"}, "points": 1}],
        storage={"max_hits_per_contact": 8, "dedupe_memory": 5},
    )
    state = fold(_thirty(), model)
    first = 30 - len(state.hits)
    assert state.folded_ids == [f"m{i:02d}" for i in range(first - 5, first)]


def test_once_only_survives_folding() -> None:
    model = model_from(
        [
            {"id": "demo", "match": {"type": "track", "event": "Demo Requested"}, "points": 40, "once": True},
            {"id": "r", "match": {"type": "track", "event": "Email Opened"}, "points": 1},
        ],
        half_life="100000d",
        storage={"max_hits_per_contact": 8},
    )
    first = make_event(event="Demo Requested", timestamp_ms=T0)
    opens = [make_event(timestamp_ms=T0 + i * HOUR) for i in range(1, 20)]
    state = fold([first, *opens], model)
    assert "demo" in state.base_once
    later = apply_events(state, "user-1", [make_event(event="Demo Requested", timestamp_ms=T0 + DAY)], model)
    assert roughly(score(later, T0 + 2 * DAY, model), 40 + 19)


def test_cap_still_holds_after_folding() -> None:
    """A cap limits what a rule awards in any trailing window, even across the fold boundary."""
    model = model_from(
        [{"id": "r", "match": {"type": "track"}, "points": 10, "cap": {"points": 20, "window": "1d"}}],
        half_life="100000d",
        storage={"max_hits_per_contact": 8},
    )
    events = [make_event(message_id=f"m{i:02d}", timestamp_ms=T0 + i * MINUTE) for i in range(30)]
    now = T0 + HOUR
    in_one_batch = fold(events, model)
    one_at_a_time = fold_batches([[e] for e in events], model)
    assert roughly(score(in_one_batch, now, model), 20)
    assert roughly(score(one_at_a_time, now, model), 20)


# --- traits --------------------------------------------------------------------------------------


@PROPERTY
@given(data=st.data())
def test_latest_identify_wins_whatever_the_arrival_order(data: st.DataObject) -> None:
    titles = ["Engineer", "Manager", "VP", "CTO"]
    events = [
        make_event(
            kind="identify", event=None, message_id=f"m{i}", timestamp_ms=T0 + (i // 2) * HOUR, traits={"title": t}
        )
        for i, t in enumerate(titles)
    ]
    # the last two share a timestamp: the larger message id is later
    arrival = data.draw(st.permutations(events))
    state = fold_batches([[e] for e in arrival])
    assert state.traits == {"title": "CTO"}
    assert state.trait_at == {"title": (T0 + HOUR, "m3")}


def test_traits_are_merged_per_key() -> None:
    old = make_event(kind="identify", event=None, timestamp_ms=T0, traits={"title": "VP", "industry": "software"})
    new = make_event(kind="identify", event=None, timestamp_ms=T0 + DAY, traits={"industry": "retail"})
    state = fold([new, old])
    assert state.traits == {"title": "VP", "industry": "retail"}


def test_email_trait_is_normalised() -> None:
    state = fold([make_event(kind="identify", event=None, traits={"email": "  Ada.Lovelace@Example.COM "})])
    assert state.email == "ada.lovelace@example.com"
    assert state.traits["email"] == "  Ada.Lovelace@Example.COM "
    blank = apply_events(
        state, "user-1", [make_event(kind="identify", event=None, timestamp_ms=T0 + 1, traits={"email": " "})], MODEL
    )
    assert blank.email is None


def test_group_ids_are_collected() -> None:
    events = [make_event(kind="group", event=None, group_id=g) for g in ("acct-2", "acct-1", "acct-2")]
    assert fold(events).groups == ["acct-1", "acct-2"]


# --- merge (absorb) ------------------------------------------------------------------------------


def _user_and_anon_events() -> tuple[list[Event], list[Event]]:
    anon = [
        make_event(
            kind="page",
            event=None,
            channel="web",
            path="/pricing",
            timestamp_ms=T0 + h * HOUR,
            user_id=None,
            anonymous_id="anon-a",
        )
        for h in (0, 1, 2, 3)
    ] + [
        make_event(
            event="Demo Requested", channel="web", timestamp_ms=T0 + 4 * HOUR, user_id=None, anonymous_id="anon-a"
        ),
        make_event(
            kind="identify",
            event=None,
            timestamp_ms=T0 + 5 * HOUR,
            user_id=None,
            anonymous_id="anon-a",
            traits={"title": "VP"},
        ),
    ]
    user = [
        make_event(kind="page", event=None, channel="web", path="/pricing/teams", timestamp_ms=T0 + 90 * MINUTE),
        make_event(event="Demo Requested", channel="web", timestamp_ms=T0 + 2 * DAY),
        make_event(
            kind="identify", event=None, timestamp_ms=T0 + HOUR, traits={"title": "Engineer", "industry": "saas"}
        ),
        make_event(timestamp_ms=T0 + DAY),
    ]
    return user, anon


def test_absorb_equals_folding_all_events_into_one_contact() -> None:
    user_events, anon_events = _user_and_anon_events()
    target = fold(user_events)
    source = fold(anon_events, contact_id="anonymous:anon-a")
    merged = absorb(target, source, MODEL)
    everything = fold(user_events + anon_events)
    for now in (T0 + 6 * HOUR, T0 + 3 * DAY, T0 + 40 * DAY):
        assert engagement_at(merged, MODEL, now) == engagement_at(everything, MODEL, now)
    assert fit_of(merged, MODEL) == fit_of(everything, MODEL)
    assert merged.traits == {"title": "VP", "industry": "saas"}
    assert merged.hits == everything.hits
    assert merged.merged_ids == ["anonymous:anon-a"]
    assert merged.anonymous_ids == ["anon-a"]
    # pricing is capped at 20 per day across both contacts, and the demo counts once (the earliest)
    summed = score(fold(user_events), T0 + 3 * DAY) + score(source, T0 + 3 * DAY)
    assert score(merged, T0 + 3 * DAY) < summed
    demo = [
        v for h, pts in zip(merged.hits, effective_points(merged, MODEL), strict=True) for r, v in pts if r == "demo"
    ]
    assert demo == [40, 0]


def test_absorbing_twice_is_idempotent() -> None:
    user_events, anon_events = _user_and_anon_events()
    source = fold(anon_events, contact_id="anonymous:anon-a")
    once = absorb(fold(user_events), copy.deepcopy(source), MODEL)
    twice = absorb(copy.deepcopy(once), copy.deepcopy(source), MODEL)
    assert twice == once


@PROPERTY
@given(user_events=event_lists(max_size=12), anon_events=event_lists(max_size=12))
def test_absorb_matches_single_contact_fold(user_events: list[Event], anon_events: list[Event]) -> None:
    anon_events = [dataclasses.replace(e, message_id="a" + e.message_id, anonymous_id="x") for e in anon_events]
    merged = absorb(fold(user_events), fold(anon_events, contact_id="anonymous:x"), MODEL)
    everything = fold(user_events + anon_events)
    for now in (T0, NOW):
        assert engagement_at(merged, MODEL, now) == engagement_at(everything, MODEL, now)
    assert merged.traits == everything.traits
    assert fit_of(merged, MODEL) == fit_of(everything, MODEL)
    assert absorb(copy.deepcopy(merged), fold(anon_events, contact_id="anonymous:x"), MODEL) == merged


def test_absorb_with_folded_source_is_idempotent_and_keeps_score() -> None:
    user = [make_event(message_id=f"u{i:02d}", timestamp_ms=T0 + i * HOUR) for i in range(5)]
    anon = [make_event(message_id=f"a{i:02d}", timestamp_ms=T0 + i * HOUR + MINUTE, user_id=None) for i in range(20)]
    source = fold(anon, FOLDING, contact_id="anonymous:x")
    assert source.base
    merged = absorb(fold(user, FOLDING), copy.deepcopy(source), FOLDING)
    now = T0 + 2 * DAY
    assert close(score(merged, now, FOLDING), _expected(user + anon, now, FOLDING))
    again = absorb(copy.deepcopy(merged), copy.deepcopy(source), FOLDING)
    assert again == merged


# --- step: the whole per-contact fold with merges ------------------------------------------------


def test_merge_into_turns_the_contact_into_a_forwarding_record() -> None:
    anon_events = [make_event(user_id=None, anonymous_id="a1", timestamp_ms=T0 + i) for i in range(2)]
    state, out, *_ = step(None, "anonymous:a1", anon_events, MODEL)
    assert state is not None
    assert out == []
    state, out, *_ = step(state, "anonymous:a1", [MergeInto(target="user-9", message_id="link-1")], MODEL)
    assert state is not None
    assert state.merged_into == "user-9"
    assert out == [Outgoing("user-9", Absorb(state))]
    assert len(state.hits) == 2  # kept, so a redelivered merge can re-send it

    late = make_event(user_id=None, anonymous_id="a1", timestamp_ms=T0 + DAY)
    state, out, *_ = step(state, "anonymous:a1", [late], MODEL)
    assert state is not None
    assert out == [Outgoing("user-9", late)]
    assert len(state.hits) == 2

    state, out, *_ = step(state, "anonymous:a1", [MergeInto(target="user-9", message_id="link-1")], MODEL)
    assert state is not None
    assert out == [Outgoing("user-9", Absorb(state))]


def test_forwarding_record_passes_absorbs_on_and_ignores_other_merges() -> None:
    state = new_contact("anonymous:a1", MODEL)
    state.merged_into = "user-9"
    other = Absorb(new_contact("anonymous:zz", MODEL))
    after, out, *_ = step(state, "anonymous:a1", [other, MergeInto(target="user-7", message_id="x")], MODEL)
    assert after is state
    assert out == [Outgoing("user-9", other)]


def test_step_flushes_events_before_a_merge_and_forwards_after() -> None:
    before = make_event(user_id=None, timestamp_ms=T0)
    after = make_event(user_id=None, timestamp_ms=T0 + HOUR)
    state, out, *_ = step(None, "anonymous:a1", [before, MergeInto("user-9", "l"), after], MODEL)
    assert state is not None
    assert [h.mid for h in state.hits] == [before.message_id]
    assert out == [Outgoing("user-9", Absorb(state)), Outgoing("user-9", after)]


def test_step_absorb_gives_the_target_everything() -> None:
    user_events, anon_events = _user_and_anon_events()
    anon, out, *_ = step(None, "anonymous:anon-a", [*anon_events, MergeInto("user-1", "link")], MODEL)
    assert len(out) == 1
    user, out2, *_ = step(None, "user-1", [*user_events, out[0].item], MODEL)
    assert out2 == []
    assert user is not None
    assert user.user_id == "user-1"
    assert user.merged_ids == ["anonymous:anon-a"]
    everything = fold(user_events + anon_events)
    assert engagement_at(user, MODEL, NOW) == engagement_at(everything, MODEL, NOW)
    # redelivered absorb: nothing changes
    assert anon is not None
    user2, *_ = step(copy.deepcopy(user), "user-1", [Absorb(copy.deepcopy(anon))], MODEL)
    assert user2 == user


def test_absorb_of_own_state_is_ignored() -> None:
    state = fold([make_event()])
    same, out, *_ = step(copy.deepcopy(state), "user-1", [Absorb(copy.deepcopy(state))], MODEL)
    assert same == state
    assert out == []


def test_merge_loop_is_refused() -> None:
    user_events, anon_events = _user_and_anon_events()
    user = absorb(fold(user_events), fold(anon_events, contact_id="anonymous:anon-a"), MODEL)
    assert not can_merge_into(user, "anonymous:anon-a")
    after, out, *_ = step(copy.deepcopy(user), "user-1", [MergeInto("anonymous:anon-a", "bad")], MODEL)
    assert after == user
    assert after is not None
    assert after.merged_into is None
    assert out == []
    self_merge, out, *_ = step(copy.deepcopy(user), "user-1", [MergeInto("user-1", "bad")], MODEL)
    assert self_merge == user
    assert out == []


def test_merge_into_on_an_unknown_contact() -> None:
    state, out, *_ = step(None, "anonymous:new", [MergeInto("user-3", "l")], MODEL)
    assert state is not None
    assert state.merged_into == "user-3"
    assert out == [Outgoing("user-3", Absorb(state))]
    assert can_merge_into(None, "anything")


def test_new_contact_ids() -> None:
    assert new_contact("user-1", MODEL).user_id == "user-1"
    anon = new_contact("anonymous:abc", MODEL)
    assert anon.user_id is None
    assert anon.model_version == MODEL.version


# --- grades --------------------------------------------------------------------------------------


def test_grade_is_fit_letter_and_engagement_band() -> None:
    vp = make_event(
        kind="identify",
        event=None,
        traits={"title": "VP", "industry": "software", "employees": 500, "email": "a@b.co"},
    )
    state = fold([vp, make_event(event="Demo Requested", channel="web"), make_event(event="Signed Up", channel="web")])
    fit = fit_of(state, MODEL)
    assert fit.score == 65
    assert [c.rule_id for c in fit.top] == ["vp", "software", "mid", "has-email"]
    engagement = engagement_at(state, MODEL, T0)
    assert engagement.score == 70
    assert grade_of(fit, engagement) == f"{fit.grade}{engagement.band}"
    assert fit.grade == "A"
    assert engagement.band == "1"
    assert grade_of(fit_of(new_contact("x", MODEL), MODEL), engagement_at(new_contact("x", MODEL), MODEL, T0)) == "D4"


def test_grade_is_the_fit_letter_then_the_engagement_band() -> None:
    assert grade("A", "1") == "A1"
    assert grade("D", "4") == "D4"
    assert grade("B", "") == "B"


def test_default_model_grades_a_vp_at_a_mid_size_us_software_company_as_a() -> None:
    identify = make_event(
        kind="identify",
        event=None,
        channel="web",
        traits={
            "title": "VP of Engineering",
            "industry": "Software",
            "employees": 500,
            "address": {"country": "US"},
            "email": "jane@acme.io",
        },
    )
    state = apply_events(None, "user-1", [identify], DEFAULT_MODEL)
    fit = fit_of(state, DEFAULT_MODEL)
    assert fit.grade == "A"
    assert fit.score == 25 + 20 + 20 + 10 + 5
    engagement = engagement_at(state, DEFAULT_MODEL, T0)
    assert grade_of(fit, engagement) == "A4"
    demo = make_event(event="Demo Requested", channel="web", timestamp_ms=T0 + HOUR)
    pricing = [
        make_event(kind="page", event=None, channel="web", path="/pricing", timestamp_ms=T0 + HOUR + i)
        for i in range(2)
    ]
    hot = apply_events(state, "user-1", [demo, *pricing], DEFAULT_MODEL)
    assert grade_of(fit_of(hot, DEFAULT_MODEL), engagement_at(hot, DEFAULT_MODEL, T0 + 2 * HOUR)) == "A1"


def test_default_model_grades_a_student_low() -> None:
    identify = make_event(kind="identify", event=None, traits={"title": "Student", "email": "kid@uni.edu"})
    fit = fit_of(apply_events(None, "user-1", [identify], DEFAULT_MODEL), DEFAULT_MODEL)
    assert fit.score == 5 - 20
    assert fit.grade == "D"


@settings(max_examples=100, deadline=None)
@given(
    specs=st.lists(
        st.tuples(st.sampled_from(["Email Opened", "Unsubscribed"]), st.integers(0, 200)), min_size=1, max_size=40
    ),
    data=st.data(),
)
def test_folding_uncapped_rules_is_order_independent(specs: list[tuple[str, int]], data: st.DataObject) -> None:
    model = model_from(
        [
            {"id": "plus", "match": {"type": "track", "event": "Email Opened"}, "points": 3},
            {"id": "minus", "match": {"type": "track", "event": "Unsubscribed"}, "points": -2},
        ],
        half_life="1d",
        storage={"max_hits_per_contact": 8, "dedupe_memory": 100},
    )
    events = [
        make_event(message_id=f"m{i:03d}", event=name, timestamp_ms=T0 + h * HOUR) for i, (name, h) in enumerate(specs)
    ]
    arrival = data.draw(st.permutations(events))
    batches = split(arrival, data.draw(st.lists(st.integers(0, 100), max_size=5)))
    now = T0 + 300 * HOUR
    expected = math.fsum(
        decay(3 if e.event == "Email Opened" else -2, e.timestamp_ms, now, model.half_life_ms) for e in events
    )
    for state in (fold(events, model), fold_batches([*batches, events], model)):
        kept = len(state.hits)
        assert kept == len(events) if len(events) <= 8 else 7 <= kept <= 8
        assert close(score(state, now, model), expected)
