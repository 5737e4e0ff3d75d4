"""HTTP bodies of the analytics reads and reports (v1), served from the ClickHouse archive.

``GET /v1/contacts`` (the CRM's sync list), ``GET /v1/contacts/{id}/history`` (score ledger, stage
history and the as-of view), ``GET /v1/reports/funnel``, ``/rfm``, ``/personas`` and ``/forecast``.
Times are ISO 8601 (UTC); durations are in days.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

# --- the sync list -----------------------------------------------------------------------------


class GroupScoreOut(BaseModel):
    """A score group's score (the model's `engagement.groups`), as `GET /v1/contacts/{id}` shows it."""

    id: str
    score: float = Field(description="Decayed to `as_of` at the group's half-life, clamped by its `max`.")
    band: str = Field(description="The band of `score` (the group's bands).")


class ContactRowOut(BaseModel):
    """A contact as the archive's ``contacts`` table last summarised it."""

    contact_id: str
    status: str = Field(description="`active`; with `status=all` also `merged` (see `merged_into`) or `deleted`.")
    merged_into: str | None
    user_id: str | None
    email: str | None
    account_id: str | None
    stage: str | None
    stage_since: datetime | None
    persona: str | None
    flags: list[str]
    engagement: float = Field(description="Engagement decayed to `as_of` of the list (the request time).")
    engagement_band: str = Field(description="The band of `engagement` (decayed).")
    engagement_at_last_seen: float = Field(description="Engagement at `last_seen`, as stored.")
    fit: float
    fit_grade: str
    grade: str = Field(description="Fit letter x engagement band of the decayed engagement, as the contact route.")
    rfm_segment: str | None = Field(description="The RFM segment the worker last assigned.")
    orders: int = Field(description="Orders with a net value above 0.")
    revenue: float = Field(description="Their net value, base currency.")
    first_order_at: datetime | None
    last_order_at: datetime | None
    first_seen: datetime | None
    last_seen: datetime | None
    updated_at: datetime = Field(description="When the change was written (the contacts changelog record time).")
    model_version: str
    groups: list[GroupScoreOut] = Field(
        default_factory=list,
        description="Every score group of the active model (its order), decayed to `as_of`; empty for a model "
        "without groups and for a contact not `active`.",
    )


class ContactListOut(BaseModel):
    data: list[ContactRowOut]
    next_cursor: str = Field(
        description="Pass as `cursor` to read on; always set (also on the last page), so a sync can keep it and ask "
        "again later for what changed since."
    )
    has_more: bool = Field(description="Whether more rows were waiting when this page was read.")
    as_of: datetime = Field(description="The instant engagement was decayed to.")


# --- history -----------------------------------------------------------------------------------


class LedgerRowOut(BaseModel):
    """One change of the contact's scores: engagement (beyond decay), fit or stage, or a merge/deletion."""

    at: datetime = Field(description="The contact's newest event time when it changed (scores are as of then).")
    kind: str = Field(description="`score`, `merged` or `deleted`.")
    cause: str = Field(
        description="`first`, `events`, `other` (late events, merges), `fit`, `stage`, `merged`, `deleted`."
    )
    engagement: float = Field(description="Engagement at `at`.")
    engagement_band: str
    fit: float
    fit_grade: str
    stage: str | None
    rules: list[str] = Field(description="The rules matched by the events in `message_ids`.")
    message_ids: list[str] = Field(description="The scored events since the previous row (the newest 16).")
    merged_into: str | None
    model_version: str
    groups: list[GroupScoreOut] = Field(
        default_factory=list,
        description="Every score group of the model at `at` (clamped by its `max`); empty for a model without "
        "groups, a merge or a deletion.",
    )


class TransitionOut(BaseModel):
    at: datetime
    from_stage: str | None
    to_stage: str
    rule: str
    cause: str | None = Field(description="Message id of the event that caused it; null when time did.")
    model_version: str
    trigger_id: str


class AsOfOut(BaseModel):
    """The contact's scores as they were at `at`: the last ledger row at or before it, engagement
    decayed to `at` with the active model's half-life, the stage after the last transition by then."""

    at: datetime
    kind: str
    engagement: float
    engagement_band: str
    fit: float
    fit_grade: str
    grade: str
    stage: str | None
    ledger_at: datetime = Field(description="`at` of the ledger row the scores come from.")
    model_version: str
    groups: list[GroupScoreOut] = Field(
        default_factory=list, description="Every score group of the model, decayed to `at` at its half-life."
    )


class HistoryOut(BaseModel):
    contact_id: str
    model: str = Field(
        description="The model the ledger, the transitions and `as_of` are of: a version (`name@hash`), or a name "
        "(every version of it); default: the active model's version."
    )
    from_: datetime | None = Field(alias="from", description="Start of the window (inclusive); null: the beginning.")
    to: datetime = Field(description="End of the window (exclusive).")
    ledger: list[LedgerRowOut] = Field(description="Oldest first.")
    transitions: list[TransitionOut] = Field(description="Stage changes in the window, oldest first.")
    truncated: bool = Field(description="Whether the window held more than `limit` rows of either list.")
    as_of: AsOfOut | None = Field(description="Null when the contact had no ledger row by then.")

    model_config = ConfigDict(populate_by_name=True)


# --- funnel ------------------------------------------------------------------------------------


class FunnelStageOut(BaseModel):
    stage: str
    entered: int = Field(description="Contacts that entered this stage in the window (whatever came before).")
    reached: int = Field(description="Contacts of the funnel that got to this step in the window (see `mode`).")
    conversion: float | None = Field(description="`reached` over the previous step's `reached`; null for the first.")
    conversion_from_start: float | None = Field(description="`reached` over the first step's `reached`.")
    median_days_in_stage: float | None = Field(
        description="Median time in the stage of the stays that began in the window and have ended (by now)."
    )
    completed_stays: int = Field(description="The stays the median is taken over.")
    open_stays: int = Field(description="Stays that began in the window and have not ended yet.")
    median_days_from_start: float | None = Field(
        description="Velocity: median time from the first step to this one, over the contacts that reached it."
    )


class FunnelOut(BaseModel):
    model: str | None = Field(description="The model version (or name) whose transitions were counted; null: all.")
    mode: str = Field(
        description="`cumulative`: a step is reached by entering it or any later step of the list, after the first "
        "step; `sequential`: by entering exactly that stage, in order. Both as ClickHouse's "
        "`windowFunnel` (default mode) over the window."
    )
    from_: datetime = Field(alias="from")
    to: datetime
    stages: list[FunnelStageOut]

    model_config = ConfigDict(populate_by_name=True)


# --- RFM ---------------------------------------------------------------------------------------


class RfmReportBoundariesOut(BaseModel):
    last_order_at: list[datetime] = Field(description="The four recency boundaries (later = better).")
    orders: list[float] = Field(description="The four frequency boundaries.")
    customers: int = Field(description="Customers the boundaries were computed over (by the workers).")


class RfmCellOut(BaseModel):
    r: int
    f: int
    segment: str
    contacts: int
    revenue: float


class RfmSegmentOut(BaseModel):
    segment: str
    contacts: int
    revenue: float
    share: float = Field(description="Of all customers.")


class RfmReportOut(BaseModel):
    customers: int
    revenue: float
    non_customers: int = Field(description="Active contacts without an order.")
    boundaries: RfmReportBoundariesOut | None = Field(
        description="Null before the workers published a population model."
    )
    grid: list[RfmCellOut] = Field(description="The 25 R x F cells (R 5..1, F 1..5); empty without boundaries.")
    segments: list[RfmSegmentOut] = Field(description="Largest first.")
    segments_from: str = Field(
        description="`boundaries`: the grid's cells under the current boundaries (as the contact route scores); "
        "`stored`: the segment each contact was last given, while there are no boundaries."
    )


# --- personas ----------------------------------------------------------------------------------


class PersonaCellOut(BaseModel):
    persona: str | None = Field(description="Null: no persona matched.")
    stage: str | None
    contacts: int
    avg_engagement: float = Field(description="Mean engagement decayed to `as_of`.")
    avg_fit: float
    avg_group_score: float | None = Field(
        default=None,
        description="With `?group=`: the mean score of that score group decayed to `as_of` (0 without points).",
    )


class PersonasOut(BaseModel):
    as_of: datetime
    personas: list[str | None] = Field(description="The model's personas in order, then null (none), as present.")
    stages: list[str | None] = Field(description="The model's stages in order, as present.")
    cells: list[PersonaCellOut] = Field(description="Non-empty cells, by persona then stage.")
    contacts: int
    group: str | None = Field(default=None, description="The score group of `avg_group_score` (`?group=`), if any.")


# --- score groups ------------------------------------------------------------------------------


class GroupBandOut(BaseModel):
    band: str
    min: float | None = Field(description="The band's lowest score; null for the last band (no lower bound).")
    contacts: int = Field(description="Active contacts with points in the group whose score now is in this band.")
    share: float = Field(description="Their share of the group's `contacts` (0 to 1).")
    avg_score: float = Field(description="Their mean score now; 0 for an empty band.")


class GroupReportOut(BaseModel):
    id: str
    description: str
    half_life_days: float
    contacts: int = Field(description="Active contacts with points in the group.")
    without_points: int = Field(default=0, description="Active contacts without any (not in `bands`).")
    avg_score: float = Field(description="Mean score now of `contacts`.")
    bands: list[GroupBandOut] = Field(description="Every band of the group, highest first, empty ones too.")


class GroupsReportOut(BaseModel):
    as_of: datetime = Field(description="The instant the scores are decayed to (the request time).")
    model: str = Field(description="The model version whose groups, half-lives and bands are used (the active one).")
    contacts: int = Field(description="Active contacts (of `stages`, when given).")
    stages: list[str] = Field(description="The stages asked for; empty: every contact.")
    groups: list[GroupReportOut] = Field(description="In the model's order; empty for a model without groups.")


# --- forecast ----------------------------------------------------------------------------------


class ForecastValueOut(BaseModel):
    per_customer: float = Field(description="The expected value of one new customer.")
    customers: int = Field(description="Customers it was averaged over.")
    basis: str = Field(
        description="`new_customers`: mean net revenue to date of the customers whose first order was in the lookback; "
        "`all_customers` when there were none; `none` without any customer."
    )


class ForecastStageOut(BaseModel):
    stage: str
    open_contacts: int = Field(description="Active contacts in the stage now.")
    entered: int = Field(description="Contacts that entered the stage in the lookback.")
    converted: int = Field(description="Of those, how many entered a customer stage since.")
    conversion: float | None = Field(description="`converted / entered`; null when none entered (counted as 0).")
    expected_customers: float
    expected_revenue: float


class ForecastAccountValueOut(BaseModel):
    per_customer: float = Field(
        description="The expected value of one new customer account: the net revenue to date of its members' orders."
    )
    customers: int = Field(description="Customer accounts it was averaged over.")
    basis: str = Field(
        description="`new_customers`: mean, over the accounts whose first member order was in the lookback, of the net "
        "revenue to date of their active contacts (a contact counts for the account it belongs to now); "
        "`all_customers` when there were none; `none` without any account with an order."
    )


class ForecastAccountStageOut(BaseModel):
    stage: str
    open_accounts: int = Field(
        description="Accounts in the stage now: the stage of each account's latest archived row of `accounts.model`, "
        "accounts with no member left not counted."
    )
    entered: int = Field(
        description="Accounts that entered the stage in the lookback (the initial stage: at the account's first "
        "archived row; the others: `account.stage_changed` triggers)."
    )
    converted: int = Field(
        description="Of those, how many entered a customer stage (`accounts.customer_stages`) since."
    )
    conversion: float | None = Field(description="`converted / entered`; null when none entered (counted as 0).")
    expected_customers: float = Field(description="New customer accounts expected: `open_accounts x conversion`.")
    expected_revenue: float = Field(description="`expected_customers x accounts.value.per_customer`.")


class ForecastAccountsOut(BaseModel):
    """The B2B accounts pipeline, beside the contacts one: open accounts per open account stage x the
    share of the accounts that entered that stage in the lookback and have become customer accounts
    since x the value of a new customer account. The same revenue seen per account, not more of it:
    an account becomes a customer when one of its members (a contact) orders, and its value is its
    members' order revenue, which the contacts pipeline (`stages`) already forecasts; so it is not
    added to the top-level totals."""

    model: str = Field(
        description="The model whose archived account rows give the accounts' current stages: the request's `model`, "
        "else the active model's version (after a promotion the archive holds both models' rows). Transitions are "
        "counted as for the contacts (the top-level `model`; null: every model's)."
    )
    customer_stages: list[str] = Field(
        description="The account stages of customer accounts: those every transition into which needs a customer "
        "member (e.g. `customers >= 1`)."
    )
    value: ForecastAccountValueOut
    stages: list[ForecastAccountStageOut] = Field(
        description="The open account stages (every other stage of the model's account graph), in the graph's order."
    )
    expected_customers: float = Field(description="Sum over `stages`: new customer accounts expected.")
    expected_revenue: float = Field(
        description="Sum over `stages`. The money it stands for (the members' orders) is forecast by the contacts "
        "pipeline too, so it is not in the top-level `expected_revenue`: never add the two."
    )


class ForecastOut(BaseModel):
    as_of: datetime
    lookback_days: float
    model: str | None = Field(description="The model version (or name) whose transitions were counted; null: all.")
    customer_stages: list[str]
    value: ForecastValueOut
    stages: list[ForecastStageOut]
    expected_customers: float = Field(
        description="Sum over `stages` (the contacts pipeline): new customers expected. `accounts` is not included."
    )
    expected_revenue: float = Field(
        description="Sum over `stages` (the contacts pipeline). `accounts.expected_revenue` is not added: an account's "
        "revenue is its members' orders, which the contacts pipeline already forecasts (the accounts pipeline is the "
        "same money per account, a B2B view of it), and adding it would count it twice."
    )
    accounts: ForecastAccountsOut = Field(
        description="The B2B accounts pipeline, forecast the same way per account; not included in the totals above."
    )
