"""The customer population, summarised per partition and merged: RFM quintiles and the CLV fit.

A contact's R, F and M scores are quintiles against every customer, and the customers are spread
over Kafka partitions (and worker processes). Each worker indexes its partitions' customers
(:func:`customer_facts`), periodically publishes one bounded :class:`PartitionSummary` per
partition, and one process merges them into a :class:`PopulationModel`
(:func:`build_population_model`): quintile boundaries and a BG/NBD + Gamma-Gamma fit. Everything
here is pure (time comes in as ``*_ms`` arguments) and deterministic.

Quantile summaries and their error
    A :class:`QuantileSummary` of ``n`` values keeps at most ``k`` points ``(value, count of values
    <= value)``: all distinct values when there are at most ``k``, otherwise the value at every
    rank ``ceil(j * n / k)``, ``j = 1..k``. Between two consecutive points (and below the first)
    lie fewer than ``n / k`` values, so the count of values ``<= x`` is known to within ``n / k``
    for any ``x``. :func:`merged_boundaries` returns, for each quintile ``p``, the smallest kept
    value whose lower-bound count over all partitions reaches ``p * N``. That value is the exact
    quantile (:func:`scorestream.rfm.boundaries`'s definition) of some ``p'`` with
    ``p <= p' < p + 1/k``: at least ``p * N`` customers are at or below it, fewer than
    ``p * N + N / k`` strictly below it. With ``k = QUANTILE_POINTS = 1000`` the rank error is
    below 0.1% of the population, and there is none when every partition has at most ``k``
    distinct values of the metric (frequency, nearly always). Each summary is at most
    ``3 * k`` points, whatever the partition's size.
The CLV sample
    Each partition also publishes the ``sample_size`` customers with the lowest
    :func:`contact_hash` (a 64-bit BLAKE2b of the contact id, unrelated to Kafka's partitioning).
    The ``sample_size`` lowest of the union are then exactly the lowest over the whole population:
    a uniform sample without replacement, the same for the same population whatever the
    partitioning. BG/NBD and Gamma-Gamma are fitted on it (time in days, ``T`` up to the fit time).
"""

from __future__ import annotations

import bisect
import hashlib
import heapq
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from scorestream.clv import (
    BgNbdFit,
    BgNbdParams,
    GammaGammaFit,
    GammaGammaParams,
    RfmSummary,
    age_when_p_no_purchase_reaches,
    clv,
    expected_purchases,
    fit_bgnbd,
    fit_gamma_gamma,
    median_time_to_purchase,
    p_alive,
    p_no_purchase,
)
from scorestream.rfm import (
    DAY_MS,
    Boundaries,
    CustomerValue,
    RfmBoundaries,
    RfmFacts,
    RfmScore,
    clv_summary,
    rfm_score,
    summary,
)
from scorestream.rules.value import CHURN_BANDS, DEFAULT_CLV, DEFAULT_SEGMENTS, ClvSettings, SegmentRule

__all__ = [
    "HORIZON_DAYS",
    "POPULATION_VERSION",
    "QUANTILE_POINTS",
    "ChurnJudgement",
    "ClvFit",
    "ClvInputs",
    "CustomerFacts",
    "Outlook",
    "PartitionSummary",
    "PopulationModel",
    "QuantileSummary",
    "SampleEntry",
    "ValueView",
    "build_partition_summary",
    "build_population_model",
    "churn_for",
    "contact_hash",
    "customer_facts",
    "fit_clv",
    "merge_sample",
    "merged_boundaries",
    "merged_quantile",
    "outlook_of",
    "quantile_summary",
    "segment_for",
    "value_view",
]

POPULATION_VERSION = 1
QUANTILE_POINTS = 1000
HORIZON_DAYS = 90.0
QUINTILES = (1, 2, 3, 4)


# --- one customer ------------------------------------------------------------------------------


class ClvInputs(NamedTuple):
    """What BG/NBD and Gamma-Gamma need of a customer, independent of the time they are read at.

    ``first_ms``/``last_ms``: the first and last valued purchase (purchases sharing a timestamp are
    one transaction); ``repeats``: transactions after the first (``x``); ``repeat_mean``: their mean
    net value in the base currency (``m``, 0 without repeats).
    """

    first_ms: int
    last_ms: int
    repeats: int
    repeat_mean: float

    def at(self, as_of_ms: int, unit_ms: int = DAY_MS) -> RfmSummary:
        """The customer's ``(x, t_x, T, m)`` at ``as_of_ms`` (no earlier than the last purchase)."""
        end = max(as_of_ms, self.last_ms)
        return RfmSummary(
            frequency=self.repeats,
            recency=(self.last_ms - self.first_ms) / unit_ms,
            T=(end - self.first_ms) / unit_ms,
            monetary=self.repeat_mean,
        )


class CustomerFacts(NamedTuple):
    """A customer's entry in a partition index: the three RFM metrics and the CLV inputs.

    Recency is kept as ``last_order_ms`` (see :mod:`scorestream.rfm`: boundaries on it do not go
    stale as time passes). ``clv`` is None when no purchase can be valued (unknown currencies).
    """

    last_order_ms: int
    frequency: int
    monetary: float
    clv: ClvInputs | None


def customer_facts(value: CustomerValue | None) -> CustomerFacts | None:
    """Everything the ledger holds, as index facts; None for a non-customer (no order not refunded).

    Read as of the ledger's newest record, so every order and refund it holds counts.
    """
    if value is None or value.empty:
        return None
    found = ledger_facts(value)
    if found is None:
        return None
    facts, inputs = found
    if facts.last_order_ms is None:
        return None
    return CustomerFacts(facts.last_order_ms, facts.frequency, facts.monetary, inputs)


def ledger_facts(value: CustomerValue | None) -> tuple[RfmFacts, ClvInputs | None] | None:
    """The ledger's RFM facts and CLV inputs as of its newest record (order, refund or folded
    orders), so every record it holds counts; None without a record or an order not refunded."""
    if value is None:
        return None
    stamps = [o.ts for o in value.orders] + [r.ts for r in value.refunds]
    if value.folded is not None:
        stamps.append(value.folded.until[0])
    if not stamps:
        return None
    as_of = max(stamps)
    facts = summary(value, as_of)
    if facts.frequency <= 0:
        return None
    inputs = None
    s = clv_summary(value, as_of, 1)
    if s is not None:  # times in milliseconds: the first and last valued purchase are exact
        first = as_of - int(s.T)
        inputs = ClvInputs(first, first + int(s.recency), s.frequency, s.monetary)
    return facts, inputs


def contact_hash(contact_id: str) -> int:
    """A stable 64-bit hash of a contact id (BLAKE2b), for the population sample."""
    return int.from_bytes(hashlib.blake2b(contact_id.encode(), digest_size=8).digest(), "big")


# --- quantile summaries ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class QuantileSummary:
    """At most ``k`` points of ``count`` values: ``values[i]`` ascending, ``counts[i]`` values <= it.

    Fewer than ``count / k`` values lie strictly between consecutive points (or below the first).
    The last point is the maximum (its count is ``count``).
    """

    count: int
    values: tuple[float, ...] = ()
    counts: tuple[int, ...] = ()


def quantile_summary(values: Iterable[float], k: int = QUANTILE_POINTS) -> QuantileSummary:
    """The bounded summary of ``values`` (any order): every distinct value if at most ``k``, else ``k`` ranks."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    xs = sorted(values)
    if any(math.isnan(x) for x in xs):
        raise ValueError("cannot summarise NaN")
    n = len(xs)
    if n == 0:
        return QuantileSummary(0)
    distinct: list[float] = []
    counts: list[int] = []
    for i, x in enumerate(xs):
        if distinct and distinct[-1] == x:
            counts[-1] = i + 1
        else:
            distinct.append(x)
            counts.append(i + 1)
        if len(distinct) > k:
            break
    if len(distinct) <= k:
        return QuantileSummary(n, tuple(distinct), tuple(counts))
    out_values: list[float] = []
    out_counts: list[int] = []
    for j in range(1, k + 1):
        v = xs[(j * n + k - 1) // k - 1]  # the value at rank ceil(j n / k)
        if out_values and out_values[-1] == v:
            continue
        out_values.append(v)
        out_counts.append(bisect.bisect_right(xs, v))
    return QuantileSummary(n, tuple(out_values), tuple(out_counts))


def _lower_count(s: QuantileSummary, x: float) -> int:
    """The count of the largest point <= x: a lower bound of the values <= x, short by < count / k."""
    i = bisect.bisect_right(s.values, x)
    return s.counts[i - 1] if i else 0


def merged_quantile(summaries: Sequence[QuantileSummary], numerator: int, denominator: int) -> float:
    """The ``numerator / denominator`` quantile of the union of the summarised values.

    The smallest kept value ``b`` with ``sum of lower counts(b) >= p * N``: at least ``p * N`` values
    are ``<= b`` and fewer than ``p * N + sum(n_i / k_i)`` are ``< b`` (see the module docstring).
    """
    total = sum(s.count for s in summaries)
    if total == 0:
        raise ValueError("cannot take a quantile of an empty population")
    if not 0 < numerator <= denominator:
        raise ValueError(f"quantile must be in (0, 1], got {numerator}/{denominator}")
    candidates = sorted({v for s in summaries for v in s.values})
    lo, hi = 0, len(candidates) - 1  # the lower count grows with x: binary search the first that reaches
    while lo < hi:
        mid = (lo + hi) // 2
        if denominator * sum(_lower_count(s, candidates[mid]) for s in summaries) >= numerator * total:
            hi = mid
        else:
            lo = mid + 1
    return candidates[lo]


def merged_boundaries(summaries: Sequence[QuantileSummary]) -> Boundaries:
    """The quintile boundaries (20/40/60/80%) of the union; exact when no summary dropped a value."""
    b1, b2, b3, b4 = (merged_quantile(summaries, q, 5) for q in QUINTILES)
    return (b1, b2, b3, b4)


# --- partitions --------------------------------------------------------------------------------


class SampleEntry(NamedTuple):
    hash: int
    clv: ClvInputs


@dataclass(frozen=True, slots=True)
class PartitionSummary:
    """What one contacts partition contributes to the population model (a topic record; versioned)."""

    partition: int
    customers: int
    built_at_ms: int
    last_order_ms: QuantileSummary
    frequency: QuantileSummary
    monetary: QuantileSummary
    sample: tuple[SampleEntry, ...] = ()
    v: int = POPULATION_VERSION


def build_partition_summary(
    partition: int,
    customers: Iterable[tuple[int, CustomerFacts]],
    built_at_ms: int,
    sample_size: int,
    k: int = QUANTILE_POINTS,
) -> PartitionSummary:
    """Summarise a partition's ``(contact_hash, facts)`` pairs: three quantile summaries and the sample
    of the ``sample_size`` lowest hashes (among customers whose purchases can be valued)."""
    items = list(customers)
    sample = heapq.nsmallest(
        sample_size, (SampleEntry(h, f.clv) for h, f in items if f.clv is not None), key=lambda e: e.hash
    )
    return PartitionSummary(
        partition=partition,
        customers=len(items),
        built_at_ms=built_at_ms,
        last_order_ms=quantile_summary((float(f.last_order_ms) for _, f in items), k),
        frequency=quantile_summary((float(f.frequency) for _, f in items), k),
        monetary=quantile_summary((f.monetary for _, f in items), k),
        sample=tuple(sample),
    )


def merge_sample(summaries: Iterable[PartitionSummary], size: int) -> list[ClvInputs]:
    """The ``size`` customers with the lowest hashes over all partitions (each partition sent its lowest)."""
    entries = (e for s in summaries for e in s.sample)
    return [e.clv for e in heapq.nsmallest(size, entries, key=lambda e: e.hash)]


# --- the population model ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ClvFit:
    """BG/NBD and Gamma-Gamma fitted together on one sample, time in days."""

    bgnbd: BgNbdFit
    gamma_gamma: GammaGammaFit
    fitted_at_ms: int
    sample_size: int


@dataclass(frozen=True, slots=True)
class PopulationModel:
    """The current population: quintile boundaries and the latest successful CLV fit (a topic record).

    ``boundaries`` is None while there is no customer; ``fit`` None until a fit has succeeded.
    ``rank_error`` is the documented bound of the boundaries (a fraction of the population).
    """

    computed_at_ms: int
    customers: int
    partitions: tuple[int, ...]
    boundaries: RfmBoundaries | None
    rank_error: float
    fit: ClvFit | None = None
    fit_error: str | None = None
    v: int = POPULATION_VERSION


def fit_clv(sample: Sequence[ClvInputs], now_ms: int, min_customers: int) -> ClvFit:
    """Fit BG/NBD and Gamma-Gamma on ``sample`` at ``now_ms``; ``ValueError`` when it cannot be trusted.

    Refused: fewer than ``min_customers`` customers, fewer than 2 with repeat purchases, a fit that
    raises or ends with a non-finite log-likelihood or parameters, or parameters that cannot be
    applied to the sample's own customers (``p_alive``, ``expected_purchases`` and ``clv`` over
    ``HORIZON_DAYS`` must evaluate to finite numbers for about 100 of its distinct histories, spread
    over them in order, the first and last included). A fit whose optimiser ran out of
    iterations (``converged`` False: the likelihood keeps rising towards a boundary, e.g. spend
    without heterogeneity across customers) is kept: its parameters still describe the data, and
    the API shows the flag.
    """
    if len(sample) < max(min_customers, 1):
        raise ValueError(f"{len(sample)} customers in the sample, at least {min_customers} are needed")
    summaries = [c.at(now_ms) for c in sample]
    repeaters = sum(s.frequency > 0 for s in summaries)
    if repeaters < 2:
        raise ValueError(f"{repeaters} customers with repeat purchases, at least 2 are needed")
    bg = fit_bgnbd(summaries)
    gg = fit_gamma_gamma(summaries)
    for name, fit in (("BG/NBD", bg), ("Gamma-Gamma", gg)):
        if not math.isfinite(fit.log_likelihood):
            raise ValueError(f"{name} fit failed (log-likelihood {fit.log_likelihood})")
    histories = sorted({(s.frequency, s.recency, s.T, s.monetary) for s in summaries})
    for s in [*histories[:: max(1, len(histories) // 100)], histories[-1]]:  # about 100, the extremes included
        try:
            figures = clv_figures(bg.params, gg.params, RfmSummary(*s))
        except (ValueError, ArithmeticError, OverflowError) as exc:
            raise ValueError(
                f"fitted parameters cannot be applied to x={s[0]}, t_x={s[1]:g}, T={s[2]:g}: {exc}"
            ) from exc
        if not all(f is None or math.isfinite(f) for f in figures):
            raise ValueError(f"fitted parameters give non-finite values for x={s[0]}, t_x={s[1]:g}, T={s[2]:g}")
    return ClvFit(bg, gg, now_ms, len(sample))


def clv_figures(bg: BgNbdParams, gg: GammaGammaParams, s: RfmSummary) -> tuple[float, float, float | None]:
    """``p_alive``, expected purchases and CLV over ``HORIZON_DAYS`` (CLV None when Gamma-Gamma's
    population mean spend is infinite, q <= 1)."""
    alive = p_alive(bg, s.frequency, s.recency, s.T)
    expected = expected_purchases(bg, HORIZON_DAYS, s.frequency, s.recency, s.T)
    try:
        worth: float | None = clv(bg, gg, s.frequency, s.recency, s.T, s.monetary, HORIZON_DAYS)
    except ValueError:
        worth = None
    return alive, expected, worth


def build_population_model(
    summaries: Sequence[PartitionSummary],
    now_ms: int,
    previous: PopulationModel | None,
    sample_size: int,
    min_fit_customers: int,
    k: int = QUANTILE_POINTS,
) -> PopulationModel:
    """Merge the partitions' summaries into a model: new boundaries, and a new fit when one succeeds.

    A fit that fails (too few customers, no convergence) keeps the previous fit, with the reason
    in ``fit_error``. The partitions' summaries must be the latest of each partition.
    """
    customers = sum(s.customers for s in summaries)
    bounds = None
    if customers:
        bounds = RfmBoundaries(
            last_order_ms=merged_boundaries([s.last_order_ms for s in summaries]),
            frequency=merged_boundaries([s.frequency for s in summaries]),
            monetary=merged_boundaries([s.monetary for s in summaries]),
            customers=customers,
        )
    fit = previous.fit if previous is not None else None
    error = None
    try:
        fit = fit_clv(merge_sample(summaries, sample_size), now_ms, min_fit_customers)
    except (ValueError, ArithmeticError, OverflowError) as exc:
        error = str(exc)
    return PopulationModel(
        computed_at_ms=now_ms,
        customers=customers,
        partitions=tuple(sorted(s.partition for s in summaries)),
        boundaries=bounds,
        rank_error=1.0 / k,
        fit=fit,
        fit_error=error,
    )


# --- the outlook: predicted value, churn risk, next order -----------------------------------


@dataclass(frozen=True, slots=True)
class Outlook:
    """What the fits predict for a customer at ``as_of_ms`` (see docs/model.md, "Customer value").

    ``predicted_clv``: expected purchases over ``settings.predicted_clv_days`` times Gamma-Gamma's
    expected spend (None when that is infinite, q <= 1); ``p_order``: P(at least one order in that
    window); ``churn_risk``: P(no order in the next ``settings.churn_window_days``) and its band;
    ``next_order_ms``: the median of the time to the next order added to ``as_of_ms`` (None when
    the customer is more likely gone than not, so no finite median exists).
    """

    predicted_clv: float | None
    p_order: float
    churn_risk: float
    churn_band: str
    next_order_ms: int | None


def outlook_of(fit: ClvFit, s: RfmSummary, as_of_ms: int, settings: ClvSettings = DEFAULT_CLV) -> Outlook:
    """The :class:`Outlook` of a customer summarised (in days) as ``s`` at ``as_of_ms``."""
    bg, gg = fit.bgnbd.params, fit.gamma_gamma.params
    x, t_x, T = s.frequency, s.recency, s.T
    window = settings.predicted_clv_days
    try:
        worth: float | None = clv(bg, gg, x, t_x, T, s.monetary, window)
    except ValueError:
        worth = None
    risk = p_no_purchase(bg, settings.churn_window_days, x, t_x, T)
    median = median_time_to_purchase(bg, x, t_x, T)
    return Outlook(
        predicted_clv=worth,
        p_order=1.0 - p_no_purchase(bg, window, x, t_x, T),
        churn_risk=risk,
        churn_band=settings.band(risk),
        next_order_ms=None if median is None else as_of_ms + math.ceil(median * DAY_MS),
    )


class ChurnJudgement(NamedTuple):
    """A customer's churn-risk band at an instant, the instant it was entered under the current fit
    (the ledger's newest record, or the crossing of the band's lower level since) and the instant
    time alone moves it to the next band (None: High, or no crossing within the horizon)."""

    band: str
    entered_ms: int
    next_change_ms: int | None


def _crossing_ms(fit: ClvFit, inputs: ClvInputs, level: float, from_ms: int, settings: ClvSettings) -> int | None:
    """The first whole millisecond from ``from_ms`` at which the churn risk, evaluated as
    :func:`churn_for` evaluates it, reaches ``level``: the continuous crossing
    (:func:`~scorestream.clv.age_when_p_no_purchase_reaches`) refined by bisection over instants."""
    bg, window = fit.bgnbd.params, settings.churn_window_days

    def reached(ms: int) -> bool:
        s = inputs.at(ms)
        return p_no_purchase(bg, window, s.frequency, s.recency, s.T) >= level

    if reached(from_ms):
        return from_ms
    s = inputs.at(from_ms)
    age = age_when_p_no_purchase_reaches(bg, window, level, s.frequency, s.recency, s.T)
    if age is None:
        return None
    hi, width = max(from_ms + 1, inputs.first_ms + math.ceil(age * DAY_MS)), 1
    while not reached(hi):
        hi, width = hi + width, width * 2
    lo, width = hi - 1, 1
    while lo > from_ms and reached(lo):
        lo, width = max(from_ms, lo - width), width * 2
    while hi - lo > 1:  # reached(hi), not reached(lo)
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if reached(mid) else (mid, hi)
    return hi


def churn_for(
    value: CustomerValue | None,
    as_of_ms: int,
    population: PopulationModel | None,
    settings: ClvSettings = DEFAULT_CLV,
) -> ChurnJudgement | None:
    """The customer's churn-risk band at ``as_of_ms`` under the population's fit; None for a
    non-customer, before a fit, or for a history the fit cannot evaluate.

    Churn risk only rises while no order comes, so the band is a step function of time between
    two ledger records: ``entered_ms`` and ``next_change_ms`` follow from it exactly, independent
    of when the question is asked (a trigger's instant and id do not depend on tick timing).
    """
    fit = population.fit if population is not None else None
    if fit is None:
        return None
    found = ledger_facts(value)
    if found is None:
        return None
    facts, inputs = found
    if inputs is None:
        return None
    since = facts.as_of_ms  # the ledger's newest record: the inputs hold from there on
    at = max(as_of_ms, since)
    try:
        s = inputs.at(at)
        risk = p_no_purchase(fit.bgnbd.params, settings.churn_window_days, s.frequency, s.recency, s.T)
        band = settings.band(risk)
        level_index = CHURN_BANDS.index(band)
        start = inputs.at(since)
        start_risk = p_no_purchase(
            fit.bgnbd.params, settings.churn_window_days, start.frequency, start.recency, start.T
        )
        if settings.band(start_risk) == band or level_index == 0:
            entered: int | None = since
        else:
            entered = _crossing_ms(fit, inputs, settings.levels[level_index - 1], since, settings)
        following = None
        if level_index < len(settings.levels):
            following = _crossing_ms(fit, inputs, settings.levels[level_index], at, settings)
            following = None if following is None else max(following, at + 1)
    except (ValueError, ArithmeticError, OverflowError):
        return None
    return ChurnJudgement(band, min(at, entered if entered is not None else at), following)


# --- one contact's value -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ValueView:
    """A customer's value at ``facts.as_of_ms``: RFM facts, scores (None without boundaries) and CLV
    over the next ``HORIZON_DAYS`` (None without a fit, or when no purchase can be valued)."""

    facts: RfmFacts
    score: RfmScore | None
    p_alive: float | None
    expected_purchases_90d: float | None
    clv_90d: float | None
    model_fitted_at_ms: int | None
    outlook: Outlook | None = None
    settings: ClvSettings = DEFAULT_CLV

    @property
    def days_between_orders(self) -> float | None:
        """The mean interval between the orders not refunded: (last - first) / (orders - 1); None
        with fewer than two orders."""
        f = self.facts
        if f.frequency < 2 or f.first_order_ms is None or f.last_order_ms is None:
            return None
        return (f.last_order_ms - f.first_order_ms) / DAY_MS / (f.frequency - 1)


def value_view(
    value: CustomerValue | None,
    as_of_ms: int,
    population: PopulationModel | None,
    segments: Sequence[SegmentRule] = DEFAULT_SEGMENTS,
    settings: ClvSettings = DEFAULT_CLV,
) -> ValueView | None:
    """The contact's value at ``as_of_ms`` against ``population``; None for a non-customer
    (no order not refunded by ``as_of_ms``). ``settings``: the windows and churn bands of the
    :class:`Outlook` (None without a fit)."""
    facts = summary(value, as_of_ms)
    if facts.frequency <= 0:
        return None
    bounds = population.boundaries if population is not None else None
    score = rfm_score(facts, bounds, segments) if bounds is not None else None
    fit = population.fit if population is not None else None
    alive = expected = worth = None
    ahead = None
    if fit is not None:
        s = clv_summary(value, as_of_ms, DAY_MS)
        if s is not None:
            try:
                alive, expected, worth = clv_figures(fit.bgnbd.params, fit.gamma_gamma.params, s)
                ahead = outlook_of(fit, s, as_of_ms, settings)
            except (ValueError, ArithmeticError, OverflowError):  # a history the fit cannot evaluate
                alive = expected = worth = ahead = None
    fitted = fit.fitted_at_ms if fit is not None else None
    return ValueView(facts, score, alive, expected, worth, fitted, ahead, settings)


def segment_for(
    value: CustomerValue | None,
    as_of_ms: int,
    population: PopulationModel | None,
    segments: Sequence[SegmentRule] = DEFAULT_SEGMENTS,
) -> str | None:
    """The contact's RFM segment at ``as_of_ms``; None for a non-customer or before any boundaries."""
    if population is None or population.boundaries is None:
        return None
    facts = summary(value, as_of_ms)
    scored = rfm_score(facts, population.boundaries, segments)
    return None if scored is None else scored.segment
