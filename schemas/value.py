"""HTTP bodies of customer value (v1): a contact's ``rfm`` and ``clv``, and ``GET /v1/models/clv``.

The builders return plain dicts shaped like these models (datetimes as ``datetime``), ready for
orjson like the rest of the contact body; the models document them in the OpenAPI document.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from schemas.times import dt_of as _dt
from scorestream.population import HORIZON_DAYS, PopulationModel, ValueView

__all__ = [
    "BgNbdOut",
    "ChurnBandOut",
    "ChurnReportOut",
    "ClvModelOut",
    "ClvOut",
    "GammaGammaOut",
    "RfmBoundariesOut",
    "RfmOut",
    "ValueOut",
    "clv_model_body",
    "value_body",
]


class RfmOut(BaseModel):
    recency_days: float = Field(description="Days since the last order not refunded (a free order counts).")
    frequency: int = Field(description="Orders not refunded (a free order counts), every channel.")
    monetary: float = Field(description="Net revenue in the model's base currency.")
    aov: float = Field(description="Average order value (monetary over the valued orders).")
    first_order: datetime
    last_order: datetime
    r: int | None = Field(description="Recency quintile 1-5 (5 = most recent); null before the first population model.")
    f: int | None = Field(
        description="Frequency quintile 1-5 (5 = most orders); null before the first population model."
    )
    m: int | None = Field(
        description="Monetary quintile 1-5 (5 = most revenue); null before the first population model."
    )
    segment: str | None = Field(description="Named R x F segment (Champions, At Risk, ...); null with r/f.")


class ClvOut(BaseModel):
    p_alive: float | None = Field(description="BG/NBD probability that the customer is still active.")
    expected_purchases_90d: float | None = Field(description="Expected purchases in the next 90 days.")
    clv_90d: float | None = Field(
        description="Expected purchases times Gamma-Gamma expected spend, next 90 days, base currency, undiscounted."
    )
    model_fitted_at: datetime | None = Field(description="When the model used was fitted; null: no fit yet.")
    historic_clv: float = Field(description="Net revenue to date (orders less refunds), base currency: RFM's monetary.")
    predicted_window_days: float = Field(
        description="The window of predicted_clv and p_order (model file value.predicted_clv_days)."
    )
    predicted_clv: float | None = Field(
        description="Expected purchases in the window times Gamma-Gamma expected spend, base currency, undiscounted; "
        "null without a fit (or when expected spend is infinite)."
    )
    p_order: float | None = Field(
        description="BG/NBD probability of at least one order in the window; null without a fit."
    )
    churn_window_days: float = Field(description="The window of churn_risk (model file value.churn_risk.window_days).")
    churn_risk: float | None = Field(
        description="BG/NBD probability of no order in the churn window; null without a fit."
    )
    churn_risk_band: Literal["Low", "Medium", "High"] | None = Field(
        description="Low, Medium or High by the model file's value.churn_risk levels (default 0.33 and 0.66)."
    )
    days_between_orders: float | None = Field(
        description="Mean days between the orders not refunded, (last - first) / (orders - 1); null with one order."
    )
    next_order_expected: datetime | None = Field(
        description="Now plus the median time to the next order (P(no order by then) = 1/2); null without a fit or "
        "when the customer is more likely gone than not."
    )


class ValueOut(BaseModel):
    rfm: RfmOut | None = Field(description="Null for a contact who is not a customer (no order that was not refunded).")
    clv: ClvOut | None = Field(description="Null for a contact who is not a customer.")


def value_body(view: ValueView | None) -> dict[str, Any]:
    """``{"rfm": ..., "clv": ...}`` (a :class:`ValueOut`) of a contact's value view."""
    if view is None:
        return {"rfm": None, "clv": None}
    facts, score = view.facts, view.score
    return {
        "rfm": {
            "recency_days": facts.recency_days,
            "frequency": facts.frequency,
            "monetary": facts.monetary,
            "aov": facts.aov,
            "first_order": _dt(facts.first_order_ms),
            "last_order": _dt(facts.last_order_ms),
            "r": None if score is None else score.r,
            "f": None if score is None else score.f,
            "m": None if score is None else score.m,
            "segment": None if score is None else score.segment,
        },
        "clv": {
            "p_alive": view.p_alive,
            "expected_purchases_90d": view.expected_purchases_90d,
            "clv_90d": view.clv_90d,
            "model_fitted_at": _dt(view.model_fitted_at_ms),
            **_outlook(view),
        },
    }


def _outlook(view: ValueView) -> dict[str, Any]:
    ahead, settings = view.outlook, view.settings
    return {
        "historic_clv": view.facts.monetary,
        "predicted_window_days": settings.predicted_clv_days,
        "predicted_clv": None if ahead is None else ahead.predicted_clv,
        "p_order": None if ahead is None else ahead.p_order,
        "churn_window_days": settings.churn_window_days,
        "churn_risk": None if ahead is None else ahead.churn_risk,
        "churn_risk_band": None if ahead is None else ahead.churn_band,
        "days_between_orders": view.days_between_orders,
        "next_order_expected": None if ahead is None else _dt(ahead.next_order_ms),
    }


class BgNbdOut(BaseModel):
    r: float
    alpha: float = Field(description="In days.")
    a: float
    b: float
    log_likelihood: float
    customers: int = Field(description="Customers the fit used.")
    converged: bool = Field(description="False: the optimiser stopped at its iteration limit (a boundary maximum).")


class GammaGammaOut(BaseModel):
    p: float
    q: float
    v: float = Field(description="gamma in Fader & Hardie's notation, in the base currency.")
    log_likelihood: float
    customers: int = Field(description="Customers with repeat purchases the fit used.")
    converged: bool = Field(description="False: the optimiser stopped at its iteration limit (a boundary maximum).")


class RfmBoundariesOut(BaseModel):
    last_order: list[datetime] = Field(description="R quintile boundaries (on the last order's time).")
    frequency: list[float]
    monetary: list[float]
    customers: int
    rank_error: float = Field(description="Each boundary is the exact quantile of a rank at most this fraction above.")
    computed_at: datetime


class ClvModelOut(BaseModel):
    fitted_at: datetime
    sample_size: int = Field(description="Customers in the fitting sample (the lowest hashes of contact ids).")
    customers: int = Field(description="Customers in the whole population when the model was computed.")
    time_unit: Literal["day"] = "day"
    horizon_days: float
    bgnbd: BgNbdOut
    gamma_gamma: GammaGammaOut
    rfm_boundaries: RfmBoundariesOut | None
    last_fit_error: str | None = Field(
        description="Why the latest refit was refused (the fit shown was kept); null when it succeeded."
    )


def clv_model_body(model: PopulationModel) -> dict[str, Any] | None:
    """The :class:`ClvModelOut` of a population model; None before its first successful fit."""
    fit = model.fit
    if fit is None:
        return None
    bg, gg = fit.bgnbd, fit.gamma_gamma
    bounds = model.boundaries
    return {
        "fitted_at": _dt(fit.fitted_at_ms),
        "sample_size": fit.sample_size,
        "customers": model.customers,
        "time_unit": "day",
        "horizon_days": HORIZON_DAYS,
        "bgnbd": {
            "r": bg.params.r,
            "alpha": bg.params.alpha,
            "a": bg.params.a,
            "b": bg.params.b,
            "log_likelihood": bg.log_likelihood,
            "customers": bg.n_customers,
            "converged": bg.converged,
        },
        "gamma_gamma": {
            "p": gg.params.p,
            "q": gg.params.q,
            "v": gg.params.v,
            "log_likelihood": gg.log_likelihood,
            "customers": gg.n_customers,
            "converged": gg.converged,
        },
        "rfm_boundaries": None
        if bounds is None
        else {
            "last_order": [_dt(int(b)) for b in bounds.last_order_ms],
            "frequency": list(bounds.frequency),
            "monetary": list(bounds.monetary),
            "customers": bounds.customers,
            "rank_error": model.rank_error,
            "computed_at": _dt(model.computed_at_ms),
        },
        "last_fit_error": model.fit_error,
    }


class ChurnBandOut(BaseModel):
    band: str = Field(description="Low, Medium or High.")
    min_risk: float = Field(description="The band's lowest churn risk (the model file's value.churn_risk levels).")
    customers: int
    share: float = Field(description="Of all customers in the report.")
    revenue: float = Field(description="Revenue at risk: the band's customers' historic net revenue, base currency.")
    revenue_share: float = Field(description="Of all customers' net revenue.")
    mean_risk: float | None = Field(description="The band's mean churn risk; null for an empty band.")


class ChurnReportOut(BaseModel):
    as_of: datetime
    churn_window_days: float = Field(description="Churn risk is P(no order in this many days).")
    model_fitted_at: datetime = Field(description="When the BG/NBD fit used was made.")
    customers: int = Field(description="Active contacts with an order.")
    revenue: float = Field(description="Their net revenue, base currency.")
    bands: list[ChurnBandOut] = Field(description="Low, Medium, High; every band listed.")
