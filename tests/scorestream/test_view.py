"""The compact read view against the full fold: engagement, fit, value and identity read from a
view equal what the full state gives (``scorestream.view``)."""

from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scorestream import ContactState, Event, Model, engagement_at, fit_of
from scorestream.clv import BgNbdFit, BgNbdParams, GammaGammaFit, GammaGammaParams
from scorestream.fold import step
from scorestream.population import (
    ClvFit,
    PopulationModel,
    build_partition_summary,
    build_population_model,
    contact_hash,
    customer_facts,
    value_view,
)
from scorestream.rfm import DAY_MS
from scorestream.scoring import EngagementView, round_score
from scorestream.view import (
    ContactView,
    EarnedPoints,
    FitMemo,
    engagement_of_view,
    engagement_totals,
    fit_of_view,
    value_of_view,
    value_summary,
    view_of,
)
from tests.factories import DAY, DEFAULT_MODEL, HOUR, MINUTE, T0, make_event, model_from

PROPERTY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Caps (positive and negative), once-only awards, a rule without points, and storage bounds small
# enough that the fold keeps a decayed base (max 8 hits, 2 days of lateness).
MODEL = model_from(
    [
        {"id": "page-view", "match": {"type": "page"}, "points": 1, "cap": {"points": 3, "window": "1d"}},
        {"id": "pricing", "match": {"type": "page", "path": "/pricing*"}, "points": 10},
        {
            "id": "careers",
            "match": {"type": "page", "path": "/careers*"},
            "points": -10,
            "cap": {"points": 20, "window": "7d"},
        },
        {"id": "demo", "match": {"type": "track", "event": "Demo Requested"}, "points": 40, "once": True},
        {"id": "opened", "match": {"type": "track", "event": "Email Opened"}, "points": 2.5},
        {"id": "unsubscribed", "match": {"type": "track", "event": "Unsubscribed"}, "points": -25},
        {"id": "bought", "match": {"type": "track", "event": "Order Completed"}, "points": 7, "once": True},
    ],
    half_life="3d",
    fit_rules=[
        {"id": "vp", "points": 25, "when": [{"field": "title", "op": "eq", "value": "VP"}], "description": "a VP"},
        {"id": "mid", "points": 15, "when": [{"field": "employees", "op": "gte", "value": 50}]},
        {"id": "engineer", "points": -5, "when": [{"field": "title", "op": "eq", "value": "Engineer"}]},
    ],
    storage={"max_hits_per_contact": 8, "fold_after": "2d", "dedupe_memory": 16},
)

_times = st.integers(min_value=0, max_value=12 * 24 * 4).map(lambda q: T0 + q * 15 * MINUTE)
_kinds = st.sampled_from(
    [
        {"kind": "page", "event": None, "path": "/"},
        {"kind": "page", "event": None, "path": "/pricing"},
        {"kind": "page", "event": None, "path": "/careers"},
        {"kind": "track", "event": "Demo Requested"},
        {"kind": "track", "event": "Email Opened"},
        {"kind": "track", "event": "Unsubscribed"},
        {"kind": "track", "event": "Nothing Happened"},
        {"kind": "identify", "event": None, "traits": {"title": "VP", "employees": 80}},
        {"kind": "identify", "event": None, "traits": {"title": "Engineer", "email": "ada@example.com"}},
    ]
)


@st.composite
def orders(draw: st.DrawFn, i: int) -> dict[str, Any]:
    """An order, sometimes in a currency without a rate, or a refund of an earlier one."""
    n = draw(st.integers(0, 3))
    if draw(st.booleans()):
        return {"kind": "track", "event": "Order Refunded", "properties": {"order_id": f"o{n}"}}
    currency = draw(st.sampled_from(["USD", "USD", "XYZ"]))
    total = draw(st.sampled_from([0.0, 19.99, 120.0, 45.5]))
    return {
        "kind": "track",
        "event": "Order Completed",
        "properties": {"order_id": f"o{n if draw(st.booleans()) else i}", "total": total, "currency": currency},
    }


@st.composite
def histories(draw: st.DrawFn) -> list[list[Event]]:
    """A contact's events (unique message ids, some re-sent) in a few batches, in any order."""
    count = draw(st.integers(1, 30))
    events = []
    for i in range(count):
        fields = draw(st.one_of(_kinds, orders(i)))
        events.append(make_event(message_id=f"m{i:03d}", user_id="ann", timestamp_ms=draw(_times), **fields))
    events += draw(st.lists(st.sampled_from(events), max_size=4))
    events = draw(st.permutations(events))
    cuts = sorted(draw(st.sets(st.integers(1, max(len(events) - 1, 1)), max_size=3)))
    return [events[a:b] for a, b in zip([0, *cuts], [*cuts, len(events)], strict=True) if events[a:b]]


def fold(batches: list[list[Event]], model: Model = MODEL) -> ContactState:
    state: ContactState | None = None
    for batch in batches:
        state = step(state, "ann", batch, model).state
    assert state is not None
    return state


def assert_same_engagement(view: EngagementView, full: EngagementView) -> None:
    """Equal as the API shows them. The view scales per-rule totals once where the full state decays
    each hit: a few ulps apart, so a 6-decimal figure may differ by one unit in its last place (its
    exact value within ~1e-12 of a rounding midpoint), and a band or a rank may differ only when a
    score sits that close to a band's minimum or two rules' totals are that close."""
    assert view.as_of_ms == full.as_of_ms
    assert math.isclose(view.score, full.score, rel_tol=0, abs_tol=1.01e-6)
    bands = {b.min for b in MODEL.engagement_bands}
    if not any(math.isclose(full.score, b, abs_tol=2e-6) for b in bands):
        assert view.band == full.band
    assert [c.description for c in view.top] == [c.description for c in full.top] or _near_tie(full)
    if not _near_tie(full):
        assert [c.rule_id for c in view.top] == [c.rule_id for c in full.top]
    for a, b in zip(view.top, full.top, strict=False):
        if a.rule_id == b.rule_id:
            assert math.isclose(a.points, b.points, rel_tol=0, abs_tol=1.01e-6)


def _near_tie(full: EngagementView) -> bool:
    points = sorted(abs(c.points) for c in full.top)
    return any(math.isclose(a, b, abs_tol=2e-6) for a, b in itertools.pairwise(points)) or any(
        abs(c.points) < 2e-6 for c in full.top
    )


@PROPERTY
@given(histories(), st.lists(st.integers(0, 60 * DAY), min_size=1, max_size=4))
def test_engagement_of_the_view_is_engagement_of_the_full_state(batches: list[list[Event]], offsets: list[int]) -> None:
    state = fold(batches)
    view = view_of(state, MODEL)
    for offset in [0, *offsets]:
        now = view.engagement_ms + offset
        assert_same_engagement(engagement_of_view(view, MODEL, now), engagement_at(state, MODEL, now))


@PROPERTY
@given(histories())
def test_at_the_reference_instant_the_view_is_exact(batches: list[list[Event]]) -> None:
    state = fold(batches)
    view = view_of(state, MODEL)
    assert engagement_of_view(view, MODEL, view.engagement_ms) == engagement_at(state, MODEL, view.engagement_ms)


def test_a_busy_contact_folds_a_base_and_the_view_still_decays_exactly() -> None:
    events = [
        make_event(
            message_id=f"m{i}", user_id="ann", kind="page", event=None, path="/pricing", timestamp_ms=T0 + i * HOUR
        )
        for i in range(200)
    ]
    state = fold([events])
    assert state.base and len(state.hits) <= 8  # folded into the base
    view = view_of(state, MODEL)
    assert view.engagement_ms == state.hits[-1].ts
    for offset in (0, 1, HOUR, 3 * DAY, 40 * DAY):
        now = view.engagement_ms + offset
        assert_same_engagement(engagement_of_view(view, MODEL, now), engagement_at(state, MODEL, now))


def test_before_the_reference_instant_the_view_answers_as_at_it() -> None:
    """Events stamped ahead of the reader's clock: the view cannot undo their decay one by one, so it
    answers the engagement at its newest scored instant (``as_of`` stays the reader's time)."""
    events = [
        make_event(message_id="a", user_id="ann", kind="page", event=None, path="/pricing", timestamp_ms=T0),
        make_event(message_id="b", user_id="ann", event="Demo Requested", timestamp_ms=T0 + DAY),
    ]
    state = fold([events])
    view = view_of(state, MODEL)
    early = engagement_of_view(view, MODEL, T0 + HOUR)
    at_ref = engagement_of_view(view, MODEL, T0 + DAY)
    assert early.as_of_ms == T0 + HOUR
    assert (early.score, early.band, early.top) == (at_ref.score, at_ref.band, at_ref.top)
    assert early.score == round_score(40 + (10 + 1) * 2 ** (-1 / 3))  # pricing and page-view, a day old


def test_no_scored_event_is_a_zero_score() -> None:
    state = fold([[make_event(message_id="i", user_id="ann", kind="identify", event=None, traits={"title": "VP"})]])
    view = view_of(state, MODEL)
    assert (view.engagement_ms, view.engagement) == (0, [])
    assert engagement_of_view(view, MODEL, T0 + DAY) == engagement_at(state, MODEL, T0 + DAY)


@PROPERTY
@given(histories())
def test_fit_identity_and_journey_are_those_of_the_state(batches: list[list[Event]]) -> None:
    state = fold(batches)
    view = view_of(state, MODEL)
    assert fit_of_view(view, MODEL) == fit_of(state, MODEL)
    assert (view.contact_id, view.user_id, view.anonymous_ids, view.email, view.merged_ids, view.merged_into) == (
        state.contact_id,
        state.user_id,
        state.anonymous_ids,
        state.email,
        state.merged_ids,
        state.merged_into,
    )
    assert view.traits == state.traits
    assert (view.first_seen_ms, view.last_seen_ms, view.account_id, view.model_version) == (
        state.first_seen_ms,
        state.last_seen_ms,
        state.account_id,
        state.model_version,
    )


def population() -> PopulationModel:
    facts = []
    for i in range(12):
        user = f"buyer-{i}"
        events = [
            make_event(
                message_id=f"{user}-{j}",
                user_id=user,
                event="Order Completed",
                timestamp_ms=T0 - (30 - i - 3 * j) * DAY,
                properties={"order_id": f"{user}-{j}", "total": 20.0 * (i + 1)},
            )
            for j in range(1 + i % 3)
        ]
        state = step(None, user, events, MODEL).state
        assert state is not None
        f = customer_facts(state.value)
        assert f is not None
        facts.append((contact_hash(user), f))
    now = T0
    built = build_population_model([build_partition_summary(0, facts, now, 12)], now, None, 12, 3)
    # the fit of CDNOW's published parameters (Fader, Hardie & Lee 2005): a fit whatever the sample
    bg = BgNbdFit(BgNbdParams(0.243, 4.414, 0.793, 2.426), -9582.4, 2357, 0, True)
    gg = GammaGammaFit(GammaGammaParams(6.25, 3.74, 15.44), -4000.0, 946, 0, True)
    return dataclasses.replace(built, fit=ClvFit(bg, gg, now, 12))


POPULATION = population()


def ledger_ms(state: ContactState) -> int:
    value = state.value
    if value is None:
        return T0
    stamps = [o.ts for o in value.orders] + [r.ts for r in value.refunds]
    return max(stamps + ([value.folded.until[0]] if value.folded is not None else []), default=T0)


@PROPERTY
@given(histories(), st.lists(st.integers(0, 400 * DAY), min_size=1, max_size=3))
def test_customer_value_of_the_view_is_value_view_of_the_ledger(batches: list[list[Event]], offsets: list[int]) -> None:
    state = fold(batches)
    view = view_of(state, MODEL)
    summary = value_summary(state.value)
    ref = ledger_ms(state)  # the view answers as at the ledger's newest record before it
    assert summary is None or summary.as_of_ms == ref
    for population_ in (None, POPULATION):
        for offset in [0, *offsets]:
            now = ref + offset
            expected = value_view(state.value, now, population_, MODEL.value.segments)
            assert value_of_view(view, now, population_, MODEL.value.segments) == expected


def test_the_population_fixture_has_a_fit_and_boundaries() -> None:
    assert POPULATION.fit is not None and POPULATION.boundaries is not None


def test_a_forwarding_record_keeps_only_its_identity() -> None:
    state = fold([[make_event(message_id="p", user_id="ann", kind="page", event=None, path="/pricing")]])
    state.merged_into = "bob"
    view = view_of(state, MODEL)
    assert view == ContactView(
        contact_id="ann",
        model_version=state.model_version,
        user_id="ann",
        anonymous_ids=state.anonymous_ids,
        email=state.email,
        merged_ids=state.merged_ids,
        merged_into="bob",
    )


def test_a_recency_a_day_later_is_one_day_more() -> None:
    events = [
        make_event(message_id="o", user_id="ann", event="Order Completed", properties={"order_id": "o", "total": 10.0})
    ]
    view = view_of(fold([events]), MODEL)
    later = value_of_view(view, T0 + DAY_MS, None)
    assert later is not None and later.facts.recency_days == 1.0 and later.facts.frequency == 1


@PROPERTY
@given(histories())
def test_points_kept_between_states_give_the_totals_computed_afresh(batches: list[list[Event]]) -> None:
    """The worker keeps a contact's earned points between its views: batch after batch (late events,
    folds into the base, caps and once-only awards included), the totals are bit for bit those
    computed from the state alone."""
    earned = EarnedPoints()
    state: ContactState | None = None
    for batch in batches:
        for event in batch:  # one event at a time: the most states
            state = step(state, "ann", [event], MODEL).state
            assert state is not None
            assert engagement_totals(state, MODEL, earned) == engagement_totals(state, MODEL)
    assert state is not None
    other = model_from([{"id": "any", "match": {"type": "page"}, "points": 3}], half_life="3d")
    assert engagement_totals(state, other, earned) == engagement_totals(state, other)  # another model: afresh


def test_points_kept_for_a_busy_contact_continue_where_they_stopped() -> None:
    earned = EarnedPoints()
    state: ContactState | None = None
    caps = None
    for i in range(300):  # the default model keeps them all: every state extends the one before
        event = make_event(
            message_id=f"m{i:04d}",
            user_id="ann",
            kind="page",
            event=None,
            path="/pricing",
            timestamp_ms=T0 + i * MINUTE,
        )
        state = step(state, "ann", [event], DEFAULT_MODEL).state
        assert state is not None
        assert engagement_totals(state, DEFAULT_MODEL, earned) == engagement_totals(state, DEFAULT_MODEL)
        caps = caps or earned.caps
    assert state is not None
    assert earned.caps is caps and earned.count == len(state.hits) == 300  # continued, never restarted


SHARED_FITS = FitMemo(DEFAULT_MODEL)
_trait_values = st.one_of(
    st.sampled_from(["CEO", "ceo", "VP Marketing", "Engineer", "software", "retail", "1", "500", ""]),
    st.integers(-5, 5000),
    st.sampled_from([0.0, -0.0, 1.0, 499.5, 500.0, float("nan")]),
    st.booleans(),
    st.none(),
    st.lists(st.sampled_from(["a", "software"]), max_size=2),
    st.dictionaries(st.sampled_from(["country", "size"]), st.sampled_from(["US", "GB", "de", 7, None]), max_size=2),
)


@PROPERTY
@given(st.dictionaries(st.sampled_from(["address", "email", "employees", "industry", "title", "note"]), _trait_values))
def test_remembered_fits_are_the_fits_of_the_traits(traits: dict[str, Any]) -> None:
    """Traits the fit rules read (``address.country`` among them), of every type a trait can hold."""
    state = ContactState(contact_id="ann", model_version=DEFAULT_MODEL.version, traits=traits)
    expected = fit_of(state, DEFAULT_MODEL)
    for fits in (SHARED_FITS, FitMemo(DEFAULT_MODEL)):
        got = fits.fit(state)
        assert (got.score, got.grade, [(r.rule_id, r.points) for r in got.top]) == (
            expected.score,
            expected.grade,
            [(c.rule_id, c.points) for c in expected.top],
        )
        assert fit_of_view(view_of(state, DEFAULT_MODEL, fits=fits), DEFAULT_MODEL) == expected
