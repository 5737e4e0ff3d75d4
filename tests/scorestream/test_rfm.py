"""Customer value core: the purchase ledger's order independence, refunds, currencies, RFM facts, quintiles, segments."""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scorestream import Event, ModelError
from scorestream.clv import summarise
from scorestream.rfm import (
    DAY_MS,
    VALUE_VERSION,
    CustomerValue,
    RfmFacts,
    apply_purchase_events,
    boundaries,
    clv_summary,
    population_boundaries,
    rfm_score,
    score,
    summary,
)
from scorestream.rules.value import DEFAULT_SEGMENTS, SegmentRule, ValueConfig, segment_of
from tests.factories import DAY, HOUR, T0, make_event

PROPERTY = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])

CONFIG = ValueConfig(base_currency="EUR", rates={"usd": 0.5, "GBP": 2.0})


def order(order_id: str | None = "O1", ts: int = T0, channel: str = "web", **props: Any) -> Event:
    properties = {"order_id": order_id, **props} if order_id is not None else props
    return make_event(event="Order Completed", channel=channel, timestamp_ms=ts, properties=properties)


def refund(order_id: str = "O1", ts: int = T0 + HOUR, **props: Any) -> Event:
    return make_event(
        event="Order Refunded", channel="store", timestamp_ms=ts, properties={"order_id": order_id, **props}
    )


def fold(*events: Event, config: ValueConfig = CONFIG) -> CustomerValue:
    return apply_purchase_events(None, events, config)


def facts(*events: Event, as_of: int = T0 + 10 * DAY, config: ValueConfig = CONFIG) -> RfmFacts:
    return summary(fold(*events, config=config), as_of)


# --- order independence and idempotence ---------------------------------------------------------

_amounts: st.SearchStrategy[dict[str, Any]] = st.one_of(
    st.builds(lambda v: {"total": v}, st.sampled_from([0, 10, 25.5, 100, -5, "40"])),
    st.builds(lambda v: {"revenue": v}, st.sampled_from([10, 60])),
    st.builds(
        lambda p, q: {"products": [{"price": p, "quantity": q}, {"price": 5}]},
        st.sampled_from([3, 12.5]),
        st.sampled_from([1, 2, None]),
    ),
    st.just({}),
)
_currencies = st.sampled_from([{}, {"currency": "EUR"}, {"currency": "usd"}, {"currency": "GBP"}, {"currency": "XYZ"}])
_ids = st.sampled_from([{"order_id": "A"}, {"order_id": "B"}, {"checkout_id": "B"}, {"order_id": 7}, {}])
_orders = st.tuples(st.just("Order Completed"), _ids, _amounts, _currencies, st.just({}))
_refunds = st.tuples(
    st.just("Order Refunded"),
    _ids,
    _amounts,
    _currencies,
    st.sampled_from([{}, {"refund_id": "r1"}, {"refund_id": "r2"}]),
)
_others = st.tuples(st.sampled_from(["Product Viewed", "Email Opened"]), _ids, _amounts, st.just({}), st.just({}))
_fields = st.tuples(
    st.one_of(_orders, _refunds, _others),
    st.integers(min_value=0, max_value=48).map(lambda h: T0 + h * HOUR),
    st.sampled_from(["web", "store", "email"]),
)


@st.composite
def purchase_events(draw: st.DrawFn, max_size: int = 20) -> list[Event]:
    """Distinct messages (same order ids on several channels, refunds before orders...) plus exact re-sends."""
    drawn = draw(st.lists(_fields, min_size=1, max_size=max_size))
    events = [
        Event(
            message_id=f"m{i:03d}",
            kind="track",
            event=name,
            timestamp_ms=ts,
            channel=channel,
            user_id="user-1",
            properties={**ids, **amount, **currency, **extra},
        )
        for i, ((name, ids, amount, currency, extra), ts, channel) in enumerate(drawn)
    ]
    return events + draw(st.lists(st.sampled_from(events), max_size=6))


@PROPERTY
@given(data=st.data(), events=purchase_events())
def test_any_order_and_any_duplicates_give_the_same_ledger(data: st.DataObject, events: list[Event]) -> None:
    reference = fold(*_distinct(events))
    shuffled = data.draw(st.permutations(events))
    assert fold(*shuffled) == reference
    as_of = T0 + 3 * DAY
    assert summary(fold(*shuffled), as_of) == summary(reference, as_of)


@PROPERTY
@given(data=st.data(), events=purchase_events())
def test_batches_compose_like_one_fold(data: st.DataObject, events: list[Event]) -> None:
    shuffled = data.draw(st.permutations(events))
    cut = data.draw(st.integers(min_value=0, max_value=len(shuffled)))
    stepwise = apply_purchase_events(apply_purchase_events(None, shuffled[:cut], CONFIG), shuffled[cut:], CONFIG)
    assert stepwise == fold(*events)
    assert apply_purchase_events(stepwise, events, CONFIG) == stepwise  # replaying everything changes nothing


@PROPERTY
@given(events=purchase_events())
def test_net_revenue_is_never_negative_and_facts_are_consistent(events: list[Event]) -> None:
    f = summary(fold(*events), T0 + 3 * DAY)
    assert f.monetary >= 0.0
    assert 0 <= f.unvalued <= f.frequency <= len({e.message_id for e in events})
    if f.frequency:
        assert f.first_order_ms is not None and f.last_order_ms is not None and f.recency_days is not None
        assert f.first_order_ms <= f.last_order_ms and f.recency_days >= 0.0
    else:
        assert (f.first_order_ms, f.last_order_ms, f.recency_days, f.aov) == (None, None, None, 0.0)


def _distinct(events: list[Event]) -> list[Event]:
    seen: dict[str, Event] = {}
    for e in events:
        seen.setdefault(e.message_id, e)
    return list(seen.values())


def test_conflicting_copies_of_one_message_id_resolve_the_same_way_in_any_order() -> None:
    a = order("O1", total=10)
    b = dataclasses.replace(a, properties={"order_id": "O1", "total": 99})
    assert fold(a, b) == fold(b, a)
    assert fold(a, b).orders[0].amount == 10.0


# --- orders: identity, dedupe across channels, amounts -----------------------------------------


def test_one_order_sent_by_web_and_by_the_store_counts_once_earliest_copy_wins() -> None:
    web = order("S77-341", ts=T0 + HOUR, channel="web", total=129.0)
    store = order("S77-341", ts=T0, channel="store", total=129.0)
    value = fold(web, store)
    assert len(value.orders) == 1
    assert value.orders[0].channel == "store" and value.orders[0].mid == store.message_id
    f = summary(value, T0 + DAY)
    assert (f.frequency, f.monetary) == (1, 129.0)


def test_copies_at_the_same_time_resolve_by_message_id() -> None:
    a = make_event(message_id="b", event="Order Completed", channel="web", properties={"order_id": "X", "total": 1})
    b = make_event(message_id="a", event="Order Completed", channel="store", properties={"order_id": "X", "total": 2})
    assert fold(a, b).orders[0].mid == "a" == fold(b, a).orders[0].mid


def test_order_identity_falls_back_to_checkout_id_then_message_id() -> None:
    value = fold(
        order(None, checkout_id="C1", total=5),
        order("C1", total=5),  # the same order as the checkout
        order(None, total=7),
        order(None, total=7),  # no id at all: every message is its own order
        make_event(event="Order Completed", properties={"order_id": 42, "total": 1}),  # numeric ids are ids
    )
    assert sorted(o.order_id for o in value.orders)[:2] == ["42", "C1"]
    assert len(value.orders) == 4


@pytest.mark.parametrize(
    ("props", "amount"),
    [
        ({"total": 120, "revenue": 100, "products": [{"price": 1}]}, 120.0),
        ({"revenue": 100, "products": [{"price": 1}]}, 100.0),
        ({"total": "12.5"}, 12.5),
        ({"total": "n/a", "revenue": 9}, 9.0),
        ({"products": [{"price": 10, "quantity": 3}, {"price": 2.5}, {"name": "no price"}, "junk"]}, 32.5),
        ({}, 0.0),
        ({"total": -20}, 0.0),
        ({"total": True}, 0.0),
        ({"total": float("inf")}, 0.0),
    ],
)
def test_order_amount_is_total_else_revenue_else_products(props: dict[str, Any], amount: float) -> None:
    assert fold(order("O", **props)).orders[0].amount == amount


def test_other_events_and_other_kinds_are_ignored() -> None:
    noise = [
        make_event(event="Product Viewed", properties={"order_id": "O1", "total": 5}),
        make_event(kind="page", event=None, name="Order Completed", properties={"total": 5}),
    ]
    value = fold(*noise)
    assert value == CustomerValue(base_currency="EUR")
    assert apply_purchase_events(value, noise, CONFIG) is value


# --- refunds -----------------------------------------------------------------------------------


def test_partial_refunds_add_up_and_never_go_below_zero() -> None:
    o = order("O1", total=100)
    assert facts(o, refund("O1", total=30)).monetary == 70.0
    assert facts(o, refund("O1", total=30), refund("O1", revenue=50)).monetary == 20.0
    assert facts(o, refund("O1", total=-30)).monetary == 70.0  # a refund sent negative is still a refund
    over = facts(o, order("O2", total=10), refund("O1", total=80), refund("O1", total=80))
    assert (over.monetary, over.frequency) == (10.0, 1)


def test_a_refund_without_amount_refunds_the_whole_order() -> None:
    f = facts(order("O1", total=100), order("O2", ts=T0 + DAY, total=40), refund("O2"))
    assert (f.frequency, f.monetary, f.last_order_ms) == (1, 100.0, T0)


def test_a_refund_by_products() -> None:
    f = facts(order("O1", total=100), refund("O1", products=[{"price": 20, "quantity": 2}]))
    assert f.monetary == 60.0


def test_a_refund_that_arrives_before_its_order_is_applied_when_the_order_arrives() -> None:
    early = refund("O1", ts=T0 - HOUR, total=25)
    value = apply_purchase_events(None, [early], CONFIG)
    assert summary(value, T0 + DAY).frequency == 0 and len(value.refunds) == 1
    value = apply_purchase_events(value, [order("O1", total=100)], CONFIG)
    assert summary(value, T0 + DAY).monetary == 75.0


def test_a_refund_is_identified_by_refund_id_then_message_id() -> None:
    o = order("O1", total=100)
    same = [refund("O1", total=10, refund_id="R-9"), refund("O1", ts=T0 + 2 * HOUR, total=10, refund_id="R-9")]
    assert facts(o, *same).monetary == 90.0
    assert facts(o, refund("O1", total=10), refund("O1", total=10)).monetary == 80.0


def test_a_refund_naming_no_order_is_ignored() -> None:
    stray = make_event(event="Order Refunded", properties={"total": 10})
    assert fold(stray).refunds == ()


def test_refunds_and_orders_after_as_of_are_not_seen_yet() -> None:
    events = [order("O1", total=100), refund("O1", ts=T0 + 5 * DAY, total=40), order("O2", ts=T0 + 6 * DAY, total=1)]
    assert facts(*events, as_of=T0 + 4 * DAY).monetary == 100.0
    assert facts(*events, as_of=T0 + 5 * DAY).monetary == 60.0
    assert facts(*events, as_of=T0 + 6 * DAY).frequency == 2


# --- currencies --------------------------------------------------------------------------------


def test_amounts_are_converted_to_the_base_currency() -> None:
    f = facts(order("O1", total=100, currency="usd"), order("O2", total=10, currency=" GBP "), order("O3", total=5))
    assert f.monetary == 100 * 0.5 + 10 * 2.0 + 5
    assert fold(order("O1", total=100, currency="USD")).orders[0].base_amount == 50.0


def test_a_refund_in_another_currency_is_converted_and_one_without_currency_is_in_the_orders() -> None:
    o = order("O1", total=100, currency="USD")  # 50 EUR
    assert facts(o, refund("O1", total=20)).monetary == 40.0  # 20 USD
    assert facts(o, refund("O1", total=5, currency="EUR")).monetary == 45.0  # 5 EUR = 10 USD
    assert facts(o, refund("O1", total=5, currency="GBP")).monetary == 40.0  # 5 GBP = 10 EUR


def test_an_unknown_currency_keeps_the_order_unvalued_and_counts_it() -> None:
    value = fold(order("O1", total=1000, currency="JPY"), order("O2", total=30), refund("O2", total=5, currency="XYZ"))
    assert value.unconverted == 2
    assert value.orders[0].rate is None and value.orders[0].base_amount is None
    f = summary(value, T0 + DAY)
    assert (f.frequency, f.unvalued, f.monetary, f.aov) == (2, 1, 30.0, 30.0)  # the XYZ refund is not applied


def test_an_order_in_an_unknown_currency_can_still_be_refunded_in_full_or_in_its_currency() -> None:
    o = order("O1", total=1000, currency="JPY")
    assert facts(o, refund("O1")).frequency == 0
    assert facts(o, refund("O1", total=1000, currency="jpy")).frequency == 0
    assert facts(o, refund("O1", total=999)).frequency == 1


def test_a_ledger_in_another_base_currency_or_a_newer_version_is_refused() -> None:
    value = fold(order("O1", total=1))
    with pytest.raises(ValueError, match="kept in EUR"):
        apply_purchase_events(value, [], ValueConfig(base_currency="USD"))
    with pytest.raises(ValueError, match="newer"):
        apply_purchase_events(CustomerValue(base_currency="EUR", v=VALUE_VERSION + 1), [], CONFIG)


@pytest.mark.parametrize(
    "raw",
    [
        {"base_currency": ""},
        {"rates": {"USD": 0}},
        {"rates": {"USD": "1.1"}},
        {"rates": {"EUR": 2}},
        {"rates": []},
        {"order_events": []},
        {"refund_events": "Order Completed"},
        {"colour": "blue"},
    ],
)
def test_invalid_value_configuration_is_refused(raw: dict[str, Any]) -> None:
    with pytest.raises(ModelError):
        ValueConfig.from_dict({"base_currency": "EUR", **raw})


# --- facts -------------------------------------------------------------------------------------


def test_the_facts_of_three_orders() -> None:
    events = [order("A", total=10), order("B", ts=T0 + 10 * DAY, total=20), order("C", ts=T0 + 20 * DAY, total=30)]
    assert facts(*events, as_of=T0 + 30 * DAY) == RfmFacts(
        as_of_ms=T0 + 30 * DAY,
        recency_days=10.0,
        frequency=3,
        monetary=60.0,
        aov=20.0,
        first_order_ms=T0,
        last_order_ms=T0 + 20 * DAY,
    )
    early = facts(*events, as_of=T0 + 15 * DAY)
    assert (early.frequency, early.recency_days, early.monetary) == (2, 5.0, 30.0)
    assert summary(None, T0) == facts(as_of=T0)


def test_the_ledger_feeds_the_clv_model() -> None:
    events = [order("A", total=10), order("B", ts=T0 + 7 * DAY, total=20), refund("B", total=5)]
    value = fold(*events)
    assert clv_summary(value, T0 + 14 * DAY) == summarise([(T0, 10.0), (T0 + 7 * DAY, 15.0)], T0 + 14 * DAY, DAY_MS)
    assert clv_summary(fold(order("A", total=10), refund("A")), T0 + DAY) is None
    assert clv_summary(None, T0) is None


# --- quintiles ---------------------------------------------------------------------------------


def test_quintile_boundaries_of_known_data() -> None:
    values = [float(v) for v in range(1, 11)]
    assert boundaries(values) == (2.0, 4.0, 6.0, 8.0)
    assert [score(v, (2.0, 4.0, 6.0, 8.0)) for v in values] == [1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    assert boundaries(reversed(values)) == (2.0, 4.0, 6.0, 8.0)
    assert boundaries([5.0]) == (5.0, 5.0, 5.0, 5.0)
    assert boundaries([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]) == (2.0, 3.0, 5.0, 6.0)
    with pytest.raises(ValueError, match="empty"):
        boundaries([])
    with pytest.raises(ValueError, match="NaN"):
        boundaries([1.0, math.nan])


def test_recency_is_scored_reversed_fewer_days_is_better() -> None:
    days = [float(v) for v in range(1, 11)]
    bounds = boundaries(days, reverse=True)
    assert bounds == (9.0, 7.0, 5.0, 3.0)
    assert [score(d, bounds, reverse=True) for d in days] == [5, 5, 4, 4, 3, 3, 2, 2, 1, 1]


def test_ties_never_split_and_go_to_the_lower_score() -> None:
    frequencies = [1.0] * 60 + [2.0] * 20 + [3.0] * 10 + [5.0] * 10
    bounds = boundaries(frequencies)
    assert bounds == (1.0, 1.0, 1.0, 2.0)
    assert Counter(score(f, bounds) for f in frequencies) == {1: 60, 4: 20, 5: 20}
    assert score(0.0, bounds) == 1 and score(99.0, bounds) == 5


@PROPERTY
@given(values=st.lists(st.integers(min_value=-1000, max_value=1000), min_size=5, max_size=60, unique=True))
def test_distinct_values_fill_quintiles_evenly(values: list[int]) -> None:
    n = len(values)
    for reverse in (False, True):
        bounds = boundaries(map(float, values), reverse=reverse)
        sizes = Counter(score(float(v), bounds, reverse=reverse) for v in values)
        assert sorted(sizes) == [1, 2, 3, 4, 5]
        assert all(n // 5 <= size <= -(-n // 5) for size in sizes.values())


@PROPERTY
@given(
    lasts=st.lists(st.integers(min_value=0, max_value=400).map(lambda d: T0 + d * HOUR), min_size=1, max_size=40),
)
def test_recency_on_last_order_time_equals_reversed_recency_days(lasts: list[int]) -> None:
    as_of = T0 + 401 * HOUR
    days = [(as_of - t) / DAY_MS for t in lasts]
    by_days = boundaries(days, reverse=True)
    by_time = boundaries(map(float, lasts))
    assert [score(d, by_days, reverse=True) for d in days] == [score(float(t), by_time) for t in lasts]


def test_population_scores_and_segments() -> None:
    population = [
        facts(*[order(f"{c}-{i}", ts=T0 + c * DAY, total=10 * (c + 1)) for i in range(c % 5 + 1)], as_of=T0 + 30 * DAY)
        for c in range(10)
    ]
    population.append(facts(as_of=T0 + 30 * DAY))  # a contact who never bought: not in the population
    bounds = population_boundaries(population)
    assert bounds.customers == 10
    assert rfm_score(population[-1], bounds) is None
    best = rfm_score(population[9], bounds)  # latest orders, 5 of them, most money
    worst = rfm_score(population[0], bounds)  # oldest single small order
    assert best is not None and (best.r, best.f, best.m, best.segment) == (5, 5, 5, "Champions")
    assert worst is not None and (worst.r, worst.f, worst.m, worst.segment) == (1, 1, 1, "Lost")
    with pytest.raises(ValueError, match="no customers"):
        population_boundaries([population[-1]])


# --- segments ----------------------------------------------------------------------------------

EXPECTED_GRID = {  # R -> segment of F = 1..5
    5: ["New Customers", "Potential Loyalist", "Potential Loyalist", "Champions", "Champions"],
    4: ["Promising", "Potential Loyalist", "Potential Loyalist", "Loyal", "Loyal"],
    3: ["About To Sleep", "About To Sleep", "Need Attention", "Loyal", "Loyal"],
    2: ["Hibernating", "Hibernating", "At Risk", "At Risk", "Can't Lose Them"],
    1: ["Lost", "Hibernating", "At Risk", "At Risk", "Can't Lose Them"],
}


def test_every_cell_of_the_grid_has_exactly_one_segment() -> None:
    for r in range(1, 6):
        for f in range(1, 6):
            assert any(rule.matches(r, f) for rule in DEFAULT_SEGMENTS)
            assert segment_of(r, f) == EXPECTED_GRID[r][f - 1]  # the first matching rule's name
    assert len({rule.name for rule in DEFAULT_SEGMENTS}) == 11
    with pytest.raises(ValueError, match=r"1\.\.5"):
        segment_of(0, 3)


def test_segments_can_be_overridden_from_the_model_file() -> None:
    config = ValueConfig.from_dict(
        {
            "base_currency": "pln",
            "rates": {"EUR": 4.3},
            "order_events": ["Order Completed", "Purchase"],
            "segments": [
                {"name": "VIP", "r": [4, 5], "f": 5},
                {"name": "Active", "r": [3, 5], "f": [1, 5]},
                {"name": "Lapsed", "r": [1, 2], "f": [1, 5]},
            ],
        }
    )
    assert config.base_currency == "PLN" and config.rates == {"EUR": 4.3, "PLN": 1.0}
    assert [segment_of(r, 5, config.segments) for r in range(1, 6)] == ["Lapsed", "Lapsed", "Active", "VIP", "VIP"]
    assert segment_of(5, 1, config.segments) == "Active"
    purchase = make_event(event="Purchase", properties={"order_id": "P", "total": 10, "currency": "EUR"})
    assert summary(apply_purchase_events(None, [purchase], config), T0).monetary == 43.0


@pytest.mark.parametrize(
    ("segments", "message"),
    [
        ([{"name": "Top", "r": [2, 5], "f": [1, 5]}], "no rule covers R=1, F=1"),
        ([{"name": "All", "r": [1, 5], "f": [1, 5]}, {"name": "Never", "r": 5, "f": 5}], "never match"),
        ([{"name": "Bad", "r": [5, 1], "f": [1, 5]}], "range"),
        ([{"name": "Bad", "r": [1, 6], "f": [1, 5]}], "range"),
        ([{"name": "", "r": [1, 5], "f": [1, 5]}], "name"),
        ([{"name": "X", "r": [1, 5], "f": [1, 5], "m": 3}], "unknown"),
        ([], "at least one"),
        ({"Champions": "55"}, "list"),
    ],
)
def test_a_segment_grid_with_gaps_or_dead_rules_is_refused(segments: object, message: str) -> None:
    with pytest.raises(ModelError, match=message):
        ValueConfig.from_dict({"segments": segments})


def test_segment_rules_are_plain_data() -> None:
    assert DEFAULT_SEGMENTS[0] == SegmentRule("Champions", (5, 5), (4, 5))
    assert ValueConfig().segments is DEFAULT_SEGMENTS


@settings(max_examples=80, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["o", "r"]),
            st.sampled_from(["A", "B", "C", "D"]),
            st.sampled_from([None, 10.0, 35.5, 120.0]),
            st.sampled_from([None, "USD", "EUR", "XYZ"]),
        ),
        max_size=12,
    )
)
def test_facts_timeline_steps_equal_summary_at_each_instant(records: list[tuple[str, str, Any, Any]]) -> None:
    from scorestream.rfm import facts_timeline

    config = ValueConfig(rates={"EUR": 1.1})
    events = []
    for i, (kind, oid, amount, currency) in enumerate(records):
        props: dict[str, Any] = {"order_id": oid}
        if amount is not None:
            props["total"] = amount
        if currency is not None:
            props["currency"] = currency
        make = order if kind == "o" else refund
        events.append(make(ts=T0 + i * HOUR, **props))
    value = apply_purchase_events(None, events, config)
    steps = facts_timeline(value)
    assert [s.key for s in steps] == sorted(s.key for s in steps)
    for s in steps:
        facts = summary(value, s.key[0])  # one record per instant: the step is the instant
        assert (s.frequency, s.monetary) == (facts.frequency, facts.monetary)
    assert all(s.monetary == 0.0 for s in facts_timeline(value, monetary=False))


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.booleans(),
            st.floats(min_value=1e-9, max_value=1e12, allow_nan=False, allow_infinity=False),
        ),
        max_size=60,
    )
)
def test_the_timelines_running_total_is_fsum_of_what_is_still_counted(ops: list[tuple[bool, float]]) -> None:
    """The timeline keeps its monetary total with exact partials (added, and taken away by adding
    the negation); at every step it is ``math.fsum`` of the values still counted, to the bit."""
    from scorestream.rfm import _add_exact

    partials: list[float] = []
    counted: list[float] = []
    for remove, x in ops:
        if remove and counted:
            y = counted.pop(len(counted) // 2)
            _add_exact(partials, -y)
        else:
            counted.append(x)
            _add_exact(partials, x)
        assert math.fsum(partials) == math.fsum(counted)


def test_a_long_ledgers_timeline_matches_summary_at_every_step() -> None:
    """Hundreds of orders of very different sizes, some refunded in part or in full: each step's
    totals are what :func:`summary` computes from scratch at that instant."""
    from scorestream.rfm import facts_timeline

    config = ValueConfig(rates={"EUR": 1.1, "JPY": 0.0067})
    events = []
    for i in range(300):
        currency = ("USD", "EUR", "JPY")[i % 3]
        events.append(order(ts=T0 + 2 * i * HOUR, order_id=f"o{i}", total=0.01 * 7.3 ** (i % 17), currency=currency))
        if i % 5 == 0:
            events.append(refund(ts=T0 + (2 * i + 1) * HOUR, order_id=f"o{i // 2}", total=0.5))
        if i % 11 == 0:
            events.append(refund(ts=T0 + (2 * i + 1) * HOUR + 60_000, order_id=f"o{i}"))  # one record per instant
    value = apply_purchase_events(None, events, config)
    steps = facts_timeline(value)
    assert len(steps) == len(value.orders) + len(value.refunds)
    for s in steps:
        facts = summary(value, s.key[0])
        assert (s.frequency, s.monetary) == (facts.frequency, facts.monetary)


# --- a free order is an order ------------------------------------------------------------------


def test_a_free_order_counts_for_frequency_and_recency_and_adds_nothing() -> None:
    paid, free = order("O1", ts=T0, total=30), order("O2", ts=T0 + DAY, total=0)
    f = facts(paid, free, as_of=T0 + 3 * DAY)
    assert (f.frequency, f.monetary, f.last_order_ms, f.recency_days) == (2, 30.0, T0 + DAY, 2.0)
    assert f.aov == 15.0  # two valued orders, one of them free
    only = facts(order("O3", ts=T0, revenue=0))
    assert (only.frequency, only.monetary, only.aov, only.first_order_ms) == (1, 0.0, 0.0, T0)
    assert facts(order("O4", ts=T0)).frequency == 1  # no amount at all: a free order too
    assert facts(order("O5", ts=T0, products=[])).frequency == 1


def test_only_a_refund_removes_an_order_free_or_not() -> None:
    free = order("O1", ts=T0, total=0)
    assert facts(free, refund("O1")).frequency == 0  # a full refund
    assert facts(free, refund("O1", total=0)).frequency == 0  # a refund that leaves nothing, as for a paid order
    paid = order("O2", ts=T0, total=10)
    assert facts(paid, refund("O2", total=10)).frequency == 0
    assert facts(paid, refund("O2", total=4)).frequency == 1
    assert facts(paid, refund("O2", total=4), refund("O2", total=6, refund_id="r2")).frequency == 0


def test_a_free_order_is_a_clv_transaction() -> None:
    events = [order("O1", ts=T0, total=20), order("O2", ts=T0 + 10 * DAY, total=0)]
    s = clv_summary(fold(*events), T0 + 20 * DAY)
    assert s is not None
    assert (s.frequency, s.recency, s.T, s.monetary) == (1, 10.0, 20.0, 0.0)
    assert s == summarise([(T0, 20.0), (T0 + 10 * DAY, 0.0)], T0 + 20 * DAY, DAY_MS)


def test_the_timeline_counts_a_free_order_from_its_instant() -> None:
    from scorestream.rfm import facts_timeline

    steps = facts_timeline(fold(order("O1", ts=T0, total=0), refund("O1", ts=T0 + DAY)))
    assert [(s.key[0], s.frequency, s.monetary) for s in steps] == [(T0, 1, 0.0), (T0 + DAY, 0, 0.0)]
