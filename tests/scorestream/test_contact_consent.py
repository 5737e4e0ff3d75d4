"""Consent (docs/model.md "Consent"): the model's ``consent`` section and the contact's consent
timeline decide which events are scored, in event time, whatever the order of arrival."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.state import decode_state, encode
from schemas.view import decode_view, encode_view
from scorestream import ContactState, Event, Model, ModelError, apply_events, engagement_at
from scorestream.contact import absorb
from scorestream.fold import Tick, step
from scorestream.rules.consent import ConsentRules, granted_categories
from scorestream.state import consent_denied
from scorestream.view import EarnedPoints, engagement_of_view, view_of
from tests.factories import DAY, DEFAULT_MODEL, HOUR, MINUTE, T0, make_event, model_from

PROPERTY = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])

RULES: list[dict[str, Any]] = [
    {"id": "page-view", "match": {"type": "page"}, "points": 1, "cap": {"points": 3, "window": "1d"}},
    {"id": "demo", "match": {"type": "track", "event": "Demo Requested"}, "points": 40, "once": True},
    {
        "id": "opened",
        "match": {"type": "track", "event": "Email Opened", "channel": "email"},
        "points": 2,
        "cap": {"points": 6, "window": "7d"},
    },
    {"id": "ordered", "match": {"type": "track", "event": "Order Completed"}, "points": 10},
]
CONSENT = {"engagement": ["analytics", "marketing"], "default": "granted"}
MODEL = model_from(RULES, consent=CONSENT)
STRICT = model_from(RULES, name="strict", consent={"engagement": "analytics", "default": "denied"})
PLAIN = model_from(RULES, name="plain")

GRANTED = {"analytics": True, "marketing": False, "functional": True}
DENIED = {"analytics": False, "marketing": False, "functional": True}
NOW = T0 + 6 * DAY


def page(ts: int, consent: dict[str, bool] | None, mid: str | None = None, anon: str | None = None) -> Event:
    extra = {"message_id": mid} if mid is not None else {}
    return make_event(
        kind="page", event=None, channel="web", path="/", timestamp_ms=ts, consent=consent, anonymous_id=anon, **extra
    )


def opened(ts: int, mid: str | None = None, consent: dict[str, bool] | None = None) -> Event:
    extra = {"message_id": mid} if mid is not None else {}
    return make_event(timestamp_ms=ts, consent=consent, **extra)


def fold(events: Sequence[Event], model: Model = MODEL, contact_id: str = "user-1") -> ContactState:
    return apply_events(None, contact_id, events, model)


def score(state: ContactState, now: int = NOW, model: Model = MODEL) -> float:
    return engagement_at(state, model, now).score


# --- the model file ------------------------------------------------------------------------------


def test_the_consent_section_is_parsed() -> None:
    assert MODEL.consent == ConsentRules(frozenset({"analytics", "marketing"}), default_granted=True)
    assert STRICT.consent == ConsentRules(frozenset({"analytics"}), default_granted=False)
    assert PLAIN.consent is None
    assert DEFAULT_MODEL.consent is not None and DEFAULT_MODEL.consent.engagement == {"analytics", "marketing"}


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        ("analytics", "must be a mapping"),
        ({"engagement": []}, "at least one consent category"),
        ({"engagement": [3]}, "expected a string or a list"),
        ({}, "at least one consent category"),
        ({"engagement": ["analytics"], "default": "maybe"}, "consent.default"),
        ({"engagement": ["analytics"], "fit": ["x"]}, "unknown key"),
    ],
)
def test_a_bad_consent_section_is_refused(raw: object, words: str) -> None:
    with pytest.raises(ModelError, match=words):
        model_from(RULES, consent=raw)


def test_allows_needs_one_category_granted() -> None:
    rules = MODEL.consent
    assert rules is not None
    assert rules.allows(granted_categories({"marketing": True}))
    assert not rules.allows(granted_categories({"analytics": False, "functional": True}))
    assert not rules.allows(granted_categories({}))  # a category left out is not granted


# --- explicit consent ----------------------------------------------------------------------------


def test_an_event_whose_consent_denies_earns_nothing_but_identity_and_consent_count() -> None:
    denied = [page(T0 + i * HOUR, DENIED, anon="anon-1") for i in range(3)]
    identify = make_event(kind="identify", event=None, traits={"email": "ada@example.com"}, consent=DENIED)
    state = fold([*denied, identify])
    assert score(state) == 0.0
    assert state.hits == []
    assert state.anonymous_ids == ["anon-1"]
    assert state.email == "ada@example.com"
    assert state.consent == DENIED
    assert state.consent_at is not None and state.consent_at[0] == T0 + 2 * HOUR


def test_granted_events_score_as_without_a_consent_section() -> None:
    events = [page(T0 + i * HOUR, GRANTED) for i in range(5)]
    assert score(fold(events)) == score(fold(events, PLAIN), model=PLAIN) > 0


def test_a_model_without_consent_scores_everything_and_still_shows_the_consent() -> None:
    state = fold([page(T0, DENIED), page(T0 + HOUR, DENIED)], PLAIN)
    assert score(state, model=PLAIN) > 0
    assert state.consent == DENIED and state.consent_log == []


# --- consent-less events take the contact's consent at their instant ----------------------------


def test_events_without_consent_follow_the_timeline() -> None:
    before = opened(T0 + HOUR, "before")
    withdrawal = page(T0 + 2 * HOUR, DENIED, "withdrawal")
    after = opened(T0 + 3 * HOUR, "after")
    state = fold([before, withdrawal, after])
    assert consent_denied(state, MODEL) == {"after"}
    assert math.isclose(score(state), engagement_at(fold([before]), MODEL, NOW).score)


def test_a_late_withdrawal_unscores_and_a_late_grant_rescores() -> None:
    emails = [opened(T0 + i * DAY, f"e{i}") for i in range(1, 5)]
    state = fold(emails)
    assert consent_denied(state, MODEL) == set()
    full = score(state)
    state = apply_events(state, "user-1", [page(T0 + 2 * DAY - 1, DENIED, "withdraw")], MODEL)  # arrives late
    assert consent_denied(state, MODEL) == {"e2", "e3", "e4"}
    assert score(state) < full
    state = apply_events(state, "user-1", [page(T0 + 3 * DAY - 1, GRANTED, "grant")], MODEL)
    assert consent_denied(state, MODEL) == {"e2"}
    # the grant's own page view scores (1 point) too
    assert score(state) > score(fold([*emails[:1], *emails[2:]]))


def test_the_default_decides_before_any_consent() -> None:
    email = opened(T0, "early")
    grant = page(T0 + HOUR, {"analytics": True}, "grant")
    later = opened(T0 + 2 * HOUR, "later")
    state = fold([email, grant, later], STRICT)
    assert consent_denied(state, STRICT) == {"early"}
    assert fold([email], STRICT).hits and score(fold([email], STRICT), model=STRICT) == 0.0


def test_two_consents_at_one_instant_grant_what_both_grant() -> None:
    a = page(T0, {"analytics": True}, "a")
    b = page(T0, {"marketing": True, "analytics": False}, "b")
    email = opened(T0 + HOUR, "email")
    for order in ([a, b, email], [email, b, a]):
        state = fold(order)
        assert state.consent_log == [(T0, ())]
        # b grants marketing, a analytics: at their instant neither is granted by both
        assert consent_denied(state, MODEL) == {"a", "b", "email"}


def test_a_denied_hit_leaves_its_once_only_award_and_its_cap_to_later_hits() -> None:
    demo_denied = make_event(event="Demo Requested", channel="web", timestamp_ms=T0, message_id="d1")
    withdraw = page(T0 - 1, DENIED, "w")
    grant = page(T0 + HOUR, GRANTED, "g")
    demo_later = make_event(event="Demo Requested", channel="web", timestamp_ms=T0 + 2 * HOUR, message_id="d2")
    state = fold([withdraw, demo_denied, grant, demo_later])
    top = {c.rule_id: c.points for c in engagement_at(state, MODEL, T0 + 2 * HOUR).top}
    assert top["demo"] == 40.0


def test_a_merge_decides_the_merged_events_on_the_joined_timeline() -> None:
    anon = fold([opened(T0 + 2 * HOUR, "anon-email")], contact_id="anonymous:a-1")
    user = fold([page(T0 + HOUR, DENIED, "withdraw")])
    merged = absorb(user, anon, MODEL)
    assert consent_denied(merged, MODEL) == {"anon-email"}
    assert score(merged) == 0.0
    other_way = absorb(fold([opened(T0 + 2 * HOUR, "anon-email")]), fold([page(T0 + HOUR, DENIED, "withdraw")]), MODEL)
    assert other_way.consent_log == merged.consent_log


# --- the lifecycle: a denied event is no checkpoint ---------------------------------------------


def test_denied_events_move_no_stage() -> None:
    demo = {"kind": "track", "event": "Demo Requested", "channel": "web"}
    denied = [make_event(**demo, timestamp_ms=T0 + i * MINUTE, consent=DENIED) for i in range(3)]
    granted = [make_event(**demo, timestamp_ms=T0 + i * MINUTE, consent=GRANTED) for i in range(3)]
    quiet = step(None, "user-1", denied, DEFAULT_MODEL).state
    busy = step(None, "user-1", granted, DEFAULT_MODEL).state
    assert quiet is not None and busy is not None and quiet.journey is not None and busy.journey is not None
    assert engagement_at(quiet, DEFAULT_MODEL, T0 + HOUR).score == 0.0
    assert len(quiet.journey.history) == 1
    assert quiet.journey.stage != busy.journey.stage


def test_a_late_withdrawal_rewalks_the_lifecycle() -> None:
    demo = {"kind": "track", "event": "Demo Requested", "channel": "email"}
    state = step(None, "user-1", [make_event(**demo, timestamp_ms=T0 + HOUR, message_id="d")], DEFAULT_MODEL).state
    assert state is not None and state.journey is not None and len(state.journey.history) > 1
    late = page(T0, DENIED, "w")
    state = step(state, "user-1", [late], DEFAULT_MODEL).state
    state = step(state, "user-1", [Tick(NOW)], DEFAULT_MODEL).state  # the walk put off comes due
    fresh = step(
        None, "user-1", [late, make_event(**demo, timestamp_ms=T0 + HOUR, message_id="d"), Tick(NOW)], DEFAULT_MODEL
    )
    assert state is not None and fresh.state is not None and state.journey is not None
    assert state.journey == fresh.state.journey
    assert [e.stage for e in state.journey.history] == [
        DEFAULT_MODEL.lifecycle.initial if DEFAULT_MODEL.lifecycle else ""
    ]


# --- the view --------------------------------------------------------------------------------------


def test_the_view_carries_the_consent_and_its_engagement_equals_the_full_states() -> None:
    events = [opened(T0 + i * HOUR, f"e{i}") for i in range(6)] + [page(T0 + 3 * HOUR - 1, DENIED, "w")]
    state = fold(events)
    view = decode_view(encode_view(view_of(state, MODEL)))
    assert view.consent == (T0 + 3 * HOUR - 1, DENIED)
    assert engagement_of_view(view, MODEL, NOW).score == pytest.approx(score(state), abs=1e-6)


def test_a_kept_earned_points_follows_a_late_consent() -> None:
    earned = EarnedPoints()
    state = fold([opened(T0 + i * HOUR, f"e{i}") for i in range(4)])
    view_of(state, MODEL, earned)
    state = apply_events(state, "user-1", [page(T0 + HOUR + 1, DENIED, "w")], MODEL)  # no hit, the timeline moved
    kept = view_of(state, MODEL, earned)
    assert kept.engagement == view_of(state, MODEL).engagement
    assert engagement_of_view(kept, MODEL, NOW).score == pytest.approx(score(state), abs=1e-6)


# --- codecs and bounds ---------------------------------------------------------------------------


def test_the_state_with_its_consent_round_trips() -> None:
    state = fold([page(T0, DENIED, "w"), opened(T0 + HOUR, "e"), page(T0 + 2 * HOUR, GRANTED, "g")])
    again = decode_state(encode(state))
    assert again == state
    assert again.consent_log == [(T0, ("functional",)), (T0 + 2 * HOUR, ("analytics", "functional"))]


def test_the_timeline_is_bounded_and_settles_the_hits_before_it() -> None:
    model = model_from(RULES, name="small", consent=CONSENT, storage={"max_hits_per_contact": 16})
    events = [page(T0 + i * MINUTE, DENIED if i % 2 else GRANTED) for i in range(100)]
    state = fold(events, model)
    assert len(state.consent_log) <= 16
    assert all(h.ts >= state.consent_log[0][0] for h in state.hits)
    step_by_step: ContactState | None = None
    for event in events:
        step_by_step = apply_events(step_by_step, "user-1", [event], model)
    assert step_by_step is not None and len(step_by_step.consent_log) <= 16


# --- order independence (hypothesis) -------------------------------------------------------------

_consents: st.SearchStrategy[dict[str, bool] | None] = st.sampled_from(
    [None, None, GRANTED, DENIED, {"marketing": True}, {}]
)
_kinds: st.SearchStrategy[dict[str, Any]] = st.sampled_from(
    [
        {"kind": "page", "event": None, "channel": "web", "path": "/"},
        {"kind": "track", "event": "Email Opened", "channel": "email"},
        {"kind": "track", "event": "Demo Requested", "channel": "web"},
        {"kind": "track", "event": "Order Completed", "channel": "store"},
        {"kind": "track", "event": "Nothing", "channel": "web"},
    ]
)
_times = st.integers(min_value=0, max_value=4 * 24).map(lambda q: T0 + q * HOUR)


@st.composite
def event_lists(draw: st.DrawFn, max_size: int = 30) -> list[Event]:
    """Distinct events, with or without a consent object, and a few re-sends of some of them."""
    drawn = draw(st.lists(st.tuples(_kinds, _times, _consents), min_size=1, max_size=max_size))
    events = [
        Event(message_id=f"m{i:03d}", timestamp_ms=ts, user_id="user-1", consent=consent, **fields)
        for i, (fields, ts, consent) in enumerate(drawn)
    ]
    return events + draw(st.lists(st.sampled_from(events), max_size=5))


def engagement_curve(state: ContactState, model: Model) -> list[float]:
    return [engagement_at(state, model, t).score for t in (T0, T0 + DAY, T0 + 3 * DAY, NOW)]


@PROPERTY
@given(data=st.data(), events=event_lists(), model=st.sampled_from([MODEL, STRICT]))
def test_any_order_and_batching_give_the_same_state(data: st.DataObject, events: list[Event], model: Model) -> None:
    expected = fold(events, model)
    shuffled = data.draw(st.permutations(events))
    cut = data.draw(st.integers(min_value=0, max_value=len(events)))
    in_two = apply_events(apply_events(None, "user-1", shuffled[:cut], model), "user-1", shuffled[cut:], model)
    one_by_one: ContactState | None = None
    for event in reversed(events):
        one_by_one = apply_events(one_by_one, "user-1", [event], model)
    for actual in (in_two, one_by_one):
        assert actual == expected
        assert engagement_curve(actual, model) == engagement_curve(expected, model)


@PROPERTY
@given(data=st.data(), events=event_lists(max_size=20))
def test_the_fold_gives_the_same_journey_in_any_order(data: st.DataObject, events: list[Event]) -> None:
    """Stage, every stage change (the initial entry included) and engagement."""
    expected = step(None, "user-1", [*events, Tick(NOW)], DEFAULT_MODEL).state
    state: ContactState | None = None
    for event in data.draw(st.permutations(events)):
        state = step(state, "user-1", [event], DEFAULT_MODEL).state
    tick = step(state, "user-1", [Tick(NOW)], DEFAULT_MODEL).state
    assert expected is not None and tick is not None and expected.journey is not None and tick.journey is not None
    assert tick.journey.stage == expected.journey.stage
    assert [(e.stage, e.entered_ms, e.cause) for e in tick.journey.history] == [
        (e.stage, e.entered_ms, e.cause) for e in expected.journey.history
    ]
    assert engagement_curve(tick, DEFAULT_MODEL) == engagement_curve(expected, DEFAULT_MODEL)


@PROPERTY
@given(events=event_lists(), withdrawn=_times)
def test_after_a_withdrawal_the_score_only_decays(events: list[Event], withdrawn: int) -> None:
    """Nothing granted after the withdrawal: from its instant on, the score is its value decayed."""
    kept = [e for e in events if e.timestamp_ms < withdrawn or not (e.consent and granted_categories(e.consent))]
    state = fold([*kept, page(withdrawn, DENIED, "withdrawal")])
    at_withdrawal = engagement_at(state, MODEL, withdrawn, top=0).score
    for later in (withdrawn + HOUR, withdrawn + DAY, withdrawn + 5 * DAY):
        expected = at_withdrawal * math.pow(2.0, -(later - withdrawn) / MODEL.half_life_ms)
        assert engagement_at(state, MODEL, later, top=0).score == pytest.approx(expected, abs=2e-6)
