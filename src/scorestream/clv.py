"""Customer lifetime value: BG/NBD repeat purchases times Gamma-Gamma spend, fitted by maximum likelihood.

Models and notation follow Fader, Hardie & Lee (2005), "'Counting Your Customers' the Easy Way: An
Alternative to the Pareto/NBD Model" (BG/NBD), and Fader & Hardie (2013), "The Gamma-Gamma Model of
Monetary Value". A customer is summarised by

* ``x`` (``frequency``): number of REPEAT purchases, the first purchase is not counted;
* ``t_x`` (``recency``): time of the last purchase, measured from the first one (0 when ``x == 0``);
* ``T``: age, from the first purchase to the end of the observation window;
* ``m`` (``monetary``): mean value of the repeat purchases (0 when ``x == 0``).

Times are in whatever unit the caller picks (days, weeks); fitted ``alpha`` is in that unit and every
time argument given to the fitted model must use it too. Everything here is deterministic: no
clock, no I/O, no randomness; fitting the same summaries in any order gives the same parameters.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

__all__ = [
    "BgNbdFit",
    "BgNbdParams",
    "GammaGammaFit",
    "GammaGammaParams",
    "RfmSummary",
    "age_when_p_no_purchase_reaches",
    "clv",
    "expected_purchases",
    "expected_spend",
    "fit_bgnbd",
    "fit_gamma_gamma",
    "hyp2f1",
    "median_time_to_purchase",
    "p_alive",
    "p_no_purchase",
    "summarise",
    "time_when_p_no_purchase_reaches",
]

_EPS = 2.220446049250313e-16
_A_NEAR_ONE = 1e-5  # half-width of the interpolation across the BG/NBD closed form's a = 1 singularity


# --- customer summaries ------------------------------------------------------------------------


def _check_history(x: int, t_x: float, T: float) -> None:
    if x < 0:
        raise ValueError(f"frequency must be >= 0, got {x}")
    if not (math.isfinite(t_x) and math.isfinite(T)) or not 0.0 <= t_x <= T:
        raise ValueError(f"need 0 <= recency <= T, got recency={t_x}, T={T}")
    if x == 0 and t_x != 0.0:
        raise ValueError(f"a customer without repeat purchases has recency 0, got {t_x}")


@dataclass(frozen=True, slots=True)
class RfmSummary:
    """One customer's purchase history reduced to the sufficient statistics of BG/NBD and Gamma-Gamma."""

    frequency: int
    recency: float
    T: float
    monetary: float = 0.0

    def __post_init__(self) -> None:
        _check_history(self.frequency, self.recency, self.T)
        if not math.isfinite(self.monetary):
            raise ValueError(f"monetary must be finite, got {self.monetary}")


def summarise(purchases: Iterable[tuple[int, float]], now_ms: int, unit_ms: int) -> RfmSummary:
    """Summarise ``(timestamp_ms, value)`` purchases as seen at ``now_ms``, times in units of ``unit_ms``.

    Purchases after ``now_ms`` are outside the observation window and ignored, so a calibration
    summary can be cut from a full history. Purchases sharing a timestamp count as ONE transaction
    whose value is their sum; nothing else is merged. ``monetary`` is the mean repeat transaction
    value, from the exact sum of the repeat purchases rounded once. ``lifetimes`` collapses purchases of the same
    day, which is what passing day-truncated timestamps reproduces. The order of ``purchases`` does
    not matter.
    """
    if unit_ms <= 0:
        raise ValueError(f"unit_ms must be positive, got {unit_ms}")
    by_time: dict[int, list[float]] = {}
    for ts, value in purchases:
        if not math.isfinite(value):
            raise ValueError(f"purchase value must be finite, got {value} at {ts}")
        if ts <= now_ms:
            by_time.setdefault(ts, []).append(value)
    if not by_time:
        raise ValueError("no purchase at or before now_ms: the customer does not exist yet")
    times = sorted(by_time)
    first, last = times[0], times[-1]
    repeats = len(times) - 1
    # the correctly rounded exact sum of every repeat purchase (one rounding, not one per
    # transaction): a ledger that folded its old orders into an exact sum gives the same number
    monetary = math.fsum(v for ts in times[1:] for v in by_time[ts]) / repeats if repeats else 0.0
    return RfmSummary(
        frequency=repeats,
        recency=(last - first) / unit_ms,
        T=(now_ms - first) / unit_ms,
        monetary=monetary,
    )


# --- Gauss hypergeometric function -------------------------------------------------------------


def _is_nonpositive_integer(v: float) -> bool:
    return v <= 0.0 and v == math.floor(v)


def _series(a: float, b: float, c: float, z: float, max_terms: int = 1_000_000) -> float | None:
    """Maclaurin series of 2F1, or None if it needs more than ``max_terms`` terms.

    It converges for |z| < 1 (and terminates when a or b is a non-positive integer): consecutive
    terms have ratio (a+n)(b+n)z / ((c+n)(n+1)), which tends to z. Past the hump (n > |a|, |b|, |c|
    and ratio < 1) the terms shrink geometrically; the sum stops once the remaining tail is below
    double precision of the sum. About log(1e-16) / log(z) terms: 350 at z = 0.9, 3,700 at 0.99.
    """
    total, term = 1.0, 1.0
    bound = max(abs(a), abs(b), abs(c))
    for n in range(max_terms):
        ratio = (a + n) * (b + n) / ((c + n) * (n + 1)) * z
        term *= ratio
        total += term
        if term == 0.0:
            return total
        if n > bound and abs(ratio) < 1.0 and abs(term) <= _EPS * abs(total) * (1.0 - abs(ratio)):
            return total
    return None


def _sum(a: float, b: float, c: float, z: float) -> float:
    total = _series(a, b, c, z)
    if total is None:
        raise ArithmeticError(f"2F1({a}, {b}; {c}; {z}) series did not converge")
    return total


def _gamma_ratio(num: Sequence[float], den: Sequence[float]) -> tuple[float, float]:
    """(sign, log|.|) of prod Gamma(num) / prod Gamma(den); sign 0 when a denominator is a pole."""
    sign, log = 1.0, 0.0
    for v, s in [(v, 1.0) for v in num] + [(v, -1.0) for v in den]:
        if _is_nonpositive_integer(v):
            if s < 0:
                return 0.0, 0.0
            raise ArithmeticError(f"Gamma pole at {v}")
        if v < 0.0 and math.floor(v) % 2 != 0:
            sign = -sign
        log += s * math.lgamma(v)
    return sign, log


def _one_minus_z(a: float, b: float, c: float, w: float) -> float:
    """2F1(a, b; c; 1 - w) by Abramowitz & Stegun 15.3.6, both series in w (fast for small w).

    15.3.6 needs c - a - b non-integer; within ``h`` of an integer k the value is interpolated
    linearly between c - a - b = k - h and k + h (the function is smooth in c there), which keeps
    about 9 significant digits where the two terms would otherwise cancel catastrophically.
    """
    s = c - a - b
    k = round(s)
    h = 1e-6
    if abs(s - k) < h:
        lo = _one_minus_z_terms(a, b, c + (k - h - s), w)
        hi = _one_minus_z_terms(a, b, c + (k + h - s), w)
        return lo + (hi - lo) * (s - (k - h)) / (2.0 * h)
    return _one_minus_z_terms(a, b, c, w)


def _one_minus_z_terms(a: float, b: float, c: float, w: float) -> float:
    s = c - a - b
    sign1, log1 = _gamma_ratio((c, s), (c - a, c - b))
    sign2, log2 = _gamma_ratio((c, -s), (a, b))
    first = sign1 * math.exp(log1) * _sum(a, b, 1.0 - s, w) if sign1 else 0.0
    second = sign2 * math.exp(log2 + s * math.log(w)) * _sum(c - a, c - b, s + 1.0, w) if sign2 else 0.0
    return first + second


def _hyp2f1(a: float, b: float, c: float, z: float, w: float) -> float:
    """2F1(a, b; c; z) with ``w == 1 - z`` given separately so that z close to 1 keeps its precision."""
    if _is_nonpositive_integer(c):
        raise ValueError(f"2F1 is undefined for c a non-positive integer, got c={c}")
    if not (math.isfinite(z) and 0.0 <= z < 1.0 and w > 0.0):
        raise ValueError(f"2F1 is only evaluated for real 0 <= z < 1, got z={z}")
    if z <= 0.9 or _is_nonpositive_integer(a) or _is_nonpositive_integer(b):
        return _sum(a, b, c, z)
    # Near z = 1 the series is slow but, when c is large next to a and b, still cheap and better
    # conditioned than 15.3.6, whose two terms then cancel: try it on a small budget first.
    total = _series(a, b, c, z, max_terms=5_000)
    return total if total is not None else _one_minus_z(a, b, c, w)


def hyp2f1(a: float, b: float, c: float, z: float) -> float:
    """Gauss hypergeometric function 2F1(a, b; c; z) for real a, b, c (c not 0, -1, -2, ...) and 0 <= z < 1.

    The power series sum (a)_n (b)_n / (c)_n z^n / n! converges for |z| < 1 and is summed directly
    up to z = 0.9, and beyond when it needs fewer than 5,000 terms; otherwise, near z = 1, the 1 - z
    transformation (Abramowitz & Stegun 15.3.6) turns it into two series in 1 - z that converge
    fast. Checked against mpmath: within 1e-9 relative for |a|, |b| <= 20 and c up to 500 (far
    better unless z > 0.9 with c - a - b within 1e-6 of an integer, which is interpolated); large
    parameters with z near 1 can lose more digits to cancellation.
    """
    return _hyp2f1(a, b, c, z, 1.0 - z)


# --- Nelder-Mead -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Minimum:
    x: tuple[float, ...]
    fx: float
    iterations: int
    converged: bool


def _nelder_mead(
    f: Callable[[Sequence[float]], float], x0: Sequence[float], step: float, xatol: float, fatol: float, max_iter: int
) -> _Minimum:
    """Plain Nelder-Mead (reflection 1, expansion 2, contraction and shrink 1/2), as in scipy."""
    n = len(x0)
    simplex = [list(x0)] + [[v + (step if i == j else 0.0) for j, v in enumerate(x0)] for i in range(n)]
    values = [f(p) for p in simplex]
    for iteration in range(max_iter):
        order = sorted(range(n + 1), key=values.__getitem__)
        simplex = [simplex[i] for i in order]
        values = [values[i] for i in order]
        best, worst = simplex[0], simplex[-1]
        if (
            max(abs(v - values[0]) for v in values[1:]) <= fatol
            and max(abs(p[j] - best[j]) for p in simplex[1:] for j in range(n)) <= xatol
        ):
            return _Minimum(tuple(best), values[0], iteration, True)
        centre = [math.fsum(p[j] for p in simplex[:-1]) / n for j in range(n)]

        def towards(coef: float, centre: list[float] = centre, worst: list[float] = worst) -> list[float]:
            return [c + coef * (c - w) for c, w in zip(centre, worst, strict=True)]

        reflected = towards(1.0)
        f_reflected = f(reflected)
        if f_reflected < values[0]:
            expanded = towards(2.0)
            f_expanded = f(expanded)
            simplex[-1], values[-1] = (expanded, f_expanded) if f_expanded < f_reflected else (reflected, f_reflected)
            continue
        if f_reflected < values[-2]:
            simplex[-1], values[-1] = reflected, f_reflected
            continue
        if f_reflected < values[-1]:
            contracted = towards(0.5)
            f_contracted = f(contracted)
            if f_contracted <= f_reflected:
                simplex[-1], values[-1] = contracted, f_contracted
                continue
        else:
            contracted = towards(-0.5)
            f_contracted = f(contracted)
            if f_contracted < values[-1]:
                simplex[-1], values[-1] = contracted, f_contracted
                continue
        for i in range(1, n + 1):
            simplex[i] = [b + 0.5 * (p - b) for b, p in zip(best, simplex[i], strict=True)]
            values[i] = f(simplex[i])
    best_index = min(range(n + 1), key=values.__getitem__)
    return _Minimum(tuple(simplex[best_index]), values[best_index], max_iter, False)


def _minimise_logs(nll: Callable[[Sequence[float]], float], start: Sequence[float]) -> _Minimum:
    """Minimise ``nll`` over log-parameters, restarting Nelder-Mead at its answer until it stops improving.

    A restart rebuilds a full-size simplex, which undoes the premature collapse Nelder-Mead is
    known for; converged means the last run met the tolerances and a fresh one found nothing better.
    """

    def safe(theta: Sequence[float]) -> float:
        if max(theta) > 700.0 or min(theta) < -700.0:
            return math.inf
        try:
            value = nll(theta)
        except (ValueError, OverflowError, ZeroDivisionError):
            return math.inf
        return value if math.isfinite(value) else math.inf

    x, fx, iterations, converged = tuple(start), safe(start), 0, False
    for _ in range(10):
        run = _nelder_mead(safe, x, step=0.5, xatol=1e-7, fatol=1e-9, max_iter=4000)
        iterations += run.iterations
        improved = fx - run.fx > 1e-9 * max(1.0, abs(run.fx))
        x, fx = (run.x, run.fx) if run.fx < fx else (x, fx)
        if not improved:
            converged = run.converged
            break
    return _Minimum(x, fx, iterations, converged)


# --- BG/NBD ------------------------------------------------------------------------------------


def _require_positive(params: object, model: str, names: tuple[str, ...]) -> None:
    for name in names:
        value = getattr(params, name)
        if not (math.isfinite(value) and value > 0.0):
            raise ValueError(f"{model} parameter {name} must be positive and finite, got {value}")


@dataclass(frozen=True, slots=True)
class BgNbdParams:
    """Purchase rate ~ Gamma(shape r, rate alpha); drop-out probability after each purchase ~ Beta(a, b)."""

    r: float
    alpha: float
    a: float
    b: float

    def __post_init__(self) -> None:
        _require_positive(self, "BG/NBD", ("r", "alpha", "a", "b"))


@dataclass(frozen=True, slots=True)
class BgNbdFit:
    """Fitted parameters, the full log-likelihood there, customers used, Nelder-Mead iterations (all runs)."""

    params: BgNbdParams
    log_likelihood: float
    n_customers: int
    iterations: int
    converged: bool


def _bgnbd_nll(summaries: Iterable[RfmSummary]) -> tuple[Callable[[Sequence[float]], float], int, float]:
    """Negative log-likelihood (FHL 2005 eq. 6) of log-parameters, customers grouped by (x, t_x, T)."""
    counts = Counter((s.frequency, s.recency, s.T) for s in summaries)
    if not counts:
        raise ValueError("cannot fit BG/NBD on no customers")
    xs = sorted({x for x, _, _ in counts})
    ages = sorted({T for _, _, T in counts})
    recencies = sorted({t_x for _, t_x, _ in counts})
    x_at = {x: i for i, x in enumerate(xs)}
    age_at = {T: i for i, T in enumerate(ages)}
    rec_at = {t_x: i for i, t_x in enumerate(recencies)}
    rows = [(x, x_at[x], age_at[T], rec_at[t_x], float(n)) for (x, t_x, T), n in sorted(counts.items())]
    n_customers = sum(counts.values())
    total_x = sum(x * n for (x, _, _), n in counts.items())
    total_T = math.fsum(T * n for (_, _, T), n in counts.items())
    start_alpha = total_T / total_x if total_x else total_T / n_customers

    def nll(theta: Sequence[float]) -> float:
        r, alpha, a, b = (math.exp(t) for t in theta)
        base = r * math.log(alpha) - math.lgamma(r) + math.lgamma(a + b) - math.lgamma(b)
        # Per distinct x: log of Gamma(r+x) alpha^r / Gamma(r) * B(a, b+x) / B(a, b), and log a / (b+x-1).
        common = [base + math.lgamma(r + x) + math.lgamma(b + x) - math.lgamma(a + b + x) for x in xs]
        dropped = [math.log(a) - math.log(b + x - 1.0) if x else 0.0 for x in xs]
        log_age = [math.log(alpha + T) for T in ages]
        log_rec = [math.log(alpha + t_x) for t_x in recencies]
        terms = []
        for x, xi, ti, ri, n in rows:
            alive = -(r + x) * log_age[ti]
            if x:
                gone = dropped[xi] - (r + x) * log_rec[ri]
                high, low = (alive, gone) if alive >= gone else (gone, alive)
                alive = high + math.log1p(math.exp(low - high))
            terms.append(n * (common[xi] + alive))
        return -math.fsum(terms)

    return nll, n_customers, start_alpha


def fit_bgnbd(summaries: Iterable[RfmSummary]) -> BgNbdFit:
    """Maximum-likelihood BG/NBD parameters (FHL 2005 eq. 6), Nelder-Mead on log-parameters.

    Starts from r = a = b = 1 and alpha = total age / total repeat purchases (so that the mean rate
    r / alpha matches the pooled rate). ``converged`` is False when the optimiser ran out of
    iterations, e.g. when nobody repeated and the maximum lies at the boundary.
    """
    nll, n_customers, start_alpha = _bgnbd_nll(summaries)
    found = _minimise_logs(nll, (0.0, math.log(start_alpha), 0.0, 0.0))
    r, alpha, a, b = (math.exp(t) for t in found.x)
    return BgNbdFit(BgNbdParams(r, alpha, a, b), -found.fx, n_customers, found.iterations, found.converged)


def p_alive(params: BgNbdParams, x: int, t_x: float, T: float) -> float:
    """Probability the customer is still active at age T (FHL 2005 eq. 13 and Fader, Hardie & Lee's note).

    In BG/NBD a customer can only drop out right after a purchase, so one who never repeated
    (x == 0) is alive with probability 1.
    """
    _check_history(x, t_x, T)
    if x == 0:
        return 1.0
    r, alpha, a, b = params.r, params.alpha, params.a, params.b
    log_odds_gone = math.log(a) - math.log(b + x - 1.0) + (r + x) * (math.log(alpha + T) - math.log(alpha + t_x))
    if log_odds_gone > 0.0:
        e = math.exp(-log_odds_gone)
        return e / (1.0 + e)
    return 1.0 / (1.0 + math.exp(log_odds_gone))


def _expected_if_alive(r: float, alpha: float, a: float, b: float, t: float, x: int, T: float) -> float:
    """FHL 2005 eq. 10 without its P(alive) denominator: purchases in (T, T + t] of an active customer."""
    h = _A_NEAR_ONE
    if abs(a - 1.0) < h:
        # a = 1 is a removable singularity of the closed form (0 / 0): interpolate across it, which
        # costs some digits (still better than 1e-7 relative) within 1e-5 of a = 1.
        lo = _expected_if_alive_closed_form(r, alpha, 1.0 - h, b, t, x, T)
        hi = _expected_if_alive_closed_form(r, alpha, 1.0 + h, b, t, x, T)
        return lo + (hi - lo) * (a - (1.0 - h)) / (2.0 * h)
    return _expected_if_alive_closed_form(r, alpha, a, b, t, x, T)


def _expected_if_alive_closed_form(r: float, alpha: float, a: float, b: float, t: float, x: int, T: float) -> float:
    # Euler's transformation 2F1(A, B; C; z) = (1-z)^(C-A-B) 2F1(C-A, C-B; C; z) turns the paper's
    # (1-z)^(r+x) 2F1(r+x, b+x; a+b+x-1; z) into (1-z)^(a-1) 2F1(a+b-1-r, a-1; a+b+x-1; z), which
    # stays bounded for large x where the untransformed 2F1 overflows (lifetimes falls back to the
    # same identity). z = t / (alpha+T+t) and 1-z are both formed directly to keep z near 1 exact.
    z = t / (alpha + T + t)
    w = (alpha + T) / (alpha + T + t)
    hyp = _hyp2f1(a + b - 1.0 - r, a - 1.0, a + b + x - 1.0, z, w)
    log_w = (a - 1.0) * math.log(w)
    remaining = -math.expm1(log_w + math.log(hyp)) if hyp > 0.0 else 1.0 - math.exp(log_w) * hyp
    return (a + b + x - 1.0) / (a - 1.0) * remaining


def expected_purchases(params: BgNbdParams, t: float, x: int, t_x: float, T: float) -> float:
    """Expected number of purchases in (T, T + t] given the history (x, t_x, T): FHL 2005 eq. 10.

    Equals P(alive) times the expectation for a customer known to be alive; grows with ``t``.
    """
    _check_history(x, t_x, T)
    if not (math.isfinite(t) and t >= 0.0):
        raise ValueError(f"horizon must be finite and >= 0, got {t}")
    if t == 0.0:
        return 0.0
    alive = _expected_if_alive(params.r, params.alpha, params.a, params.b, t, x, T)
    return alive * p_alive(params, x, t_x, T)


def p_no_purchase(params: BgNbdParams, t: float, x: int, t_x: float, T: float) -> float:
    """P(X(T, T + t) = 0 | x, t_x, T): no purchase in the next ``t`` (Fader, Hardie & Lee 2005).

    The conditional PMF of BG/NBD (Fader, Hardie & Lee, "Deriving the conditional PMF of the BG/NBD
    model", Hardie's note) at x* = 0. Its terms with the Gaussian hypergeometric function and the
    beta-function ratio belong to x* > 0 only; at x* = 0 it reduces to

        (1 - P(alive)) + P(alive) ((alpha + T) / (alpha + T + t))^(r + x)

    a customer already gone buys nothing; an active one's rate given the history is
    Gamma(r + x, alpha + T), and E[exp(-lambda t)] over it is the power (a drop-out after a purchase
    in the window does not matter: there was a purchase). Falls with ``t`` towards 1 - P(alive);
    rises with the age ``T`` (no purchase since ``t_x``) towards 1.
    """
    _check_history(x, t_x, T)
    if not (math.isfinite(t) and t >= 0.0):
        raise ValueError(f"horizon must be finite and >= 0, got {t}")
    alive = p_alive(params, x, t_x, T)
    alpha = params.alpha
    survive = math.exp(-(params.r + x) * math.log1p(t / (alpha + T)))
    return (1.0 - alive) + alive * survive


def time_when_p_no_purchase_reaches(params: BgNbdParams, level: float, x: int, t_x: float, T: float) -> float | None:
    """The horizon t at which P(no purchase in (T, T + t]) falls to ``level`` (closed form), or None
    when it never does because the customer is gone with probability 1 - P(alive) >= ``level``.

    From ``p_no_purchase``: 1 - A (1 - s(t)) = level with A = P(alive), s(t) = ((alpha + T) /
    (alpha + T + t))^(r + x), so t = (alpha + T) ((A / (A - (1 - level)))^(1 / (r + x)) - 1).
    """
    _check_history(x, t_x, T)
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    alive = p_alive(params, x, t_x, T)
    excess = alive - (1.0 - level)
    if excess <= 0.0:
        return None
    return (params.alpha + T) * math.expm1(math.log(alive / excess) / (params.r + x))


def median_time_to_purchase(params: BgNbdParams, x: int, t_x: float, T: float) -> float | None:
    """The median of the time from T to the next purchase: the t where P(no purchase in (T, T + t])
    = 0.5; None when the customer has gone with probability 0.5 or more (no finite median)."""
    return time_when_p_no_purchase_reaches(params, 0.5, x, t_x, T)


_MAX_AGE = 1e7  # in the fit's time unit: a crossing later than this is "never"


def age_when_p_no_purchase_reaches(
    params: BgNbdParams, t: float, level: float, x: int, t_x: float, T: float
) -> float | None:
    """The smallest age T' >= ``T`` (no purchase in between) at which P(no purchase in the next
    ``t``) reaches ``level``; None when it does not before an age of 1e7 time units.

    P(no purchase) rises with the age (both P(alive) and the active customer's rate posterior fall
    as time passes without a purchase). Without repeat purchases (x = 0, P(alive) = 1) it is
    ((alpha+T')/(alpha+T'+t))^r, solved in closed form: T' = q t / (1 - q) - alpha with
    q = level^(1/r). Otherwise the crossing is bracketed by doubling and found by the Illinois
    variant of regula falsi, each step probing its point +- the tolerance (1e-9 relative) so that
    the bracket closes in a handful of evaluations; the answer satisfies P >= ``level`` at it, up
    to rounding (callers that need P >= ``level`` exactly probe the instant themselves).
    """
    if not 0.0 < level <= 1.0:
        raise ValueError(f"level must be in (0, 1], got {level}")

    def gap(age: float) -> float:
        return p_no_purchase(params, t, x, t_x, age) - level

    at_T = gap(T)
    if at_T >= 0.0:
        return T
    if x == 0 and level < 1.0:
        q = math.exp(math.log(level) / params.r)
        return max(T, q * t / (1.0 - q) - params.alpha)
    width = max(1.0, T - t_x)
    lo, f_lo = T, at_T
    hi = T + width
    f_hi = gap(hi)
    while f_hi < 0.0:
        lo, f_lo = hi, f_hi
        width *= 2.0
        hi = T + width
        if hi > _MAX_AGE:
            return None
        f_hi = gap(hi)
    return _illinois(gap, lo, f_lo, hi, f_hi, 1e-9 * max(1.0, hi))


def _illinois(gap: Callable[[float], float], lo: float, f_lo: float, hi: float, f_hi: float, tol: float) -> float:
    """The smallest ``hi`` found with gap(hi) >= 0 within ``tol`` of a point with gap < 0, for an
    increasing ``gap`` with gap(lo) < 0 <= gap(hi)."""
    side = 0
    for _ in range(200):
        if hi - lo <= tol:
            break
        m = hi - f_hi * (hi - lo) / (f_hi - f_lo) if f_hi != f_lo else 0.5 * (lo + hi)
        m = min(max(m, lo + 0.5 * tol), hi - 0.5 * tol)
        f_m = gap(m)
        if f_m >= 0.0:
            hi, f_hi = m, f_m
            f_lo = f_lo / 2.0 if side == 1 else f_lo
            side = 1
            probe = m - tol
            if probe > lo and (f_probe := gap(probe)) < 0.0:
                lo, f_lo = probe, f_probe
        else:
            lo, f_lo = m, f_m
            f_hi = f_hi / 2.0 if side == -1 else f_hi
            side = -1
            probe = m + tol
            if probe < hi and (f_probe := gap(probe)) >= 0.0:
                hi, f_hi = probe, f_probe
    return hi


# --- Gamma-Gamma -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GammaGammaParams:
    """Spend per transaction ~ Gamma(p, nu) with nu ~ Gamma(shape q, rate v) across customers (v is gamma)."""

    p: float
    q: float
    v: float

    def __post_init__(self) -> None:
        _require_positive(self, "Gamma-Gamma", ("p", "q", "v"))


@dataclass(frozen=True, slots=True)
class GammaGammaFit:
    """As ``BgNbdFit``; ``n_customers`` counts only the customers with repeat purchases."""

    params: GammaGammaParams
    log_likelihood: float
    n_customers: int
    iterations: int
    converged: bool


def fit_gamma_gamma(summaries: Iterable[RfmSummary]) -> GammaGammaFit:
    """Maximum-likelihood Gamma-Gamma parameters from customers with at least one repeat purchase.

    Likelihood of the mean m of x purchases (Fader & Hardie 2013 eq. 4, in full, constants included):
    Gamma(px+q) / (Gamma(px) Gamma(q)) v^q m^(px-1) x^(px) / (v + m x)^(px+q). Customers with x == 0
    carry no spend information and are left out; a repeat customer with m <= 0 is an error (the
    model is for positive spend). Starts from p = 1, q = 2, v = mean m (population mean pv/(q-1) = mean m).
    """
    counts = Counter((s.frequency, s.monetary) for s in summaries if s.frequency > 0)
    if not counts:
        raise ValueError("cannot fit Gamma-Gamma without customers who made repeat purchases")
    bad = [m for _, m in counts if m <= 0.0]
    if bad:
        raise ValueError(f"Gamma-Gamma needs positive mean spend, got {min(bad)}")
    xs = sorted({x for x, _ in counts})
    x_at = {x: i for i, x in enumerate(xs)}
    rows = [(float(x), x_at[x], m, math.log(m), float(n)) for (x, m), n in sorted(counts.items())]
    n_customers = sum(counts.values())
    mean_m = math.fsum(m * n for (_, m), n in counts.items()) / n_customers

    def nll(theta: Sequence[float]) -> float:
        p, q, v = (math.exp(t) for t in theta)
        base = q * math.log(v) - math.lgamma(q)
        common = [base + math.lgamma(p * x + q) - math.lgamma(p * x) + p * x * math.log(x) for x in xs]
        terms = [
            n * (common[xi] + (p * x - 1.0) * log_m - (p * x + q) * math.log(v + m * x)) for x, xi, m, log_m, n in rows
        ]
        return -math.fsum(terms)

    found = _minimise_logs(nll, (0.0, math.log(2.0), math.log(mean_m)))
    p, q, v = (math.exp(t) for t in found.x)
    return GammaGammaFit(GammaGammaParams(p, q, v), -found.fx, n_customers, found.iterations, found.converged)


def expected_spend(params: GammaGammaParams, x: int, m: float) -> float:
    """Conditional expected mean spend per transaction given x repeat purchases averaging m.

    (p (v + m x)) / (p x + q - 1): a weighted average of the population mean p v / (q - 1) and the
    customer's own mean m, with weight p x / (p x + q - 1) on m. For x == 0 it is the population
    mean, which exists only for q > 1.
    """
    if x < 0:
        raise ValueError(f"frequency must be >= 0, got {x}")
    p, q, v = params.p, params.q, params.v
    denominator = p * x + q - 1.0
    if denominator <= 0.0:
        raise ValueError(f"expected spend is infinite for p*x + q <= 1 (p={p}, q={q}, x={x})")
    return p * (v + m * x) / denominator


def clv(bg: BgNbdParams, gg: GammaGammaParams, x: int, t_x: float, T: float, m: float, horizon: float) -> float:
    """Customer value over the next ``horizon``: expected purchases times expected spend per purchase.

    Undiscounted, and it assumes (as Gamma-Gamma does) that spend is independent of the purchase
    process. Discount by summing ``expected_purchases`` increments per period if needed.
    """
    return expected_purchases(bg, horizon, x, t_x, T) * expected_spend(gg, x, m)
