"""HTTP bodies of the API (v1). FastAPI renders them into the OpenAPI document at ``/docs``.

The contact routes answer with bodies :mod:`api.render` builds as plain dicts; the models here
document them (``tests/api/test_render.py`` validates the renderer's bodies against them)."""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from schemas.value import ClvOut, RfmOut
from scorestream import Model

MAX_BATCH_IDS = 1000


class Problem(BaseModel):
    """An error answer: RFC 9457 problem details (``application/problem+json``), see ``api.errors``."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(
        description="URI of the problem type: `/problems/<code>` (relative to the API; a page saying what the code "
        "means), `about:blank` for a code without one."
    )
    title: str = Field(description="Short summary of the problem type (the same for every occurrence).")
    status: int = Field(description="The HTTP status code.")
    detail: str = Field(description="What happened this time, for a human.")
    instance: str | None = Field(default=None, description="The request's path.")
    code: str = Field(
        description="Stable machine-readable code, e.g. `not_found`, `unauthorized`, `invalid_request` "
        "(`GET /problems` lists them)."
    )
    request_id: str | None = Field(
        default=None, description="The request's id (its `X-Request-ID`), as the API's log lines carry it."
    )


class ProblemError(BaseModel):
    """One error of an invalid request."""

    detail: str = Field(description="What is wrong.")
    type: str = Field(description="Pydantic's error type, e.g. `missing`, `too_short`, `int_parsing`.")
    loc: list[str | int] = Field(description="Where: `body`, `query`, `path` or `header`, then the field's path.")
    pointer: str | None = Field(default=None, description="A JSON pointer into the body, e.g. `#/ids/0`.")
    parameter: str | None = Field(default=None, description="The query, path or header parameter's name.")
    in_: str | None = Field(default=None, alias="in", description="Where that parameter is: `query`, `path`, ...")


class ValidationProblem(Problem):
    """422 ``invalid_request``: the problem with every error listed."""

    errors: list[ProblemError] = Field(default_factory=list, description="Every error, not only the first.")


class AdjustmentNoteOut(BaseModel):
    """A manual adjustment summed in an ``adjustment`` contribution (``/v1/contacts/{id}/adjustments``)."""

    adjustment_id: str
    points: float = Field(description="Its points as made (the contribution's are decayed).")
    reason: str
    by: str
    at: datetime


class ContributionOut(BaseModel):
    rule: str
    points: float = Field(description="Current points of this rule (decayed, for engagement).")
    description: str = ""
    adjustments: list[AdjustmentNoteOut] | None = Field(
        default=None,
        exclude_if=lambda v: v is None,  # absent on every other rule (as the API's own renderer writes it)
        description="For the manual adjustments' rule (`adjustment`, `adjustment:<group>`) only: the newest five "
        "adjustments it sums, not reverted.",
    )


class Identity(BaseModel):
    user_id: str | None
    anonymous_ids: list[str]
    email: str | None
    merged_ids: list[str] = Field(default_factory=list, description="Contacts merged into this one.")


class MachineOut(BaseModel):
    """A rule some of whose e-mail events a machine made (the model's `machine_traffic`: security
    scanners' clicks, privacy proxies' opens): kept and archived, scored by `machine_traffic.points`."""

    rule: str
    description: str = ""
    points: float = Field(description="The rule's current points in the score (decayed), its machine events included.")
    events: int = Field(description="How many of the rule's kept events (`storage.fold_after`) a machine made.")
    last_at: datetime = Field(description="When the latest of them happened.")
    reason: str = Field(description="Why the latest was judged a machine's: `4 links clicked within 3 s of delivery`.")


class EngagementOut(BaseModel):
    score: float = Field(description="Engagement decayed to `as_of`.")
    band: str
    as_of: datetime
    half_life_days: float
    top: list[ContributionOut]
    machine: list[MachineOut] = Field(
        default_factory=list,
        description='Rules whose recent e-mail events a machine made (docs/model.md "Machine traffic"), with why.',
    )


class GroupOut(BaseModel):
    """A score group's score (the model's `engagement.groups`), beside the overall engagement."""

    id: str
    score: float = Field(
        description="The group's rules' points decayed to `engagement.as_of` at the group's half-life, clamped by "
        "its `max`."
    )
    band: str = Field(description="The band of `score` (the group's bands; the engagement bands by default).")
    half_life_days: float
    top: list[ContributionOut] = Field(description="The group's rules contributing most (decayed, before the clamp).")


class FitOut(BaseModel):
    score: float
    grade: str
    top: list[ContributionOut]


class StageEntryOut(BaseModel):
    stage: str
    entered_at: datetime
    exited_at: datetime | None = Field(description="Null for the current stage.")
    days: float | None = Field(description="Time spent in the stage, in days; null for the current stage.")
    rule: str = Field(description="The transition that led here (`initial`, `completed-order` or a model id).")
    cause: str | None = Field(
        description="Message id of the event that caused it; null when time did (a timer, decay)."
    )


class StageOut(BaseModel):
    name: str
    since: datetime
    days_in_stage: float = Field(description="Days in the current stage at the time of the request.")
    history: list[StageEntryOut] = Field(description="Oldest first; the last entry is the current stage.")
    next_change_at: datetime | None = Field(
        description="When time alone would next change the contact (a timer, a decay-driven move), if ever."
    )


class FlagOut(BaseModel):
    flag: str = Field(description="`competitor`, `job_seeker`, `student`, `bot` or a model's own.")
    reason: str


class ConsentOut(BaseModel):
    categoryPreferences: dict[str, bool] = Field(
        description="The latest consent object seen for the contact (`context.consent.categoryPreferences`)."
    )
    at: datetime = Field(description="The event time of the event that carried it.")


class ContactOut(BaseModel):
    contact_id: str
    identity: Identity
    traits: dict[str, Any]
    engagement: EngagementOut
    groups: list[GroupOut] = Field(
        default_factory=list,
        description="Every score group of the model, in its order (empty for a model without groups).",
    )
    fit: FitOut
    grade: str = Field(description="Fit letter x engagement band, `A1` best, `D4` worst.")
    stage: StageOut | None = Field(description="Lifecycle stage and its history; null for a model without one.")
    flags: list[FlagOut] = Field(
        description="Why this contact is not a buyer, if it is not; flagged contacts never qualify."
    )
    persona: str | None
    account_id: str | None = Field(description="The account of the contact's latest `group` call.")
    rfm: RfmOut | None = Field(
        description="Purchase facts and quintile scores; null for a contact who is not a customer."
    )
    clv: ClvOut | None = Field(description="Customer lifetime value (BG/NBD + Gamma-Gamma); null for a non-customer.")
    first_seen: datetime | None
    last_seen: datetime | None
    model_version: str
    consent: ConsentOut | None = Field(
        default=None,
        description="The contact's current consent (the latest consent object by event time); null when no event "
        "carried one. What it allows is the model's `consent` section (docs/model.md).",
    )


class BatchGetIn(BaseModel):
    ids: list[str] = Field(min_length=1, max_length=MAX_BATCH_IDS, description="User ids, anonymous ids or emails.")


class BatchGetOut(BaseModel):
    contacts: list[ContactOut]
    not_found: list[str]


class BandOut(BaseModel):
    label: str
    min: float | None = Field(description="The lowest score of the band; null for the last (no lower bound).")


class ModelGroupOut(BaseModel):
    """A score group the model declares (`engagement.groups`, docs/model.md)."""

    id: str
    description: str
    half_life_days: float
    weight: float = Field(description="Its points count in the overall score times this (0: apart from it).")
    max: float | None = Field(description="Its score is clamped to [-max, max]; null: not clamped.")
    bands: list[BandOut] = Field(description="Highest first.")
    thresholds: list[float] = Field(description="Scores whose crossing sends `score.threshold_crossed` with `group`.")
    rules: list[str] = Field(description="Its engagement rules' ids.")


class ModelOut(BaseModel):
    name: str
    version: str
    half_life_days: float
    engagement_rules: int
    fit_rules: int
    groups: list[ModelGroupOut] = Field(default_factory=list, description="The score groups, in the model's order.")
    source: dict[str, Any] = Field(description="The model file as parsed.")


class NamespaceOut(BaseModel):
    namespace: str = Field(description="The model namespace (its worker group, tables and topics).")
    model_version: str = Field(description="The version id (`name@hash`) of the model it runs.")
    role: Literal["active", "shadow"] = Field(
        description="`active`: what the API answers with by default and what the public triggers carry; "
        "`shadow`: visible with `?model=`."
    )
    registered_at: datetime | None = Field(
        description="When the namespace was registered; null for the default namespace before it was."
    )
    active_from: datetime | None = Field(
        description="For the active namespace, the cut (in event time) of the promotion that made it active; "
        "null otherwise, and before any promotion."
    )
    contacts: int = Field(description="Contacts in this API's replica of the namespace's contacts table.")
    workers_ready: list[str] = Field(description="The namespace's workers that have recovered their tables.")
    caught_up: bool = Field(
        description="Whether this API's readers of the namespace (contacts, accounts, population) have caught up."
    )


class ModelsOut(BaseModel):
    models: list[NamespaceOut] = Field(description="Every live namespace: the active one first, then the shadows.")


class Health(BaseModel):
    status: str
    detail: dict[str, Any] = Field(default_factory=dict)


def model_out(model: Model) -> ModelOut:
    return ModelOut(
        name=model.name,
        version=model.version,
        half_life_days=model.half_life_ms / 86_400_000,
        engagement_rules=len(model.rules),
        fit_rules=len(model.fit_rules),
        groups=[
            ModelGroupOut(
                id=g.id,
                description=g.description,
                half_life_days=g.half_life_ms / 86_400_000,
                weight=g.weight,
                max=g.max,
                bands=[BandOut(label=b.label, min=b.min if math.isfinite(b.min) else None) for b in g.bands],
                thresholds=list(g.thresholds),
                rules=list(g.rule_ids),
            )
            for g in model.groups
        ],
        source=dict(model.source),
    )
