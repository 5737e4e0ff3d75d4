"""Population core: bounded quantile summaries merge within their documented rank error, the hash
sample is partition-independent, the CLV fit recovers synthetic BG/NBD parameters, a contact's value view."""

from __future__ import annotations

import math
import random
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scorestream.clv import clv, expected_purchases, p_alive
from scorestream.population import (
    HORIZON_DAYS,
    ClvFit,
    ClvInputs,
    CustomerFacts,
    PopulationModel,
    build_partition_summary,
    build_population_model,
    contact_hash,
    customer_facts,
    fit_clv,
    merge_sample,
    merged_boundaries,
    merged_quantile,
    quantile_summary,
    segment_for,
    value_view,
)
from scorestream.rfm import (
    DAY_MS,
    CustomerValue,
    RfmBoundaries,
    apply_purchase_events,
    boundaries,
    clv_summary,
    population_boundaries,
    rfm_score,
    summary,
)
from scorestream.rules.value import ValueConfig
from tests.factories import DAY, HOUR, T0, make_event

PROPERTY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
CONFIG = ValueConfig(base_currency="EUR", rates={"USD": 0.5})


def order(order_id: str, ts: int = T0, channel: str = "web", **props: Any) -> Any:
    return make_event(
        event="Order Completed", channel=channel, timestamp_ms=ts, properties={"order_id": order_id, **props}
    )


def refund(order_id: str, ts: int, **props: Any) -> Any:
    return make_event(
        event="Order Refunded", channel="store", timestamp_ms=ts, properties={"order_id": order_id, **props}
    )


def ledger(*events: Any) -> CustomerValue:
    return apply_purchase_events(None, events, CONFIG)


# --- quantile summaries ------------------------------------------------------------------------


def _split(values: list[float], parts: list[int]) -> list[list[float]]:
    """``values`` dealt into partitions by ``parts`` (partition index per value)."""
    out: list[list[float]] = [[] for _ in range(max(parts, default=0) + 1)]
    for v, p in zip(values, parts, strict=True):
        out[p].append(v)
    return out


_values_and_partitions = st.lists(st.integers(min_value=0, max_value=60).map(float), min_size=1, max_size=400).flatmap(
    lambda vs: st.tuples(st.just(vs), st.lists(st.integers(0, 5), min_size=len(vs), max_size=len(vs)))
)


@PROPERTY
@given(population=_values_and_partitions, k=st.integers(min_value=1, max_value=40))
def test_merged_quantiles_are_within_the_documented_rank_error(
    population: tuple[list[float], list[int]], k: int
) -> None:
    """For every quintile p the merged boundary b has >= pN values at or below it and < pN + N/k below it."""
    values, parts = population
    summaries = [quantile_summary(part, k) for part in _split(values, parts)]
    n = len(values)
    for s in summaries:
        assert len(s.values) <= k
        assert s.counts[-1] == s.count if s.count else s.values == ()
    for j in (1, 2, 3, 4):
        b = merged_quantile(summaries, j, 5)
        at_or_below = sum(v <= b for v in values)
        below = sum(v < b for v in values)
        assert b in values
        assert 5 * at_or_below >= j * n  # never below the exact quantile ...
        assert 5 * k * below < j * n * k + 5 * n  # ... and fewer than N/k ranks above it
        assert b >= boundaries(values)[j - 1]


@PROPERTY
@given(population=_values_and_partitions)
def test_merging_is_exact_when_no_summary_drops_a_value(population: tuple[list[float], list[int]]) -> None:
    values, parts = population
    summaries = [quantile_summary(part, 1000) for part in _split(values, parts)]
    assert merged_boundaries(summaries) == boundaries(values)


def test_a_large_population_merges_within_one_tenth_of_a_percent() -> None:
    rng = random.Random(7)
    values = [rng.lognormvariate(4.0, 1.2) for _ in range(60_000)]
    parts = [rng.randrange(4) for _ in values]
    summaries = [quantile_summary(part) for part in _split(values, parts)]
    assert all(len(s.values) == 1000 for s in summaries)  # bounded: 15k values each, 1000 points
    ordered = sorted(values)
    exact = boundaries(values)
    merged = merged_boundaries(summaries)
    for j, (b, e) in enumerate(zip(merged, exact, strict=True), 1):
        rank_gap = ordered.index(b) - ordered.index(e)
        assert 0 <= rank_gap < len(values) / 1000, (j, rank_gap)
    assert merged != exact  # the bound is exercised here, not vacuously exact


def test_summaries_keep_every_distinct_value_up_to_k_and_k_points_beyond() -> None:
    assert quantile_summary([3.0, 1.0, 3.0, 2.0], k=3) == quantile_summary([1.0, 2.0, 3.0, 3.0], k=3)
    s = quantile_summary([3.0, 1.0, 3.0, 2.0], k=3)
    assert (s.count, s.values, s.counts) == (4, (1.0, 2.0, 3.0), (1, 2, 4))
    big = quantile_summary([float(v) for v in range(100)], k=10)
    assert big.values == tuple(float(v) for v in range(9, 100, 10))
    assert big.counts == tuple(range(10, 101, 10))
    assert quantile_summary([], k=5).count == 0
    with pytest.raises(ValueError, match="NaN"):
        quantile_summary([1.0, math.nan])
    with pytest.raises(ValueError, match="empty"):
        merged_quantile([quantile_summary([])], 1, 5)


# --- the CLV sample ----------------------------------------------------------------------------


def _inputs(i: int) -> ClvInputs:
    return ClvInputs(T0 + i * HOUR, T0 + i * HOUR, 0, 0.0)


@PROPERTY
@given(ids=st.sets(st.integers(0, 10_000), min_size=1, max_size=300), seed=st.integers(0, 99), size=st.integers(1, 60))
def test_the_sample_is_the_lowest_hashes_whatever_the_partitioning(ids: set[int], seed: int, size: int) -> None:
    rng = random.Random(seed)
    facts = {i: CustomerFacts(T0, 1, 1.0, _inputs(i)) for i in ids}
    partitions: dict[int, list[tuple[int, CustomerFacts]]] = {}
    for i, f in facts.items():
        partitions.setdefault(rng.randrange(4), []).append((contact_hash(f"c-{i}"), f))
    summaries = [build_partition_summary(p, items, T0, size) for p, items in partitions.items()]
    expected = sorted(ids, key=lambda i: contact_hash(f"c-{i}"))[:size]
    assert merge_sample(summaries, size) == [_inputs(i) for i in expected]


def test_contact_hash_is_stable_and_spread() -> None:
    assert contact_hash("user-1") == contact_hash("user-1") != contact_hash("user-2")
    assert all(0 <= contact_hash(f"c-{i}") < 1 << 64 for i in range(64))
    top_bits = {contact_hash(f"c-{i}") >> 62 for i in range(64)}
    assert top_bits == {0, 1, 2, 3}


# --- fitting -----------------------------------------------------------------------------------

END = T0 + 400 * DAY


def simulate(n: int, seed: int) -> list[ClvInputs]:
    """Customers drawn from BG/NBD (r=0.25, alpha=30 days, a=0.8, b=2.5) with Gamma-Gamma spend
    (p=6, q=4, v=15), first purchase 135 to 270 days before ``END``."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        rate = rng.gammavariate(0.25, 1 / 30.0)
        drop = rng.betavariate(0.8, 2.5)
        nu = rng.gammavariate(4.0, 1 / 15.0)
        age = 270.0 * (0.5 + 0.5 * rng.random())
        first = END - round(age * DAY)
        t, times = 0.0, []
        while True:
            t += rng.expovariate(rate)
            if t > age:
                break
            times.append(t)
            if rng.random() < drop:
                break
        spend = [rng.gammavariate(6.0, 1 / nu) for _ in times]
        last = first + round(times[-1] * DAY) if times else first
        out.append(ClvInputs(first, last, len(times), math.fsum(spend) / len(spend) if spend else 0.0))
    return out


def _facts(c: ClvInputs) -> CustomerFacts:
    return CustomerFacts(c.last_ms, c.repeats + 1, c.repeat_mean * (c.repeats + 1), c)


def test_the_fit_on_the_merged_sample_recovers_the_generating_parameters() -> None:
    customers = simulate(12_000, seed=3)
    partitions: dict[int, list[tuple[int, CustomerFacts]]] = {}
    for i, c in enumerate(customers):
        partitions.setdefault(i % 4, []).append((contact_hash(f"c-{i}"), _facts(c)))
    summaries = [build_partition_summary(p, items, END, 6000) for p, items in partitions.items()]
    assert all(len(s.sample) == 3000 for s in summaries)  # each partition sends at most sample_size
    model = build_population_model(summaries, END, None, sample_size=6000, min_fit_customers=100)
    assert model.fit_error is None and model.fit is not None
    assert (model.customers, model.fit.sample_size, model.partitions) == (12_000, 6000, (0, 1, 2, 3))
    bg, gg = model.fit.bgnbd.params, model.fit.gamma_gamma.params
    assert bg.r / bg.alpha == pytest.approx(0.25 / 30.0, rel=0.1)  # mean purchase rate
    assert bg.r == pytest.approx(0.25, rel=0.25)
    assert bg.a / (bg.a + bg.b) == pytest.approx(0.8 / 3.3, rel=0.25)  # mean drop-out probability
    assert gg.p * gg.v / (gg.q - 1) == pytest.approx(6.0 * 15.0 / 3.0, rel=0.1)  # mean spend
    assert gg.p == pytest.approx(6.0, rel=0.3)
    assert model.fit.fitted_at_ms == END


def test_a_fit_that_cannot_be_trusted_keeps_the_previous_one() -> None:
    customers = simulate(400, seed=5)
    items = [(contact_hash(f"c-{i}"), _facts(c)) for i, c in enumerate(customers)]
    good = build_population_model([build_partition_summary(0, items, END, 400)], END, None, 400, 100)
    assert good.fit is not None and good.fit_error is None
    few = build_population_model([build_partition_summary(0, items[:50], END + DAY, 400)], END + DAY, good, 400, 100)
    assert few.fit == good.fit
    assert few.fit_error is not None and "at least 100" in few.fit_error
    assert few.customers == 50 and few.computed_at_ms == END + DAY  # the boundaries moved on
    nobody_repeats = [(h, CustomerFacts(f.last_order_ms, 1, 5.0, ClvInputs(T0, T0, 0, 0.0))) for h, f in items]
    first = build_population_model([build_partition_summary(0, nobody_repeats, END, 400)], END, None, 400, 10)
    assert first.fit is None and first.fit_error is not None and "repeat" in first.fit_error
    assert first.boundaries is not None
    empty = build_population_model([build_partition_summary(0, [], END, 10)], END, None, 10, 1)
    assert (empty.boundaries, empty.fit, empty.customers) == (None, None, 0)
    with pytest.raises(ValueError, match="at least 5"):
        fit_clv(customers[:4], END, 5)


# --- one customer ------------------------------------------------------------------------------


def test_customer_facts_hold_every_order_and_refund_of_the_ledger() -> None:
    value = ledger(
        order("W1", T0, total=100.0),
        order("S1", T0 + 10 * DAY, channel="store", total=40.0, currency="USD"),
        order("W2", T0 + 20 * DAY, total=30.0),
        refund("W2", T0 + 21 * DAY),  # full refund: W2 is no purchase
        refund("W1", T0 + 22 * DAY, total=10.0),
    )
    facts = customer_facts(value)
    assert facts == CustomerFacts(T0 + 10 * DAY, 2, 90.0 + 20.0, ClvInputs(T0, T0 + 10 * DAY, 1, 20.0))
    assert facts.clv is not None
    for as_of in (T0 + 30 * DAY, T0 + 100 * DAY):
        assert facts.clv.at(as_of) == clv_summary(value, as_of, DAY_MS)
        facts_then = summary(value, as_of)
        assert (facts_then.last_order_ms, facts_then.frequency, facts_then.monetary) == facts[:3]
    assert customer_facts(None) is None
    assert customer_facts(ledger(order("X", T0, total=5.0), refund("X", T0 + DAY))) is None
    unvalued = customer_facts(ledger(order("Y", T0, total=5.0, currency="XYZ")))
    assert unvalued == CustomerFacts(T0, 1, 0.0, None)


def _population(value_sets: list[CustomerValue], now: int, fit: ClvFit | None = None) -> PopulationModel:
    items = [(contact_hash(f"c-{i}"), f) for i, v in enumerate(value_sets) if (f := customer_facts(v)) is not None]
    model = build_population_model([build_partition_summary(0, items, now, 10)], now, None, 10, 10_000)
    return PopulationModel(
        model.computed_at_ms, model.customers, model.partitions, model.boundaries, model.rank_error, fit, None
    )


def test_value_view_scores_against_the_population_and_applies_the_fit() -> None:
    now = T0 + 100 * DAY
    population_values = [
        ledger(*[order(f"{i}-{j}", T0 + (i * 7 + j) * DAY, total=10.0 * (i + 1)) for j in range(1 + i % 4)])
        for i in range(10)
    ]
    fit = fit_clv(simulate(800, seed=11), END, 100)
    population = _population(population_values, now, fit)
    assert population.boundaries == population_boundaries(summary(v, now) for v in population_values)
    contact = population_values[9]
    view = value_view(contact, now, population, CONFIG.segments)
    assert view is not None
    expected = rfm_score(summary(contact, now), population.boundaries, CONFIG.segments)
    assert view.score == expected and expected is not None
    # frequencies 1,1,1,2,2,2,3,3,4,4 (F bounds 1,2,2,3); monetary bounds 40,90,120,200; the latest order
    assert (expected.r, expected.f, expected.m) == (5, 2, 4)
    assert segment_for(contact, now, population) == expected.segment == "Potential Loyalist"
    s = clv_summary(contact, now, DAY_MS)
    assert s is not None and s.frequency == 1
    assert view.p_alive == p_alive(fit.bgnbd.params, s.frequency, s.recency, s.T)
    assert view.expected_purchases_90d == expected_purchases(fit.bgnbd.params, 90.0, s.frequency, s.recency, s.T)
    worth = clv(fit.bgnbd.params, fit.gamma_gamma.params, s.frequency, s.recency, s.T, s.monetary, HORIZON_DAYS)
    assert view.clv_90d == worth and worth > 0
    assert view.model_fitted_at_ms == END
    assert view.facts == summary(contact, now)


def test_value_view_before_a_population_and_for_non_customers() -> None:
    contact = ledger(order("A", T0, total=50.0))
    early = value_view(contact, T0 + DAY, None)
    assert early is not None and early.facts.frequency == 1
    assert (early.score, early.p_alive, early.expected_purchases_90d, early.clv_90d) == (None, None, None, None)
    boundaries_only = _population([contact], T0 + DAY)
    view = value_view(contact, T0 + DAY, boundaries_only)
    assert view is not None and view.score is not None and view.clv_90d is None and view.model_fitted_at_ms is None
    assert value_view(None, T0, boundaries_only) is None
    assert value_view(ledger(order("B", T0, total=5.0), refund("B", T0 + HOUR)), T0 + DAY, boundaries_only) is None
    assert value_view(contact, T0 - 1, boundaries_only) is None  # the order is not there yet
    assert segment_for(contact, T0 + DAY, None) is None
    assert segment_for(None, T0 + DAY, boundaries_only) is None


def test_a_lone_customer_scores_the_lowest_quintile_of_a_tied_population() -> None:
    bounds = RfmBoundaries((float(T0),) * 4, (1.0,) * 4, (50.0,) * 4, 1)
    model = PopulationModel(T0, 1, (0,), bounds, 0.001)
    view = value_view(ledger(order("A", T0, total=50.0)), T0 + DAY, model)
    assert view is not None and view.score is not None
    assert (view.score.r, view.score.f, view.score.m, view.score.segment) == (1, 1, 1, "Lost")
