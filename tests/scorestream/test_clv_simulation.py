"""The BG/NBD conditional formulas checked against the generative process itself.

Customers are simulated as Fader, Hardie & Lee (2005) describe them: a purchase rate
lambda ~ Gamma(r, alpha), a drop-out probability p ~ Beta(a, b), purchases a Poisson process while
active, and after each repeat purchase the customer drops out with probability p (never after the
first purchase at time 0). Each customer is observed on (0, T], which gives (x, t_x, T), then
followed over the future. By the law of total expectation the mean over customers of a
conditional probability given (x, t_x, T) equals the share of customers for whom the event
happened, within any group defined by the history; the tolerances are 4.5 standard errors of that
share (binomial) or of the mean count.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scorestream.clv import (
    BgNbdParams,
    age_when_p_no_purchase_reaches,
    expected_purchases,
    median_time_to_purchase,
    p_no_purchase,
)

PARAMS = BgNbdParams(r=0.5, alpha=20.0, a=0.8, b=2.5)  # days: a mean rate of one purchase in 40 days
CUSTOMERS = 200_000
T = 180.0
FUTURE = 365.0
Z = 4.5


@dataclass(frozen=True)
class Simulated:
    x: np.ndarray  # repeat purchases in (0, T]
    t_x: np.ndarray  # the last of them (0 without)
    future: list[np.ndarray]  # each customer's purchase times in (T, T + FUTURE], ascending


def _simulate(seed: int) -> Simulated:
    rng = np.random.default_rng(seed)
    lam = rng.gamma(PARAMS.r, 1.0 / PARAMS.alpha, CUSTOMERS)
    p = rng.beta(PARAMS.a, PARAMS.b, CUSTOMERS)
    now = np.zeros(CUSTOMERS)
    active = np.ones(CUSTOMERS, dtype=bool)
    x = np.zeros(CUSTOMERS, dtype=np.int64)
    t_x = np.zeros(CUSTOMERS)
    future: list[list[float]] = [[] for _ in range(CUSTOMERS)]
    end = T + FUTURE
    while True:
        idx = np.flatnonzero(active)
        if idx.size == 0:
            break
        now[idx] += rng.exponential(1.0, idx.size) / lam[idx]
        past = now[idx] > end
        active[idx[past]] = False
        idx = idx[~past]
        seen = now[idx] <= T
        x[idx[seen]] += 1
        t_x[idx[seen]] = now[idx[seen]]
        for i in idx[~seen]:
            future[i].append(float(now[i]))
        dropped = rng.random(idx.size) < p[idx]
        active[idx[dropped]] = False
    return Simulated(x, t_x, [np.asarray(f) for f in future])


@pytest.fixture(scope="module")
def simulated() -> Simulated:
    return _simulate(20)


def _histories(sim: Simulated) -> list[tuple[int, float]]:
    return [(int(a), float(b)) for a, b in zip(sim.x, sim.t_x, strict=True)]


def _close_share(predicted: float, hits: int, n: int) -> None:
    share = hits / n
    se = math.sqrt(max(predicted * (1.0 - predicted), 1e-4) / n)
    assert abs(share - predicted) <= Z * se, (share, predicted, n)


@pytest.mark.parametrize("tau", [30.0, 90.0, 365.0])
def test_p_no_purchase_matches_the_simulated_share_by_history(simulated: Simulated, tau: float) -> None:
    groups: dict[str, list[tuple[float, bool]]] = {"x=0": [], "x=1": [], "x=2-4": [], "x>=5": []}
    for i, (x, t_x) in enumerate(_histories(simulated)):
        predicted = p_no_purchase(PARAMS, tau, x, t_x, T)
        none = not (simulated.future[i].size and simulated.future[i][0] <= T + tau)
        key = "x=0" if x == 0 else "x=1" if x == 1 else "x=2-4" if x <= 4 else "x>=5"
        groups[key].append((predicted, none))
    for rows in groups.values():
        assert len(rows) > 2_000  # every group is large enough to test something
        mean_predicted = math.fsum(p for p, _ in rows) / len(rows)
        _close_share(mean_predicted, sum(none for _, none in rows), len(rows))


def test_at_least_one_purchase_in_a_window_among_recent_repeaters(simulated: Simulated) -> None:
    """P(>= 1) = 1 - P(0), conditioned on a narrow history (x >= 2, last purchase in the last month)."""
    rows = [
        (
            1.0 - p_no_purchase(PARAMS, 90.0, x, t_x, T),
            bool(simulated.future[i].size and simulated.future[i][0] <= T + 90),
        )
        for i, (x, t_x) in enumerate(_histories(simulated))
        if x >= 2 and t_x >= T - 30.0
    ]
    assert len(rows) > 2_000
    _close_share(math.fsum(p for p, _ in rows) / len(rows), sum(hit for _, hit in rows), len(rows))


def test_expected_purchases_match_the_simulated_mean(simulated: Simulated) -> None:
    """The existing eq. 10 against the same customers (the count is over-dispersed: its own SE)."""
    predicted = [expected_purchases(PARAMS, 90.0, x, t_x, T) for x, t_x in _histories(simulated)]
    counts = np.array([int(np.sum(f <= T + 90.0)) for f in simulated.future])
    se = float(np.std(counts)) / math.sqrt(CUSTOMERS)
    assert abs(float(np.mean(counts)) - math.fsum(predicted) / CUSTOMERS) <= Z * se


def test_half_of_the_customers_with_a_median_buy_within_it(simulated: Simulated) -> None:
    """The median time to the next purchase: P(next purchase within it) = 1/2 for each customer
    with a finite one, so half of them did (those beyond the simulated future left out: selecting
    on the median, a function of the history, keeps the conditional probability)."""
    bought = n = 0
    gone = 0
    for i, (x, t_x) in enumerate(_histories(simulated)):
        median = median_time_to_purchase(PARAMS, x, t_x, T)
        if median is None:
            gone += 1
            continue
        if median > FUTURE:
            continue
        n += 1
        bought += bool(simulated.future[i].size and simulated.future[i][0] <= T + median)
    assert n > 5_000 and gone > 5_000  # both cases occur
    _close_share(0.5, bought, n)


def test_no_median_exactly_when_the_customer_is_probably_gone() -> None:
    for x, t_x in [(0, 0.0), (1, 10.0), (3, 170.0), (3, 20.0), (12, 175.0)]:
        median = median_time_to_purchase(PARAMS, x, t_x, T)
        floor = p_no_purchase(PARAMS, 1e9, x, t_x, T)  # about 1 - P(alive)
        if median is None:
            assert floor >= 0.5 - 1e-9
        else:
            assert p_no_purchase(PARAMS, median, x, t_x, T) == pytest.approx(0.5, abs=1e-9)
            assert p_no_purchase(PARAMS, median * 0.99, x, t_x, T) > 0.5


def test_the_age_of_a_churn_band_crossing() -> None:
    for x, t_x, level in [(0, 0.0, 0.66), (2, 100.0, 0.33), (5, 170.0, 0.66), (2, 100.0, 0.05)]:
        age = age_when_p_no_purchase_reaches(PARAMS, 90.0, level, x, t_x, T)
        assert age is not None and age >= T
        assert p_no_purchase(PARAMS, 90.0, x, t_x, age) >= level
        if age > T:
            assert p_no_purchase(PARAMS, 90.0, x, t_x, age - 1e-6 * age) < level
        else:
            assert p_no_purchase(PARAMS, 90.0, x, t_x, T) >= level


def test_p_no_purchase_limits_and_errors() -> None:
    assert p_no_purchase(PARAMS, 0.0, 3, 50.0, T) == 1.0
    assert p_no_purchase(PARAMS, 30.0, 3, 50.0, T) > p_no_purchase(PARAMS, 60.0, 3, 50.0, T)
    assert p_no_purchase(PARAMS, 30.0, 3, 50.0, T + 30) > p_no_purchase(PARAMS, 30.0, 3, 50.0, T)
    with pytest.raises(ValueError, match="horizon"):
        p_no_purchase(PARAMS, -1.0, 3, 50.0, T)
    with pytest.raises(ValueError, match="recency"):
        p_no_purchase(PARAMS, 1.0, 3, 500.0, T)


@settings(max_examples=300, deadline=None)
@given(
    st.floats(0.1, 5.0),
    st.floats(1.0, 200.0),
    st.floats(0.1, 5.0),
    st.floats(0.1, 10.0),
    st.integers(0, 30),
    st.floats(0.0, 1.0),
    st.floats(1.0, 1000.0),
    st.floats(0.05, 0.95),
    st.sampled_from([30.0, 90.0, 365.0]),
)
def test_the_crossing_age_is_the_first_age_at_the_level(
    r: float, alpha: float, a: float, b: float, x: int, share: float, T: float, level: float, window: float
) -> None:
    """For any parameters and history: the returned age reaches the level and a slightly younger
    one does not (the closed form for x = 0, regula falsi otherwise)."""
    params = BgNbdParams(r=r, alpha=alpha, a=a, b=b)
    t_x = share * T if x else 0.0
    age = age_when_p_no_purchase_reaches(params, window, level, x, t_x, T)
    if age is None:
        assert p_no_purchase(params, window, x, t_x, 1e7) < level
        return
    assert age >= T
    assert p_no_purchase(params, window, x, t_x, age) >= level - 1e-12
    if age > T * (1 + 1e-6):
        assert p_no_purchase(params, window, x, t_x, age * (1 - 1e-6)) < level
