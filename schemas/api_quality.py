"""HTTP bodies of the journey facts and the score-quality report (v1), served from the ClickHouse archive.

``GET /v1/contacts/{id}/journey`` (one contact's touches before its first order),
``GET /v1/reports/journey`` (their distributions) and ``GET /v1/reports/score-quality`` (does the
score predict?). Times are ISO 8601 (UTC); durations are in days. A figure computed over too few
contacts is null, with ``n`` and a note saying so, rather than a number that means nothing.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

# --- journey facts -----------------------------------------------------------------------------


class TouchesOut(BaseModel):
    """Touches (events of type track, page or screen) by channel."""

    web: int
    email: int
    store: int
    total: int


class JourneyOut(BaseModel):
    """One contact's way to its first order (merged contacts' events included)."""

    contact_id: str
    first_touch_at: datetime | None = Field(description="Its first touch (any channel); null: no touch archived.")
    first_touch_channel: str | None
    first_order_at: datetime | None = Field(
        description="Its first `Order Completed`, whatever the revenue (a free order counts); null: none yet."
    )
    touches_before_first_order: TouchesOut | None = Field(
        description="Touches strictly before the first order (the order itself is not one); null: no order yet."
    )
    touches: TouchesOut = Field(description="All its touches so far, the orders included.")
    days_to_first_order: float | None = Field(description="From the first touch to the first order.")


class BucketOut(BaseModel):
    lower: float = Field(description="Inclusive.")
    upper: float | None = Field(description="Exclusive; null: no upper bound.")
    count: int


class DistributionOut(BaseModel):
    n: int
    mean: float | None
    p25: float | None
    median: float | None
    p75: float | None
    p90: float | None
    histogram: list[BucketOut]


class JourneyGroupOut(BaseModel):
    """Buyers of one group (a persona, a stage, the channel of their first touch)."""

    key: str | None = Field(description="The group's value; null: none (no persona, ...).")
    buyers: int
    touches: DistributionOut = Field(description="Touches before the first order (all channels).")
    days: DistributionOut = Field(description="Days from the first touch to the first order.")
    note: str | None = None


class ChannelTouchesOut(BaseModel):
    channel: str
    touches: DistributionOut = Field(description="This channel's touches before the first order, per buyer.")
    share_of_touches: float | None = Field(description="Of all the buyers' touches before their first order.")


class OfflineFirstOut(BaseModel):
    buyers: int
    offline: int = Field(description="Buyers whose first touch was in a store.")
    share: float | None


class JourneyReportOut(BaseModel):
    from_: datetime = Field(alias="from", description="Buyers whose first order is in [from, to).")
    to: datetime
    buyers: int
    touches: DistributionOut = Field(description="Touches before the first order (all channels).")
    days: DistributionOut = Field(description="Days from the first touch to the first order.")
    by_channel: list[ChannelTouchesOut]
    by_first_channel: list[JourneyGroupOut] = Field(description="By the channel of the first touch.")
    by_persona: list[JourneyGroupOut] = Field(description="By the contact's current persona.")
    by_stage: list[JourneyGroupOut] = Field(description="By the contact's current stage.")
    offline_first: OfflineFirstOut
    min_n: int = Field(description="Groups with fewer buyers show no distribution (a note says so).")
    notes: list[str]

    model_config = ConfigDict(populate_by_name=True)


# --- score quality -----------------------------------------------------------------------------


class QualityCellOut(BaseModel):
    """Scored contacts of one group at the snapshot instants, and how many reached the outcome."""

    key: str = Field(description="The grade (`A1`), the decile (`1`..`10`, 10 the highest scores) or the stage.")
    n: int = Field(description="(contact, snapshot) pairs.")
    positives: int
    rate: float | None = Field(description="positives / n; null under `min_n`.")
    lift: float | None = Field(description="rate / the base rate.")
    mean_score: float | None = Field(default=None, description="Deciles: mean engagement at the snapshots.")
    min_score: float | None = None
    max_score: float | None = None
    note: str | None = None


class CalibrationOut(BaseModel):
    decile: int
    mean_score: float
    observed_rate: float | None
    n: int


class QualityModelOut(BaseModel):
    """How well one model's scores predicted the outcome."""

    model: str = Field(description="The model version (or name) whose ledger rows were read.")
    namespace: str | None = Field(description="Its live namespace, when it runs in one.")
    role: str = Field(description="`active`, `shadow` or `chosen` (a model named by `model=`).")
    n: int = Field(description="(contact, snapshot) pairs scored.")
    contacts: int
    positives: int
    base_rate: float | None
    auc: float | None = Field(
        description="ROC AUC of engagement for the outcome (Mann-Whitney: the chance that a random positive pair "
        "scored above a random negative one, ties counted half); null with too few of either."
    )
    grades: list[QualityCellOut]
    deciles: list[QualityCellOut]
    stages: list[QualityCellOut] = Field(description="By the contact's stage at the snapshot.")
    calibration: list[CalibrationOut]
    notes: list[str]


class QualityComparisonOut(BaseModel):
    """A shadow beside the active model for one group (a stage at the snapshots, or every contact)."""

    shadow: str
    group: str
    active_rate: float | None
    shadow_rate: float | None
    ratio: float | None = Field(description="shadow_rate / active_rate.")
    active_n: int
    shadow_n: int
    text: str


class ScoreQualityOut(BaseModel):
    from_: datetime = Field(alias="from")
    to: datetime
    horizon_days: float
    every_days: float
    outcome: str = Field(description="`order` (any `Order Completed`, free ones too) or `stage:<name>`.")
    group: str | None = Field(
        default=None, description="The score group whose score was judged (its bands make the grades); null: overall."
    )
    snapshots: list[datetime] = Field(description="The instants t the contacts were scored at.")
    min_n: int
    models: list[QualityModelOut] = Field(description="The active (or chosen) model first, then the live shadows.")
    comparisons: list[QualityComparisonOut]
    notes: list[str]

    model_config = ConfigDict(populate_by_name=True)
