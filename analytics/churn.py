"""The churn-risk report (``GET /v1/reports/churn-risk``): the active customers per churn-risk band
under the population's current BG/NBD fit, with the revenue at risk.

A customer's churn risk is P(no order in the next ``churn_window_days``), the formula of
:func:`scorestream.clv.p_no_purchase`, computed in ClickHouse from the ``contacts`` row: ``x`` =
``orders`` - 1, ``t_x`` = last - first order, ``T`` = now - first order, in days. That is the
archive's summary of the ledger (orders with a net value, first and last), so a customer whose
orders share an instant, or who has orders without a currency rate, may differ slightly from the
exact figure ``GET /v1/contacts/{id}`` gives from the whole ledger. Bands by the model file's
``value.churn_risk`` levels. Revenue at risk: the band's customers' historic net revenue (what
they have been worth so far; the High band's is the revenue most at risk), beside their mean risk.
"""

from __future__ import annotations

from analytics.client import Store
from analytics.reports import Rows
from schemas.times import at_of as _at
from schemas.value import ChurnBandOut, ChurnReportOut
from scorestream.population import ClvFit
from scorestream.rules.value import CHURN_BANDS, ClvSettings

DAYS = "86400000.0"

# per band: customers, their net revenue, their mean churn risk
CHURN_BANDS_SQL = f"""
SELECT
    multiIf(risk >= {{high:Float64}}, 'High', risk >= {{medium:Float64}}, 'Medium', 'Low') AS band,
    count(),
    sum(revenue),
    avg(risk)
FROM (
    SELECT
        revenue,
        toFloat64(greatest(orders, 1) - 1) AS x,
        (toUnixTimestamp64Milli(assumeNotNull(last_order_at))
            - toUnixTimestamp64Milli(assumeNotNull(first_order_at))) / {DAYS} AS t_x,
        greatest(({{now:Int64}} - toUnixTimestamp64Milli(assumeNotNull(first_order_at))) / {DAYS}, t_x) AS age,
        if(
            x > 0,
            1.0 / (1.0 + {{a:Float64}} / ({{b:Float64}} + x - 1.0)
                * pow(({{alpha:Float64}} + age) / ({{alpha:Float64}} + t_x), {{r:Float64}} + x)),
            1.0
        ) AS alive,
        (1.0 - alive) + alive * pow(({{alpha:Float64}} + age) / ({{alpha:Float64}} + age + {{window:Float64}}), {{r:Float64}} + x)
            AS risk
    FROM contacts FINAL
    WHERE status = 'active' AND orders > 0 AND first_order_at IS NOT NULL AND last_order_at IS NOT NULL
)
GROUP BY band
"""  # noqa: S608 (constant fragments; values are bound as parameters)


def churn_parameters(fit: ClvFit, settings: ClvSettings, now_ms: int) -> dict[str, float | int]:
    bg = fit.bgnbd.params
    return {
        "r": bg.r,
        "alpha": bg.alpha,
        "a": bg.a,
        "b": bg.b,
        "window": settings.churn_window_days,
        "medium": settings.medium,
        "high": settings.high,
        "now": now_ms,
    }


def churn_body(rows: Rows, fit: ClvFit, settings: ClvSettings, now_ms: int) -> ChurnReportOut:
    """The report from :data:`CHURN_BANDS_SQL`' rows: every band listed (Low, Medium, High), empty ones too."""
    found = {str(band): (int(n), float(revenue), float(risk)) for band, n, revenue, risk in rows}
    customers = sum(n for n, _, _ in found.values())
    revenue = sum(v for _, v, _ in found.values())
    bands = []
    for name, low in zip(CHURN_BANDS, (0.0, *settings.levels), strict=True):
        n, value, risk = found.get(name, (0, 0.0, 0.0))
        bands.append(
            ChurnBandOut(
                band=name,
                min_risk=low,
                customers=n,
                share=n / customers if customers else 0.0,
                revenue=value,
                revenue_share=value / revenue if revenue else 0.0,
                mean_risk=risk if n else None,
            )
        )
    return ChurnReportOut(
        as_of=_at(now_ms),
        churn_window_days=settings.churn_window_days,
        model_fitted_at=_at(fit.fitted_at_ms),
        customers=customers,
        revenue=revenue,
        bands=bands,
    )


async def churn_report(store: Store, fit: ClvFit, settings: ClvSettings, now_ms: int) -> ChurnReportOut:
    rows = await store.query(CHURN_BANDS_SQL, churn_parameters(fit, settings, now_ms))
    return churn_body(rows, fit, settings, now_ms)
