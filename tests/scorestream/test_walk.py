"""Lifecycle: stage graph, hysteresis, backward moves, flags, timers, thresholds, triggers, order independence."""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.model_file import load_model, read_model_source
from schemas.state import decode_state, encode
from scorestream import ContactState, Event, Model, ModelError, engagement_at
from scorestream.fold import Tick, step
from scorestream.journey import Journey
from scorestream.triggers import journey_triggers
from scorestream.walk import walk
from tests.factories import DAY, DEFAULT_MODEL, HOUR, MINUTE, T0, make_event

B2C = load_model(Path(__file__).parents[2] / "schemas" / "models" / "b2c.yaml")
CEO = {"email": "ann@acme.com", "title": "CEO", "industry": "software", "employees": 200, "address": {"country": "US"}}


def run(
    events: list[Event], until: int | None = None, model: Model = DEFAULT_MODEL, key: str = "user-1"
) -> ContactState:
    inbox: list[Any] = list(events)
    if until is not None:
        inbox.append(Tick(until))
    state, *_ = step(None, key, inbox, model)
    assert state is not None
    return state


def journey(state: ContactState) -> Journey:
    assert state.journey is not None
    return state.journey


def stages(state: ContactState) -> list[tuple[str, str]]:
    return [(e.stage, e.rule) for e in journey(state).history]


def identify(ts: int = T0, **traits: Any) -> Event:
    return make_event(kind="identify", event=None, channel="web", timestamp_ms=ts, traits=traits or dict(CEO))


def track(name: str, ts: int, channel: str = "web", **props: Any) -> Event:
    return make_event(event=name, channel=channel, timestamp_ms=ts, properties=props)


def page(path: str, ts: int, **kw: Any) -> Event:
    return make_event(kind="page", event=None, channel="web", path=path, timestamp_ms=ts, **kw)


def order(ts: int, order_id: str, total: float = 100.0, channel: str = "web") -> Event:
    return track("Order Completed", ts, channel=channel, order_id=order_id, total=total)


def hot_lead(start: int = T0) -> list[Event]:
    """A well-fitting contact who becomes MQL: fit 90 (CEO, software, 200 staff, US, email)."""
    return [
        identify(start),
        track("Whitepaper Downloaded", start + HOUR),
        track("Webinar Registered", start + 2 * HOUR),
        page("/pricing", start + 3 * HOUR),
        page("/pricing/plans", start + 4 * HOUR),
    ]


# --- the B2B graph ---------------------------------------------------------------------------


def test_identified_contact_becomes_lead_then_mql_when_engagement_reaches_40() -> None:
    events = hot_lead()
    state = run(events)
    assert stages(state) == [("subscriber", "initial"), ("lead", "identified"), ("mql", "marketing-qualified")]
    mql = journey(state).history[-1]
    assert mql.entered_ms == T0 + 3 * HOUR  # the third engagement event takes the score to 40
    assert engagement_at(run(events[:4]), DEFAULT_MODEL, T0 + 3 * HOUR).score >= 40
    assert engagement_at(run(events[:3]), DEFAULT_MODEL, T0 + 2 * HOUR).score < 40
    assert mql.cause == events[3].message_id  # the pricing page at T0 + 3 h
    assert journey(state).stage == "mql" and journey(state).since_ms == mql.entered_ms


def test_poor_fit_never_becomes_mql_however_engaged() -> None:
    events = [identify(T0, email="x@gmail.com"), *hot_lead()[1:], page("/pricing", T0 + 5 * HOUR)]
    state = run(events)
    assert journey(state).stage == "lead"


def test_hysteresis_mql_is_left_only_below_20_at_the_instant_decay_crosses_it() -> None:
    state = run(hot_lead(), until=T0 + 60 * DAY)
    history = journey(state).history
    assert [e.stage for e in history][-2:] == ["mql", "recycled"]
    left = history[-1].entered_ms
    assert history[-2].exited_ms == left and history[-1].rule == "mql-cooled" and history[-1].cause is None
    # exactly where the score falls below 20, not at the next event
    assert engagement_at(state, DEFAULT_MODEL, left).score < 20 <= engagement_at(state, DEFAULT_MODEL, left - 1).score
    # between 40 and 20 it stays MQL (entered at 40): at day 10 the score is below 40 but above 20
    mid = run(hot_lead(), until=T0 + 10 * DAY)
    assert 20 <= engagement_at(mid, DEFAULT_MODEL, T0 + 10 * DAY).score < 40
    assert journey(mid).stage == "mql"


def test_recycled_contact_requalifies_when_engagement_returns() -> None:
    later = T0 + 60 * DAY
    events = [*hot_lead(), *hot_lead(later)[1:]]
    state = run(events)
    assert [e.stage for e in journey(state).history] == ["subscriber", "lead", "mql", "recycled", "mql"]


def test_demo_request_with_fit_is_a_hand_raise_to_sql_and_sql_cools_to_recycled() -> None:
    events = [identify(), track("Demo Requested", T0 + HOUR)]
    state = run(events, until=T0 + 90 * DAY)
    assert [(e.stage, e.rule) for e in journey(state).history][1:] == [
        ("lead", "identified"),
        ("sql", "hand-raise"),
        ("recycled", "sql-cooled"),
    ]
    no_fit = run([identify(T0, email="kid@gmail.com"), track("Demo Requested", T0 + HOUR)])
    assert journey(no_fit).stage == "lead"  # fit 0: a hand-raise needs fit >= 15


def test_opportunity_and_a_completed_order_make_a_customer_then_a_referral_an_evangelist() -> None:
    events = [identify(), track("Demo Requested", T0 + HOUR), track("Opportunity Created", T0 + DAY)]
    assert journey(run(events)).stage == "opportunity"
    events += [order(T0 + 10 * DAY, "o-1"), track("Referral Sent", T0 + 20 * DAY)]
    state = run(events)
    assert [e.stage for e in journey(state).history][-3:] == ["opportunity", "customer", "evangelist"]
    assert journey(state).history[-2].rule == "completed-order"


@pytest.mark.parametrize("channel", ["web", "store"])
def test_a_completed_order_makes_any_contact_at_least_a_customer(channel: str) -> None:
    state = run([order(T0, "o-1", channel=channel)])
    assert journey(state).stage == "customer"
    # even a disqualified one (a competitor who buys is a customer)
    state = run([identify(T0, email="spy@rivalscore.com"), order(T0 + DAY, "o-2", channel=channel)])
    assert [e.stage for e in journey(state).history] == ["subscriber", "disqualified", "customer"]


def test_a_fully_refunded_order_is_not_a_purchase() -> None:
    events = [order(T0, "o-1"), track("Order Refunded", T0 + HOUR, order_id="o-1")]
    state = run(events)
    # the order made a customer at T0; history is not rewritten by the refund
    assert [e.stage for e in journey(state).history] == ["subscriber", "customer"]
    assert run([track("Order Refunded", T0, order_id="o-9")]).journey.stage == "subscriber"  # type: ignore[union-attr]


# --- flags -------------------------------------------------------------------------------------


def test_competitor_student_and_job_seeker_are_flagged_with_reasons_and_disqualified() -> None:
    competitor = run([identify(T0, email="eve@RivalScore.com", title="CEO")])
    assert journey(competitor).flags == {"competitor": "Email domain of a competitor"}
    assert journey(competitor).stage == "disqualified"
    student = run([identify(T0, email="sam@mit.edu")])
    assert journey(student).flags == {"student": "Student email address (.edu)"}
    intern = run([identify(T0, email="i@acme.com", title="Marketing Intern")])
    assert set(journey(intern).flags) == {"student"}
    seeker = run([identify(), page("/careers/open-roles", T0 + HOUR)])
    assert journey(seeker).flags == {"job_seeker": "Viewed careers or jobs pages"}
    assert [e.stage for e in journey(seeker).history] == ["subscriber", "lead", "disqualified"]


def test_a_job_seeker_never_reaches_mql_or_sql_but_keeps_history_and_scores() -> None:
    events = [*hot_lead(), page("/jobs", T0 + 30 * MINUTE), track("Demo Requested", T0 + 5 * HOUR)]
    state = run(events)
    assert "mql" not in {e.stage for e in journey(state).history}
    assert "sql" not in {e.stage for e in journey(state).history}
    assert journey(state).stage == "disqualified"
    assert engagement_at(state, DEFAULT_MODEL, T0 + 5 * HOUR).score > 40  # scores are kept
    # a flag raised after MQL takes the contact out at that event
    late = run([*hot_lead(), page("/jobs", T0 + 5 * HOUR)])
    assert [e.stage for e in journey(late).history][-2:] == ["mql", "disqualified"]
    assert journey(late).history[-1].entered_ms == T0 + 5 * HOUR


def test_a_crawler_user_agent_is_flagged_as_a_bot() -> None:
    state = run([page("/", T0, user_agent="Mozilla/5.0 (compatible; Googlebot/2.1)")])
    assert journey(state).flags == {"bot": "Crawler or headless-browser user agent"}
    assert journey(run([page("/", T0, user_agent="Mozilla/5.0 (X11; Linux)")])).flags == {}


def test_corrected_traits_lift_a_trait_flag() -> None:
    state = run([identify(T0, email="sam@mit.edu"), identify(T0 + DAY, email="sam@acme.com")])
    assert journey(state).flags == {}
    assert journey(state).stage == "lead"


def test_persona_is_the_first_matching_rule() -> None:
    assert journey(run([identify()])).persona == "executive"
    assert journey(run([identify(T0, email="m@acme.com", title="Product Manager")])).persona == "practitioner"
    assert journey(run([order(T0, "o-1")])).persona == "shopper"
    assert journey(run([page("/", T0)])).persona is None


# --- timers and thresholds -----------------------------------------------------------------------


def test_cart_abandoned_fires_an_hour_after_the_last_cart_event_without_any_new_event() -> None:
    events = [track("Product Added", T0), track("Checkout Started", T0 + 20 * MINUTE)]
    before = run(events, until=T0 + 30 * MINUTE)
    assert [f for f in journey(before).fired if f.kind == "timer"] == []
    assert journey(before).next_due_ms == T0 + 80 * MINUTE
    old = journey(before)
    after, *_ = step(before, "user-1", [Tick(T0 + 2 * HOUR)], DEFAULT_MODEL)
    assert after is not None
    timers = [f for f in journey(after).fired if f.kind == "timer"]
    assert [(f.name, f.at_ms) for f in timers] == [("cart-abandoned", T0 + 80 * MINUTE)]
    triggers = journey_triggers(old, journey(after), "user-1", DEFAULT_MODEL, _lc())
    assert [t["type"] for t in triggers] == ["cart.abandoned"]
    assert triggers[0]["at_ms"] == T0 + 80 * MINUTE and triggers[0]["contact_id"] == "user-1"


def test_an_order_within_the_hour_cancels_the_cart_timer_even_at_the_deadline() -> None:
    for at in (T0 + 30 * MINUTE, T0 + HOUR):
        state = run([track("Product Added", T0), order(at, "o-1")], until=T0 + 3 * HOUR)
        assert not any(f.name == "cart-abandoned" for f in journey(state).fired), at
    late = run([track("Product Added", T0), order(T0 + HOUR + 1, "o-1")], until=T0 + 3 * HOUR)
    assert [f.at_ms for f in journey(late).fired if f.name == "cart-abandoned"] == [T0 + HOUR]


def test_customer_lapsed_fires_180_days_after_the_last_order_and_a_new_order_restarts_it() -> None:
    state = run([order(T0, "o-1"), order(T0 + 100 * DAY, "o-2")], until=T0 + 400 * DAY)
    lapses = [f.at_ms for f in journey(state).fired if f.name == "customer-lapsed"]
    assert lapses == [T0 + 280 * DAY]


def test_threshold_crossings_up_at_the_event_and_down_by_decay() -> None:
    state = run(hot_lead(), until=T0 + 30 * DAY)
    crossings = [(f.name, f.direction) for f in journey(state).fired if f.kind == "crossing"]
    assert crossings == [("30", "up"), ("30", "down")]
    down = next(f for f in journey(state).fired if f.direction == "down")
    assert (
        engagement_at(state, DEFAULT_MODEL, down.at_ms).score
        < 30
        <= engagement_at(state, DEFAULT_MODEL, down.at_ms - 1).score
    )


def test_next_due_is_when_time_alone_would_change_something() -> None:
    events = hot_lead()
    state = run(events)
    due = journey(state).next_due_ms
    assert due is not None
    # nothing happens before it, something at it
    quiet = run(events, until=due - 1)
    assert journey(quiet).fired == journey(state).fired and stages(quiet) == stages(state)
    moved = run(events, until=due)
    assert journey(moved).fired != journey(state).fired or stages(moved) != stages(state)


# --- B2C ---------------------------------------------------------------------------------------


def test_b2c_journey_cart_abandon_customer_repeat_loyal_at_risk_lapsed_won_back() -> None:
    events = [page("/", T0), page("/pricing", T0 + MINUTE), track("Product Viewed", T0 + 2 * MINUTE)]
    events += [track("Product Viewed", T0 + 3 * MINUTE), track("Product Added", T0 + 4 * MINUTE)]
    state = run(events, until=T0 + 2 * HOUR, model=B2C)
    assert [(e.stage, e.rule) for e in journey(state).history] == [
        ("visitor", "initial"),
        ("engaged", "engaged"),
        ("cart", "carted"),
        ("engaged", "abandoned"),
    ]
    orders = [order(T0 + d * DAY, f"o-{d}") for d in (1, 2, 3, 4, 5)]
    state = run([*events, *orders], until=T0 + 400 * DAY, model=B2C)
    assert [e.stage for e in journey(state).history][3:] == [
        "engaged",
        "customer",
        "repeat",
        "loyal",
        "at_risk",
        "lapsed",
    ]
    at_risk = journey(state).history[-2]
    assert at_risk.entered_ms == T0 + 95 * DAY and journey(state).history[-1].entered_ms == T0 + 185 * DAY
    won = run([*events, *orders, order(T0 + 300 * DAY, "o-back")], until=T0 + 301 * DAY, model=B2C)
    assert [(e.stage, e.rule) for e in journey(won).history][-3:] == [
        ("lapsed", "lapsed"),
        ("repeat", "won-back"),
        ("loyal", "loyal"),  # six orders: at once on to loyal
    ]


# --- order independence ------------------------------------------------------------------------

STORY = [
    identify(T0, email="kim@acme.com", title="VP Sales", industry="saas", employees=80),
    page("/pricing", T0 + HOUR),
    track("Whitepaper Downloaded", T0 + 2 * HOUR),
    track("Product Added", T0 + 3 * HOUR),
    page("/demo", T0 + 4 * HOUR),
    track("Email Link Clicked", T0 + DAY, channel="email"),
    order(T0 + 2 * DAY, "o-1", 700.0),
    track("Order Refunded", T0 + 3 * DAY, order_id="o-1", total=200),
    page("/careers", T0 + 9 * DAY),
    order(T0 + 12 * DAY, "o-2", 50.0, channel="store"),
    track("Referral Sent", T0 + 20 * DAY),
]
AS_OF = T0 + 400 * DAY


def _journey_of(batches: list[list[Event]]) -> Journey:
    state: ContactState | None = None
    for batch in batches:
        state, *_ = step(state, "user-1", batch, DEFAULT_MODEL)
        assert state is not None
        state = decode_state(encode(state))  # through the wire format, as the worker does
    state, *_ = step(state, "user-1", [Tick(AS_OF)], DEFAULT_MODEL)
    assert state is not None
    return journey(state)


@settings(max_examples=60, deadline=None)
@given(st.permutations(list(range(len(STORY)))), st.lists(st.integers(0, len(STORY) - 1), max_size=4), st.data())
def test_the_journey_depends_on_the_set_of_events_not_their_order_batches_or_duplicates(
    order_: list[int], dupes: list[int], data: st.DataObject
) -> None:
    events = [STORY[i] for i in order_] + [STORY[i] for i in dupes]
    cuts = sorted(data.draw(st.sets(st.integers(1, len(events) - 1), max_size=4)))
    batches = [events[a:b] for a, b in zip([0, *cuts], [*cuts, len(events)], strict=True)]
    assert _journey_of(batches) == _journey_of([STORY])


def test_the_reference_story_walks_through_the_expected_stages() -> None:
    j = _journey_of([STORY])
    # fit 70 and engagement 40 by the demo page: MQL; the careers page comes when it is a customer
    assert [e.stage for e in j.history] == ["subscriber", "lead", "mql", "customer", "evangelist"]
    assert j.flags == {"job_seeker": "Viewed careers or jobs pages"}


def test_walk_is_a_function_of_the_state_and_the_instant() -> None:
    state = run(STORY)
    lc = _lc()
    assert walk(state, DEFAULT_MODEL, lc, AS_OF) == walk(decode_state(encode(state)), DEFAULT_MODEL, lc, AS_OF)


def test_history_survives_folding_old_events_away() -> None:
    events = hot_lead()
    events += [page("/pricing", T0 + d * DAY) for d in range(40, 100, 5)]  # old hits fold after 30 days
    state = run(events)
    assert not any(h.ts < T0 + 30 * DAY for h in state.hits)  # the early hits were folded
    j = journey(state)
    assert j.anchor is not None
    assert [e.stage for e in j.history][:3] == ["subscriber", "lead", "mql"]
    assert j.history[2].entered_ms == T0 + 3 * HOUR
    # batch by batch the same
    incremental: ContactState | None = None
    for e in events:
        incremental, *_ = step(incremental, "user-1", [e], DEFAULT_MODEL)
    assert incremental is not None and journey(incremental).history == j.history


# --- triggers ------------------------------------------------------------------------------------


def _lc() -> Any:
    assert DEFAULT_MODEL.lifecycle is not None
    return DEFAULT_MODEL.lifecycle


def test_triggers_carry_stable_ids_before_after_rule_cause_and_model_version() -> None:
    state = run(hot_lead())
    triggers = journey_triggers(None, journey(state), "user-1", DEFAULT_MODEL, _lc())
    kinds = [(t["type"], t["before"], t["after"]) for t in triggers if t["type"] == "stage.changed"]
    assert kinds == [("stage.changed", "subscriber", "lead"), ("stage.changed", "lead", "mql")]
    again = journey_triggers(None, journey(run(list(reversed(hot_lead())))), "user-1", DEFAULT_MODEL, _lc())
    assert [t["id"] for t in again] == [t["id"] for t in triggers]
    assert all(t["model_version"] == DEFAULT_MODEL.version and t["id"].startswith("trg_") for t in triggers)
    assert journey_triggers(journey(state), journey(state), "user-1", DEFAULT_MODEL, _lc()) == []
    up = next(t for t in triggers if t["type"] == "score.threshold_crossed")
    assert up["after"] == {"score": "engagement", "threshold": 30.0, "above": True}


def test_disqualification_emits_contact_disqualified_with_flags() -> None:
    state = run([identify(T0, email="eve@leadforge.io")])
    triggers = journey_triggers(None, journey(state), "user-1", DEFAULT_MODEL, _lc())
    disq = [t for t in triggers if t["type"] == "contact.disqualified"]
    assert len(disq) == 1 and disq[0]["after"]["flags"] == {"competitor": "Email domain of a competitor"}


# --- configuration -------------------------------------------------------------------------------


def _model(**lifecycle: Any) -> Model:
    base: dict[str, Any] = {"name": "t", "engagement": {"rules": [{"id": "r", "match": {"type": "page"}, "points": 5}]}}
    section = {"stages": ["a", "b"], "transitions": [{"id": "go", "from": ["a"], "to": "b"}]}
    section.update(lifecycle)
    return Model.from_dict({**base, "lifecycle": section})


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"stages": []}, "at least one stage"),
        ({"initial": "z"}, "unknown stage 'z'"),
        ({"transitions": [{"id": "go", "from": ["a"], "to": "nowhere"}]}, "unknown stage 'nowhere'"),
        ({"transitions": [{"id": "go", "to": "b", True: ["r"]}]}, "'events:'"),
        ({"transitions": [{"id": "go", "to": "b", "events": ["nope"]}]}, "unknown event(s) ['nope']"),
        (
            {"transitions": [{"id": "go", "to": "b", "when": [{"field": "engagement", "op": "eq", "value": 3}]}]},
            "gt, gte",
        ),
        ({"timers": [{"id": "t", "start": ["r"], "after": "1h", "emit": "x.y"}]}, "emit"),
        ({"timers": [{"id": "t", "start": ["zzz"], "after": "1h"}]}, "unknown event(s)"),
        ({"timers": [{"id": "go", "start": ["r"], "after": "1h"}]}, "unique"),
        ({"stages": ["a", "a"]}, "listed twice"),
    ],
)
def test_lifecycle_errors_name_the_field(section: dict[str, Any], message: str) -> None:
    with pytest.raises(ModelError, match=_escape(message)):
        _model(**section)


def _escape(text: str) -> str:
    import re

    return re.escape(text)


def test_flag_rules_need_exactly_one_of_when_and_match() -> None:
    base = {"name": "t", "lifecycle": {"stages": ["a"]}}
    with pytest.raises(ModelError, match="either 'when'"):
        Model.from_dict({**base, "flags": [{"id": "f", "reason": "x"}]})
    with pytest.raises(ModelError, match="need a 'lifecycle'"):
        Model.from_dict({"name": "t", "flags": [{"id": "f", "when": [{"field": "email", "op": "exists"}]}]})


def test_a_model_without_lifecycle_keeps_no_journey() -> None:
    model = Model.from_dict(
        {"name": "t", "engagement": {"rules": [{"id": "r", "match": {"type": "page"}, "points": 5}]}}
    )
    state = run([page("/", T0)], model=model)
    assert state.journey is None and model.lifecycle is None


def test_decay_guard_instant_is_exact_for_negative_scores_too() -> None:
    # a contact who only unsubscribed: score -25 decays towards 0, never crossing a positive threshold
    state = run([track("Unsubscribed", T0)], until=T0 + 365 * DAY)
    assert [f for f in journey(state).fired if f.kind == "crossing"] == []
    assert math.isclose(engagement_at(state, DEFAULT_MODEL, T0).score, -25.0)


def test_live_delivery_one_event_at_a_time_with_ticks_between_gives_the_same_journey() -> None:
    state: ContactState | None = None
    for event in sorted(STORY, key=lambda e: e.timestamp_ms):
        state, *_ = step(state, "user-1", [event], DEFAULT_MODEL)  # in time order: the walk resumes
        state, *_ = step(state, "user-1", [Tick(event.timestamp_ms + 20 * MINUTE)], DEFAULT_MODEL)
        assert state is not None
        state = decode_state(encode(state))
    state, *_ = step(state, "user-1", [Tick(AS_OF)], DEFAULT_MODEL)
    assert state is not None
    assert journey(state) == _journey_of([STORY])


def test_a_new_model_walks_the_history_again_instead_of_resuming() -> None:
    events = hot_lead()
    state = run(events[:-1])
    assert journey(state).history[0].stage == "subscriber"
    later, *_ = step(state, "user-1", [events[-1]], B2C)  # in time order, but under another model
    assert later is not None
    assert journey(later) == journey(run(events, model=B2C))
    assert journey(later).history[0].stage == "visitor"


def test_a_backfill_behind_the_clock_resumes_and_ends_where_one_walk_ends() -> None:
    # the worker's clock ticks every contact to "now" while old events are still arriving in order
    state: ContactState | None = None
    for event in sorted(STORY, key=lambda e: e.timestamp_ms):
        state, *_ = step(state, "user-1", [event, Tick(AS_OF)], DEFAULT_MODEL)
        assert state is not None and journey(state).cursor is not None
        assert journey(state).cursor.at_ms == state.last_seen_ms  # type: ignore[union-attr]
    assert state is not None and journey(state) == _journey_of([STORY])


@pytest.mark.parametrize(("grain", "per_grid"), [(MINUTE, 1), (HOUR, 1), (HOUR, 2), (DAY, 3)])
def test_kept_positions_change_nothing_but_the_speed(
    monkeypatch: pytest.MonkeyPatch, grain: int, per_grid: int
) -> None:
    """With positions on grids from ``grain`` up (``per_grid`` kept on each), walks resumed from any
    of them give the same journey, positions included, as one walk, for shuffled, duplicated,
    re-batched deliveries."""
    import random

    import scorestream.walk as walk_module

    monkeypatch.setattr(walk_module, "POSITION_GRAIN_MS", grain)
    monkeypatch.setattr(walk_module, "POSITIONS_PER_GRID", per_grid)
    expected = _journey_of([STORY])
    assert len(expected.cursors) >= 1 + per_grid, "the story keeps positions before its newest event"
    rng = random.Random(grain + per_grid)
    for _ in range(150):
        events = list(STORY) + rng.sample(STORY, 2)
        if rng.random() < 0.5:
            rng.shuffle(events)
        else:  # nearly in order: a few swapped neighbours
            events.sort(key=lambda e: e.timestamp_ms)
            for _ in range(3):
                i = rng.randrange(len(events) - 1)
                events[i], events[i + 1] = events[i + 1], events[i]
        cuts = sorted(rng.sample(range(1, len(events)), rng.randint(0, 6)))
        batches = [events[a:b] for a, b in zip([0, *cuts], [*cuts, len(events)], strict=True)]
        assert _journey_of(batches) == expected


def test_late_events_for_a_contact_walked_under_a_second_ago_wait_for_the_clock() -> None:
    events = hot_lead()
    first = run(events[:3])  # walked to T0 + 2 h
    walked = journey(first)
    late = track("Webinar Registered", T0 + 2 * HOUR - 500)  # half a second before the newest event
    state, *_ = step(first, "user-1", [late], DEFAULT_MODEL)
    assert state is not None
    put_off = journey(state)
    assert put_off.deferred_since == late.timestamp_ms
    assert put_off.history == walked.history and put_off.walked_to_ms == walked.walked_to_ms
    assert put_off.next_due_ms is not None and put_off.next_due_ms <= walked.walked_to_ms + 1000
    # the tick the worker sends at that instant walks everything: as if there had been no delay
    state, *_ = step(state, "user-1", [Tick(put_off.next_due_ms)], DEFAULT_MODEL)
    assert state is not None and journey(state).deferred_since is None
    assert journey(state) == journey(run([*events[:3], late], until=put_off.next_due_ms))


def test_timers_and_crossings_trimmed_from_a_full_list_are_not_announced_again() -> None:
    import scorestream.journey as journey_module

    events = [track("Product Added", T0 + h * 2 * HOUR) for h in range(0, 80)]  # a cart abandoned every 2 h
    state = run(events[:70])
    before = journey(state)
    assert len(before.fired) == journey_module.MAX_FIRED
    # a late order cancels one of the recent carts: the list loses an entry at the back, and an
    # old one that had been trimmed comes back at the front. It was announced long ago.
    late = [order(T0 + 120 * HOUR + 30 * MINUTE, "o-late"), identify(T0 + 121 * HOUR, email="c@acme.com")]
    again, *_ = step(state, "user-1", late, DEFAULT_MODEL)  # new traits: a walk from the anchor
    assert again is not None
    after = journey(again)
    assert after.fired[0] not in before.fired  # the old one is back
    triggers = journey_triggers(before, after, "user-1", DEFAULT_MODEL, _lc())
    assert [t for t in triggers if t["type"] == "cart.abandoned"] == []


# --- walks that resume -----------------------------------------------------------------------------


def _small_model() -> Model:
    source = read_model_source()
    source["storage"] = {**source.get("storage", {}), "max_hits_per_contact": 16}
    return Model.from_dict(source)


SMALL = _small_model()
BUSY = [
    identify(T0),
    *[page("/pricing" if i % 3 else "/demo", T0 + i * 5 * HOUR) for i in range(1, 70)],
    *[identify(T0 + d * DAY) for d in (3, 6, 9)],  # an SDK identifies on every visit: the same traits
    order(T0 + 8 * DAY, "o-1", 300.0),
    track("Product Added", T0 + 12 * DAY),
]
BUSY.sort(key=lambda e: e.timestamp_ms)


def _observable(state: ContactState) -> tuple[Any, ...]:
    j = journey(state)
    return j.stage, j.since_ms, j.history, j.fired, j.flags


@settings(max_examples=40, deadline=None)
@given(st.sets(st.integers(1, len(BUSY) - 1), max_size=12))
def test_folding_a_busy_contact_keeps_the_journey_whatever_the_batches(cuts: set[int]) -> None:
    edges = sorted(cuts)
    state: ContactState | None = None
    for a, b in zip([0, *edges], [*edges, len(BUSY)], strict=True):
        state, *_ = step(state, "user-1", BUSY[a:b], SMALL)
        assert state is not None
        state = decode_state(encode(state))
    assert state is not None and len(state.hits) <= 16  # old hits were folded, the anchor moved
    assert _observable(state) == _observable(run(BUSY, model=SMALL))


def test_an_identify_that_changes_no_trait_does_not_walk_again_from_the_anchor(monkeypatch: pytest.MonkeyPatch) -> None:
    import scorestream.walk as walk_module

    state = run(BUSY[:40], model=SMALL)
    applied: list[int] = []
    original = walk_module._Walker.apply

    def counting(self: Any, cp: Any) -> None:
        applied.append(cp.ts)
        original(self, cp)

    monkeypatch.setattr(walk_module._Walker, "apply", counting)
    later = BUSY[40:]
    same, *_ = step(decode_state(encode(state)), "user-1", [identify(later[0].timestamp_ms), *later[:4]], SMALL)
    assert len(state.hits) + 4 > 16, "the step folds old hits away: the anchor moves"
    assert len(applied) <= 10, f"resumed from kept positions, not {len(applied)} checkpoints from the anchor"
    applied.clear()
    changed, *_ = step(decode_state(encode(state)), "user-1", [identify(later[0].timestamp_ms, title="Intern")], SMALL)
    assert len(applied) >= len(state.hits), "a changed trait counts for the whole history: walked from the anchor"
    assert same is not None and changed is not None
    monkeypatch.setattr(walk_module._Walker, "apply", original)
    assert _observable(same) == _observable(run([*BUSY[:40], *later[:4]], model=SMALL))


@pytest.mark.parametrize("total", [0, 0.0, None])
def test_a_free_order_makes_a_customer(total: float | None) -> None:
    props = {"order_id": "o-free"} if total is None else {"order_id": "o-free", "total": total}
    state = run([track("Order Completed", T0, **props)])
    assert journey(state).stage == "customer"
    assert journey(state).history[-1].rule == "completed-order"


# --- positions spaced by event time ---------------------------------------------------------------


def _model_keeping(max_hits: int) -> Model:
    source = read_model_source()
    source["storage"] = {**source.get("storage", {}), "max_hits_per_contact": max_hits}
    return Model.from_dict(source)


ROOMY = _model_keeping(20_000)  # nothing folds: every walk from the anchor starts at the first event
_KINDS = [
    lambda ts: page("/pricing", ts),
    lambda ts: page("/demo", ts),
    lambda ts: track("Product Added", ts),
    lambda ts: track("Email Link Clicked", ts, channel="email"),
    lambda ts: order(ts, f"o-{ts}", 40.0),
    lambda ts: identify(ts),
]
_GAPS = st.one_of(st.integers(0, 40), st.integers(300, 5_000), st.integers(MINUTE, 3 * HOUR), st.integers(DAY, 6 * DAY))


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.tuples(_GAPS, st.integers(0, len(_KINDS) - 1)), min_size=2, max_size=45),
    st.integers(0, 2**32),
    st.booleans(),
)
def test_a_walk_resumed_from_any_kept_position_equals_a_walk_from_the_anchor(
    steps: list[tuple[int, int]], seed: int, folding: bool
) -> None:
    import random

    model = SMALL if folding else ROOMY
    rng = random.Random(seed)
    ts, events = T0, []
    for gap, kind in steps:
        ts += gap
        events.append(_KINDS[kind](ts))
    rng.shuffle(events)  # delivered out of order, in batches: positions made by earlier walks
    state: ContactState | None = None
    for a in range(0, len(events), 4):
        state, *_ = step(state, "user-1", events[a : a + 4], model)
        assert state is not None
        state = decode_state(encode(state))
    assert state is not None and state.last_seen_ms is not None
    state, *_ = step(state, "user-1", [Tick(state.last_seen_ms + 2_000)], model)  # walks put off: walked
    assert state is not None and journey(state).deferred_since is None
    _resumes_alike(state, model, exactly=not folding)


def _resumes_alike(state: ContactState, model: Model, exactly: bool = True, positions: bool = True) -> None:
    """Walks resumed from each of the state's kept positions equal the walk from its anchor
    (``exactly``: in every field; else the stages, timers, flags and, with ``positions``, where
    the positions stand)."""
    lc, as_of = _lc(), max(state.last_seen_ms or 0, state.ticked_ms or 0)
    whole = walk(state, model, lc, as_of)
    for cursor in journey(state).cursors:
        resumed = walk(state, model, lc, as_of, resume_before=cursor.at_ms + 1)
        if exactly:
            assert resumed == whole
            continue
        observed = (resumed.history, resumed.fired, resumed.stage, resumed.flags, resumed.next_due_ms)
        assert observed == (whole.history, whole.fired, whole.stage, whole.flags, whole.next_due_ms)
        if positions:
            assert [c.at_ms for c in resumed.cursors] == [c.at_ms for c in whole.cursors]


def _busy_minute(per_s: int = 100, seconds: int = 60) -> list[Event]:
    step_ms = 1000 // per_s
    return [page("/pricing" if i % 7 else "/demo", T0 + i * step_ms) for i in range(per_s * seconds)]


def _applied_by(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    import scorestream.walk as walk_module

    applied: list[int] = []
    original = walk_module._Walker.apply

    def counting(self: Any, cp: Any) -> None:
        applied.append(cp.ts)
        original(self, cp)

    monkeypatch.setattr(walk_module._Walker, "apply", counting)
    return applied


@pytest.mark.parametrize("late_ms", [300, 2_000, 10_000])
def test_a_busy_contact_resumes_an_event_a_little_late_from_a_position_shortly_before_it(
    monkeypatch: pytest.MonkeyPatch, late_ms: int
) -> None:
    """100 events a second for a minute, then one ``late_ms`` late: the walk resumes from a kept
    position at most a few times the lateness before it, not from the first event a minute back."""
    events = _busy_minute()
    state: ContactState | None = None
    for a in range(0, len(events), 50):  # live: a batch every half second
        state, *_ = step(state, "user-1", events[a : a + 50], ROOMY)
    assert state is not None and state.last_seen_ms is not None
    newest = state.last_seen_ms
    state, *_ = step(decode_state(encode(state)), "user-1", [Tick(newest + 1_500)], ROOMY)
    assert state is not None
    ages = [newest - c.at_ms for c in journey(state).cursors]
    assert len(ages) <= 16, ages
    late = page("/pricing", newest - late_ms)
    applied = _applied_by(monkeypatch)
    # the late event, then the clock's tick (a walk put off within the second is walked by it)
    later, *_ = step(decode_state(encode(state)), "user-1", [late, Tick(newest + 3_000)], ROOMY)
    assert later is not None
    walked_back = newest - min(applied)
    assert late_ms <= walked_back <= 3 * late_ms + 1_000, (walked_back, ages)
    assert len(applied) <= 3 * late_ms // 10 + 101, "a few seconds of checkpoints, not the whole minute (6000)"
    monkeypatch.undo()
    assert journey(later) == journey(run([*events, late], until=newest + 3_000, model=ROOMY))


def test_kept_positions_are_at_geometric_ages_and_bounded_however_busy_the_contact() -> None:
    import scorestream.walk as walk_module

    events = _busy_minute(per_s=50, seconds=300)  # five minutes, 15,000 events
    state = run(events, model=ROOMY)
    cursors = journey(state).cursors
    grains = walk_module._grains(ROOMY)
    assert len(grains) == 11  # 1 s ... 4^10 s (12 days), up to half of fold_after (30 days)
    assert len(cursors) <= walk_module.POSITIONS_PER_GRID * len(grains) + 1
    newest = events[-1].timestamp_ms
    ages = sorted(newest - c.at_ms for c in cursors if c.periodic)
    # two starts of cells on each grid the five minutes span: 1 s, 4 s, 16 s, 64 s, 256 s
    assert ages[0] < 1_000 and ages[-1] >= 64_000, ages
    assert all(b <= 4 * a + 4_000 for a, b in itertools.pairwise(ages)), ages
    assert 6 <= len(ages) <= 10, ages


def test_positions_kept_by_another_rule_still_resume_and_are_dropped(monkeypatch: pytest.MonkeyPatch) -> None:
    """A state written by a build that kept other positions (here: on grids from 1 ms, 40 on each)
    resumes from them with the same result; the next walk keeps only those this rule would make
    (all of them once the ones it lacks have aged out)."""
    import scorestream.walk as walk_module

    events = _busy_minute(per_s=20, seconds=30)
    monkeypatch.setattr(walk_module, "POSITION_GRAIN_MS", 1)
    monkeypatch.setattr(walk_module, "POSITIONS_PER_GRID", 40)
    first = run(events[:400], model=ROOMY)
    assert len(journey(first).cursors) > 30
    monkeypatch.undo()
    later, *_ = step(decode_state(encode(first)), "user-1", events[390:], ROOMY)  # some late, some new
    assert later is not None
    assert _observable(later) == _observable(run(events, model=ROOMY))
    grains = walk_module._grains(ROOMY)
    kept = [c for c in journey(later).cursors if c.periodic]
    assert kept and all(walk_module._level(grains, c.ref_ms, c.at_ms + 1) >= 0 for c in kept)
    assert len(kept) <= walk_module.POSITIONS_PER_GRID * len(grains)
    _resumes_alike(later, ROOMY, exactly=False, positions=False)


@settings(max_examples=200, deadline=None)
@given(st.lists(_GAPS, min_size=1, max_size=80), st.integers(0, 2 * DAY))
def test_which_positions_stay_is_their_rule_and_a_position_dropped_is_never_wanted_again(
    gaps: list[int], offset: int
) -> None:
    """``_keep`` against its definition (fewer than POSITIONS_PER_GRID later candidates cross the
    candidate's coarsest grid), and prefix-closed: what stays after all the checkpoints stayed
    after any earlier part of them (so a walk resumed from a kept position can rebuild the rest)."""
    import scorestream.walk as walk_module

    grains = walk_module._grains(DEFAULT_MODEL)
    times = list(itertools.accumulate(gaps, initial=T0 + offset))
    spans = [(times[i - 1], times[i]) for i in range(1, len(times))]

    def kept(upto: int) -> set[int]:
        newest_first = spans[:upto][::-1]
        flags = walk_module._keep(newest_first, grains, [0] * len(grains))
        return {spans[upto - 1 - i][1] for i, stays in enumerate(flags) if stays}

    levels = [walk_module._level(grains, before, ts) for before, ts in spans]
    expected = {
        ts
        for i, (_, ts) in enumerate(spans)
        if levels[i] >= 0 and sum(1 for later in levels[i + 1 :] if later >= levels[i]) < walk_module.POSITIONS_PER_GRID
    }
    assert kept(len(spans)) == expected
    assert len(expected) <= walk_module.POSITIONS_PER_GRID * len(grains)
    for upto in range(1, len(spans)):
        assert {ts for ts in expected if ts <= spans[upto - 1][1]} <= kept(upto)
