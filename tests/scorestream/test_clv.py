"""CLV core: our BG/NBD and Gamma-Gamma fits reproduce the published CDNOW results; the maths' rules hold.

The CDNOW sample (2,357 customers, 6,919 transactions, Fader, Hardie & Lee 2005) is read from the
``lifetimes`` package's data directory without importing lifetimes (its import warns, and its
fitter is never used: the reference is the published numbers).
"""

from __future__ import annotations

import itertools
import math

import pytest

from scorestream.clv import (
    BgNbdFit,
    BgNbdParams,
    GammaGammaFit,
    GammaGammaParams,
    RfmSummary,
    clv,
    expected_purchases,
    expected_spend,
    fit_bgnbd,
    fit_gamma_gamma,
    hyp2f1,
    p_alive,
    summarise,
)
from tests.cdnow import (
    CALIBRATION_END_MS,
    DAY_MS,
    PUBLISHED_BGNBD,
    PUBLISHED_BGNBD_LL,
    PUBLISHED_GG,
    WEEK_MS,
    dataset,
    purchases,
)


@pytest.fixture(scope="module")
def cdnow_purchases() -> dict[int, list[tuple[int, float]]]:
    return purchases()


@pytest.fixture(scope="module")
def cdnow(cdnow_purchases: dict[int, list[tuple[int, float]]]) -> dict[int, RfmSummary]:
    return {c: summarise(p, CALIBRATION_END_MS, WEEK_MS) for c, p in cdnow_purchases.items()}


@pytest.fixture(scope="module")
def bgnbd(cdnow: dict[int, RfmSummary]) -> BgNbdFit:
    return fit_bgnbd(cdnow.values())


@pytest.fixture(scope="module")
def gamma_gamma(cdnow: dict[int, RfmSummary]) -> GammaGammaFit:
    return fit_gamma_gamma(cdnow.values())


# --- CDNOW against the published results ---------------------------------------------------------


def test_cdnow_sample_has_the_published_size(
    cdnow_purchases: dict[int, list[tuple[int, float]]], cdnow: dict[int, RfmSummary]
) -> None:
    assert sum(len(p) for p in cdnow_purchases.values()) == 6919
    assert len(cdnow) == 2357
    assert sum(1 for s in cdnow.values() if s.frequency > 0) == 946  # the Gamma-Gamma note's customers


def test_our_summaries_match_the_published_calibration_summary(cdnow: dict[int, RfmSummary]) -> None:
    rows = dataset("cdnow_customers_summary_with_transactions.csv").read_text().splitlines()
    assert rows[0] == "ID,x,t_x,T,zbar"
    assert len(rows) - 1 == len(cdnow)
    for row in rows[1:]:
        customer, x, t_x, age, zbar = row.split(",")
        ours = cdnow[int(customer)]
        assert ours.frequency == int(x), customer
        # The published file is rounded to 2 decimals (half up: 22.345 is written 22.35).
        published = (float(t_x), float(age), float(zbar))
        assert (ours.recency, ours.T, ours.monetary) == pytest.approx(published, abs=0.0051), customer


def test_bgnbd_fit_reproduces_fader_hardie_lee_2005(bgnbd: BgNbdFit) -> None:
    assert bgnbd.converged
    assert bgnbd.n_customers == 2357
    fitted = bgnbd.params
    assert fitted.r == pytest.approx(PUBLISHED_BGNBD.r, rel=0.01)
    assert fitted.alpha == pytest.approx(PUBLISHED_BGNBD.alpha, rel=0.01)
    assert fitted.a == pytest.approx(PUBLISHED_BGNBD.a, rel=0.01)
    assert fitted.b == pytest.approx(PUBLISHED_BGNBD.b, rel=0.01)
    assert bgnbd.log_likelihood == pytest.approx(PUBLISHED_BGNBD_LL, abs=0.5)


def test_gamma_gamma_fit_reproduces_fader_hardie(gamma_gamma: GammaGammaFit) -> None:
    assert gamma_gamma.converged
    assert gamma_gamma.n_customers == 946
    fitted = gamma_gamma.params
    assert fitted.p == pytest.approx(PUBLISHED_GG.p, rel=0.01)
    assert fitted.q == pytest.approx(PUBLISHED_GG.q, rel=0.01)
    assert fitted.v == pytest.approx(PUBLISHED_GG.v, rel=0.01)


def test_fitting_ignores_the_order_of_customers(cdnow: dict[int, RfmSummary], bgnbd: BgNbdFit) -> None:
    assert fit_bgnbd(list(reversed(cdnow.values()))) == bgnbd


def test_conditional_expectation_matches_hardies_worked_example() -> None:
    # Customer 0001 of CDNOW, 39 weeks ahead, published parameters: 1.226 in Hardie's BG/NBD spreadsheet.
    assert expected_purchases(PUBLISHED_BGNBD, 39.0, 2, 30.43, 38.86) == pytest.approx(1.226, abs=0.001)


# --- Gauss hypergeometric function ---------------------------------------------------------------


@pytest.mark.parametrize("z", [1e-9, 0.1, 0.5, 0.9, 0.95, 0.999, 1.0 - 1e-9])
def test_hyp2f1_matches_the_logarithm(z: float) -> None:
    # 2F1(1, 1; 2; z) = -ln(1 - z) / z, with c - a - b = 0 (the integer case of the 1 - z transformation).
    assert hyp2f1(1.0, 1.0, 2.0, z) == pytest.approx(-math.log1p(-z) / z, rel=1e-9)


@pytest.mark.parametrize("z", [0.2, 0.7, 0.93, 0.9999])
def test_hyp2f1_matches_other_closed_forms(z: float) -> None:
    assert hyp2f1(0.7, 2.3, 2.3, z) == pytest.approx(math.pow(1.0 - z, -0.7), rel=1e-9)
    assert hyp2f1(0.5, 0.5, 1.5, z * z) == pytest.approx(math.asin(z) / z, rel=1e-9)
    polynomial = 1.0 - 6 / 5 * z + 36 / 60 * z**2 - 4 / 35 * z**3  # the series stops at n = 3 when a = -3
    assert hyp2f1(-3.0, 2.0, 5.0, z) == pytest.approx(polynomial, rel=1e-12)


def test_hyp2f1_tends_to_gauss_sum_at_one() -> None:
    a, b, c = 0.3, 0.4, 2.5
    gauss = math.gamma(c) * math.gamma(c - a - b) / (math.gamma(c - a) * math.gamma(c - b))
    assert hyp2f1(a, b, c, 1.0 - 1e-12) == pytest.approx(gauss, rel=1e-9)


@pytest.mark.parametrize(("a", "b", "c"), [(0.24, 2.4, 3.2), (2.4, -0.2, 42.0), (5.0, 3.0, 1.5), (-0.7, 0.45, 0.3)])
@pytest.mark.parametrize("z", [0.3, 0.89, 0.91, 0.999])
def test_hyp2f1_satisfies_euler_transformation(a: float, b: float, c: float, z: float) -> None:
    euler = math.pow(1.0 - z, c - a - b) * hyp2f1(c - a, c - b, c, z)
    assert hyp2f1(a, b, c, z) == pytest.approx(euler, rel=1e-9)


@pytest.mark.parametrize(("c", "z"), [(2.0, 1.0), (2.0, -0.1), (2.0, math.nan), (-2.0, 0.5), (0.0, 0.5)])
def test_hyp2f1_rejects_arguments_outside_its_domain(c: float, z: float) -> None:
    with pytest.raises(ValueError):
        hyp2f1(1.0, 1.0, c, z)


# --- BG/NBD predictions --------------------------------------------------------------------------


def test_p_alive_is_one_without_repeat_purchases() -> None:
    # BG/NBD customers drop out only right after a purchase, so nobody drops before repeating.
    for T in (0.0, 1.0, 38.86, 1000.0):
        assert p_alive(PUBLISHED_BGNBD, 0, 0.0, T) == 1.0


def test_p_alive_falls_with_silence_and_rises_with_recency() -> None:
    by_age = [p_alive(PUBLISHED_BGNBD, 3, 10.0, T) for T in (10.0, 20.0, 40.0, 80.0)]
    by_recency = [p_alive(PUBLISHED_BGNBD, 3, t_x, 40.0) for t_x in (1.0, 10.0, 30.0, 40.0)]
    assert all(0.0 < p < 1.0 for p in by_age + by_recency)
    assert by_age == sorted(by_age, reverse=True) and len(set(by_age)) == len(by_age)
    assert by_recency == sorted(by_recency) and len(set(by_recency)) == len(by_recency)


def test_expected_purchases_grow_with_the_horizon() -> None:
    horizons = [0.0, 1.0, 13.0, 39.0, 52.0, 520.0, 1e5, 1e7]
    for x, t_x in ((0, 0.0), (2, 30.43), (20, 38.0)):
        expected = [expected_purchases(PUBLISHED_BGNBD, t, x, t_x, 38.86) for t in horizons]
        assert expected[0] == 0.0
        assert all(later > earlier for earlier, later in itertools.pairwise(expected))
        assert all(math.isfinite(e) for e in expected)


def test_expected_purchases_follow_the_history() -> None:
    def e(x: int, t_x: float, T: float) -> float:
        return expected_purchases(PUBLISHED_BGNBD, 39.0, x, t_x, T)

    assert e(0, 0.0, 10.0) > e(0, 0.0, 38.0)  # an older one-off buyer buys less
    assert e(1, 38.0, 38.86) < e(5, 38.0, 38.86) < e(20, 38.0, 38.86)  # recent frequent buyers buy more
    assert e(5, 5.0, 38.86) < e(5, 38.0, 38.86)  # the same count, long ago, suggests a lost customer


def test_expected_purchases_stay_finite_for_heavy_buyers() -> None:
    heavy = expected_purchases(PUBLISHED_BGNBD, 39.0, 500, 38.8, 38.86)
    assert 0.0 < heavy < math.inf
    # Below the posterior mean rate (r + x) / (alpha + T) times the horizon: each of the ~450 purchases
    # it predicts is another chance to drop out (343 here, checked against mpmath's 2F1).
    r, alpha = PUBLISHED_BGNBD.r, PUBLISHED_BGNBD.alpha
    if_never_dropping = (r + 500) / (alpha + 38.86) * 39.0
    assert 0.6 * if_never_dropping < heavy < if_never_dropping


def test_expected_purchases_are_continuous_across_a_equal_one() -> None:
    def at(a: float) -> float:
        return expected_purchases(BgNbdParams(r=1.0, alpha=4.0, a=a, b=2.5), 39.0, 2, 30.0, 40.0)

    below, exact, above = at(1.0 - 1e-3), at(1.0), at(1.0 + 1e-3)
    assert below > exact > above
    assert exact == pytest.approx((below + above) / 2, rel=1e-5)


# --- Gamma-Gamma and CLV -------------------------------------------------------------------------


def test_expected_spend_shrinks_towards_the_population_mean() -> None:
    population_mean = PUBLISHED_GG.p * PUBLISHED_GG.v / (PUBLISHED_GG.q - 1.0)
    assert expected_spend(PUBLISHED_GG, 0, 0.0) == pytest.approx(population_mean)
    for m in (5.0, 100.0):
        spends = [expected_spend(PUBLISHED_GG, x, m) for x in (1, 5, 50, 5000)]
        assert all(min(m, population_mean) < s < max(m, population_mean) for s in spends)
        assert [abs(s - m) for s in spends] == sorted((abs(s - m) for s in spends), reverse=True)
        assert spends[-1] == pytest.approx(m, rel=0.01)


def test_expected_spend_needs_a_finite_population_mean() -> None:
    with pytest.raises(ValueError):
        expected_spend(GammaGammaParams(p=2.0, q=0.8, v=10.0), 0, 0.0)


def test_clv_is_expected_purchases_times_expected_spend() -> None:
    value = clv(PUBLISHED_BGNBD, PUBLISHED_GG, 2, 30.43, 38.86, 22.35, 52.0)
    purchases = expected_purchases(PUBLISHED_BGNBD, 52.0, 2, 30.43, 38.86)
    assert value == pytest.approx(purchases * expected_spend(PUBLISHED_GG, 2, 22.35), rel=1e-15)
    assert clv(PUBLISHED_BGNBD, PUBLISHED_GG, 2, 30.43, 38.86, 22.35, 0.0) == 0.0


# --- summaries and validation --------------------------------------------------------------------


def test_summarise_counts_repeat_transactions_collapsing_shared_timestamps() -> None:
    purchases = [(10 * DAY_MS, 5.0), (0, 10.0), (3 * DAY_MS, 4.0), (3 * DAY_MS, 6.0), (40 * DAY_MS, 99.0)]
    summary = summarise(purchases, now_ms=14 * DAY_MS, unit_ms=WEEK_MS)
    # The day-3 purchases are one transaction of 10; day 40 is after now and ignored.
    assert summary == RfmSummary(frequency=2, recency=10 / 7, T=2.0, monetary=7.5)
    assert summarise(list(reversed(purchases)), 14 * DAY_MS, WEEK_MS) == summary


def test_summarise_a_one_off_buyer() -> None:
    assert summarise([(DAY_MS, 30.0)], 3 * DAY_MS, DAY_MS) == RfmSummary(0, 0.0, 2.0, 0.0)


@pytest.mark.parametrize(
    ("purchases", "now_ms", "unit_ms"),
    [([], 0, DAY_MS), ([(5, 1.0)], 4, DAY_MS), ([(0, 1.0)], 4, 0), ([(0, math.inf)], 4, DAY_MS)],
)
def test_summarise_rejects_impossible_inputs(purchases: list[tuple[int, float]], now_ms: int, unit_ms: int) -> None:
    with pytest.raises(ValueError):
        summarise(purchases, now_ms, unit_ms)


@pytest.mark.parametrize(("x", "t_x", "T"), [(-1, 0.0, 1.0), (1, 2.0, 1.0), (0, 0.5, 1.0), (1, -0.1, 1.0)])
def test_summary_rejects_impossible_histories(x: int, t_x: float, T: float) -> None:
    with pytest.raises(ValueError):
        RfmSummary(x, t_x, T)


def test_params_must_be_positive() -> None:
    with pytest.raises(ValueError):
        BgNbdParams(r=0.0, alpha=1.0, a=1.0, b=1.0)
    with pytest.raises(ValueError):
        GammaGammaParams(p=1.0, q=math.inf, v=1.0)


def test_fitting_needs_data() -> None:
    with pytest.raises(ValueError):
        fit_bgnbd([])
    with pytest.raises(ValueError):
        fit_gamma_gamma([RfmSummary(0, 0.0, 5.0)])
    with pytest.raises(ValueError):
        fit_gamma_gamma([RfmSummary(2, 1.0, 5.0, monetary=0.0)])
