"""The model file's ``value`` section: what counts as a purchase or a refund, currency rates, the
names of the RFM segments (a name per R x F cell), the predicted-CLV window and churn-risk bands.

Segments
    A name per (R, F) cell, from rules evaluated in order (first match wins), overridable in the
    model file (``ValueConfig.from_dict``); every cell of 1..5 x 1..5 must be covered and every
    rule must win at least one cell.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from scorestream.errors import ModelError

SCORES = range(1, 6)
"""R, F and M scores: 1..5 (5 = best)."""


# --- segments ----------------------------------------------------------------------------------


class SegmentRule(NamedTuple):
    """``name`` for R score in ``r`` and F score in ``f`` (inclusive ``(low, high)`` ranges)."""

    name: str
    r: tuple[int, int]
    f: tuple[int, int]

    def matches(self, r: int, f: int) -> bool:
        return self.r[0] <= r <= self.r[1] and self.f[0] <= f <= self.f[1]


# The widely used R x F grid (the regular-expression ``seg_map`` of pandas RFM tutorials: [1-2][1-2]
# hibernating, [1-2][3-4] at risk, [1-2]5 can't lose, 3[1-2] about to sleep, 33 need attention,
# [3-4][4-5] loyal, 41 promising, 51 new customers, [4-5][2-3] potential loyalists, 5[4-5] champions),
# with one change so that all eleven names of the issue exist: its hibernating square gives cell
# R1 F1 to "Lost". The grid (R down, F across):
#
#   R5  New Customers       Potential Loyalist  Potential Loyalist  Champions        Champions
#   R4  Promising           Potential Loyalist  Potential Loyalist  Loyal            Loyal
#   R3  About To Sleep      About To Sleep      Need Attention      Loyal            Loyal
#   R2  Hibernating         Hibernating         At Risk             At Risk          Can't Lose Them
#   R1  Lost                Hibernating         At Risk             At Risk          Can't Lose Them
#       F1                  F2                  F3                  F4               F5
DEFAULT_SEGMENTS: tuple[SegmentRule, ...] = (
    SegmentRule("Champions", (5, 5), (4, 5)),
    SegmentRule("Loyal", (3, 4), (4, 5)),
    SegmentRule("Potential Loyalist", (4, 5), (2, 3)),
    SegmentRule("New Customers", (5, 5), (1, 1)),
    SegmentRule("Promising", (4, 4), (1, 1)),
    SegmentRule("Need Attention", (3, 3), (3, 3)),
    SegmentRule("About To Sleep", (3, 3), (1, 2)),
    SegmentRule("Can't Lose Them", (1, 2), (5, 5)),
    SegmentRule("At Risk", (1, 2), (3, 4)),
    SegmentRule("Lost", (1, 1), (1, 1)),
    SegmentRule("Hibernating", (1, 2), (1, 2)),
)


def segment_of(r: int, f: int, rules: Sequence[SegmentRule] = DEFAULT_SEGMENTS) -> str:
    """The name of the first rule whose ranges hold (R, F); scores are 1..5."""
    if r not in SCORES or f not in SCORES:
        raise ValueError(f"R and F scores are 1..5, got R={r}, F={f}")
    for rule in rules:
        if rule.matches(r, f):
            return rule.name
    raise ValueError(f"no segment rule covers R={r}, F={f}")


def check_segments(rules: Sequence[SegmentRule], where: str = "value.segments") -> None:
    """Every (R, F) cell has a segment and every rule wins at least one cell; else ``ModelError``."""
    if not rules:
        raise ModelError(f"{where}: at least one segment rule is needed")
    won: set[int] = set()
    for r in SCORES:
        for f in SCORES:
            index = next((i for i, rule in enumerate(rules) if rule.matches(r, f)), None)
            if index is None:
                raise ModelError(f"{where}: no rule covers R={r}, F={f}")
            won.add(index)
    dead = [rules[i].name for i in range(len(rules)) if i not in won]
    if dead:
        raise ModelError(f"{where}: rule(s) {dead} never match (earlier rules take all their cells)")


def _score_range(raw: object, where: str) -> tuple[int, int]:
    items = [raw, raw] if isinstance(raw, int) else raw
    if isinstance(items, list | tuple) and len(items) == 2:
        low, high = items
        if all(isinstance(s, int) and not isinstance(s, bool) and s in SCORES for s in (low, high)) and low <= high:
            return (low, high)
    raise ModelError(f"{where}: expected a score 1..5 or a range [low, high] within 1..5, got {raw!r}")


def parse_segments(raw: object, where: str = "value.segments") -> tuple[SegmentRule, ...]:
    """Segment rules from ``[{name: Champions, r: [4, 5], f: [4, 5]}, ...]`` (a bare score means [s, s])."""
    if not isinstance(raw, list):
        raise ModelError(f"{where}: expected a list of {{name, r, f}} rules")
    rules = []
    for i, item in enumerate(raw):
        at = f"{where}[{i}]"
        if not isinstance(item, Mapping):
            raise ModelError(f"{at}: a rule is a mapping {{name, r, f}}")
        unknown = set(item) - {"name", "r", "f"}
        if unknown:
            raise ModelError(f"{at}: unknown key(s) {sorted(unknown)}")
        name = item.get("name")
        if not isinstance(name, str) or not name:
            raise ModelError(f"{at}: 'name' must be a non-empty string")
        rules.append(SegmentRule(name, _score_range(item.get("r"), f"{at}.r"), _score_range(item.get("f"), f"{at}.f")))
    check_segments(rules, where)
    return tuple(rules)


# --- customer-value windows and churn-risk bands --------------------------------------------

CHURN_BANDS = ("Low", "Medium", "High")


@dataclass(frozen=True, slots=True)
class ClvSettings:
    """The windows of the predicted figures and the churn-risk bands (model file ``value``:
    ``predicted_clv_days`` and ``churn_risk: {window_days, medium, high}``).

    Churn risk is P(no order in the next ``churn_window_days``); it is Low below ``medium``,
    Medium from ``medium`` to below ``high``, High from ``high``. The defaults are Klaviyo's:
    predicted CLV over 365 days, churn over 90 days, Low under 33%, Medium 33-66%, High over 66%
    (Klaviyo's predictive analytics documentation, as cited in docs/model.md).
    """

    predicted_clv_days: float = 365.0
    churn_window_days: float = 90.0
    medium: float = 0.33
    high: float = 0.66

    def __post_init__(self) -> None:
        for name in ("predicted_clv_days", "churn_window_days"):
            days = getattr(self, name)
            if isinstance(days, bool) or not isinstance(days, int | float) or not (0.0 < days <= 3650.0):
                where = "value.predicted_clv_days" if name == "predicted_clv_days" else "value.churn_risk.window_days"
                raise ModelError(f"{where}: expected a number of days in (0, 3650], got {days!r}")
        for name in ("medium", "high"):
            level = getattr(self, name)
            if isinstance(level, bool) or not isinstance(level, int | float) or not (0.0 < level < 1.0):
                raise ModelError(f"value.churn_risk.{name}: expected a probability in (0, 1), got {level!r}")
        if not self.medium < self.high:
            raise ModelError(f"value.churn_risk: medium ({self.medium}) must be below high ({self.high})")

    @property
    def levels(self) -> tuple[float, float]:
        """The probabilities at which Medium and High begin."""
        return (self.medium, self.high)

    def band(self, risk: float) -> str:
        """Low, Medium or High for a churn risk (a probability)."""
        return CHURN_BANDS[sum(risk >= level for level in self.levels)]

    @classmethod
    def from_dict(cls, predicted_days: object, churn: object) -> ClvSettings:
        kwargs: dict[str, Any] = {}
        if predicted_days is not None:
            kwargs["predicted_clv_days"] = predicted_days
        if churn is not None:
            if not isinstance(churn, Mapping):
                raise ModelError("value.churn_risk: expected a mapping {window_days, medium, high}")
            unknown = set(churn) - {"window_days", "medium", "high"}
            if unknown:
                raise ModelError(f"value.churn_risk: unknown key(s) {sorted(unknown)}")
            if "window_days" in churn:
                kwargs["churn_window_days"] = churn["window_days"]
            for key in ("medium", "high"):
                if key in churn:
                    kwargs[key] = churn[key]
        return cls(**kwargs)


DEFAULT_CLV = ClvSettings()


# --- configuration -----------------------------------------------------------------------------


def currency_code(raw: object) -> str | None:
    """A currency code as the ledger keys it (upper case), None when absent or blank."""
    return (raw.strip().upper() or None) if isinstance(raw, str) else None


def _names(raw: object, where: str) -> tuple[str, ...]:
    items = [raw] if isinstance(raw, str) else raw
    if not isinstance(items, list | tuple) or not items or not all(isinstance(i, str) and i for i in items):
        raise ModelError(f"{where}: expected an event name or a non-empty list of them")
    return tuple(items)


@dataclass(frozen=True, slots=True)
class ValueConfig:
    """What counts as a purchase or a refund, how to convert currencies, how to name segments.

    ``rates`` maps a currency code (any case) to the multiplier that converts it into
    ``base_currency``; the base currency itself is always 1.
    """

    base_currency: str = "USD"
    rates: Mapping[str, float] = field(default_factory=dict)
    order_events: tuple[str, ...] = ("Order Completed",)
    refund_events: tuple[str, ...] = ("Order Refunded",)
    segments: tuple[SegmentRule, ...] = DEFAULT_SEGMENTS
    # the ledger's bounds (see "Bounds" in the module docstring)
    max_orders: int = 512
    max_refunds_per_order: int = 16
    max_refunds: int = 512
    max_pending_refunds: int = 128
    max_recent_folded: int = 256
    clv: ClvSettings = DEFAULT_CLV

    def __post_init__(self) -> None:
        if (
            self.max_orders < 8
            or min(self.max_refunds_per_order, self.max_refunds) < 1
            or min(self.max_pending_refunds, self.max_recent_folded) < 0
        ):
            raise ModelError(
                "value: max_orders >= 8, max_refunds_per_order >= 1, max_refunds >= 1, max_pending_refunds >= 0"
                " and max_recent_folded >= 0"
            )
        base = currency_code(self.base_currency)
        if base is None:
            raise ModelError("value.base_currency: expected a currency code such as 'EUR'")
        rates: dict[str, float] = {}
        for code, rate in self.rates.items():
            key = currency_code(code)
            if key is None or isinstance(rate, bool) or not isinstance(rate, int | float):
                raise ModelError(f"value.rates: expected currency code -> number, got {code!r}: {rate!r}")
            if not (math.isfinite(rate) and rate > 0.0):
                raise ModelError(f"value.rates.{key}: a rate must be positive and finite, got {rate!r}")
            if key == base and rate != 1.0:
                raise ModelError(f"value.rates.{key}: the base currency's rate is 1, got {rate!r}")
            rates[key] = float(rate)
        rates[base] = 1.0
        if set(self.order_events) & set(self.refund_events):
            raise ModelError("value: an event cannot be both an order and a refund")
        check_segments(self.segments)
        object.__setattr__(self, "base_currency", base)
        object.__setattr__(self, "rates", rates)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> ValueConfig:
        """From the model file's ``value`` mapping: ``base_currency``, ``rates``, ``order_events``,
        ``refund_events``, ``segments``, ``predicted_clv_days``, ``churn_risk``; every key optional
        (defaults as the class)."""
        known = {
            "base_currency",
            "rates",
            "order_events",
            "refund_events",
            "segments",
            "predicted_clv_days",
            "churn_risk",
        }
        unknown = set(raw) - known
        if unknown:
            raise ModelError(f"value: unknown key(s) {sorted(unknown)}")
        kwargs: dict[str, Any] = {}
        if "base_currency" in raw:
            kwargs["base_currency"] = raw["base_currency"]
        if "rates" in raw:
            if not isinstance(raw["rates"], Mapping):
                raise ModelError("value.rates: expected a mapping of currency code -> multiplier")
            kwargs["rates"] = dict(raw["rates"])
        for key in ("order_events", "refund_events"):
            if key in raw:
                kwargs[key] = _names(raw[key], f"value.{key}")
        if "segments" in raw:
            kwargs["segments"] = parse_segments(raw["segments"])
        if "predicted_clv_days" in raw or "churn_risk" in raw:
            kwargs["clv"] = ClvSettings.from_dict(raw.get("predicted_clv_days"), raw.get("churn_risk"))
        return cls(**kwargs)

    def rate(self, currency: str) -> float | None:
        return self.rates.get(currency)
