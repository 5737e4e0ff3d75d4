"""HTTP bodies of the API (v1). FastAPI renders them into the OpenAPI document at ``/docs``."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, Field

from scorestream import ContactState, Model, engagement_at, fit_of, grade_of
from scorestream.scoring import Contribution

MAX_BATCH_IDS = 1000


class ErrorDetail(BaseModel):
    code: str = Field(description="Stable machine-readable code, e.g. `not_found`, `unauthorized`.")
    message: str


class ErrorBody(BaseModel):
    error: ErrorDetail


class ContributionOut(BaseModel):
    rule: str
    points: float = Field(description="Current points of this rule (decayed, for engagement).")
    description: str = ""


class Identity(BaseModel):
    user_id: str | None
    anonymous_ids: list[str]
    email: str | None
    merged_ids: list[str] = Field(default_factory=list, description="Contacts merged into this one.")


class EngagementOut(BaseModel):
    score: float = Field(description="Engagement decayed to `as_of`.")
    band: str
    as_of: datetime
    half_life_days: float
    top: list[ContributionOut]


class FitOut(BaseModel):
    score: float
    grade: str
    top: list[ContributionOut]


class ContactOut(BaseModel):
    contact_id: str
    identity: Identity
    traits: dict[str, Any]
    engagement: EngagementOut
    fit: FitOut
    grade: str = Field(description="Fit letter x engagement band, `A1` best, `D4` worst.")
    first_seen: datetime | None
    last_seen: datetime | None
    model_version: str


class BatchGetIn(BaseModel):
    ids: list[str] = Field(min_length=1, max_length=MAX_BATCH_IDS, description="User ids, anonymous ids or emails.")


class BatchGetOut(BaseModel):
    contacts: list[ContactOut]
    not_found: list[str]


class ModelOut(BaseModel):
    name: str
    version: str
    half_life_days: float
    engagement_rules: int
    fit_rules: int
    source: dict[str, Any] = Field(description="The model file as parsed.")


class Health(BaseModel):
    status: str
    detail: dict[str, Any] = Field(default_factory=dict)


def _dt(ms: int | None) -> datetime | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, tz=UTC)


def _contributions(items: tuple[Contribution, ...]) -> list[ContributionOut]:
    return [ContributionOut(rule=c.rule_id, points=c.points, description=c.description) for c in items]


def contact_out(state: ContactState, model: Model, now_ms: int) -> ContactOut:
    """The API view of a contact: scores computed by the core at ``now_ms``."""
    engagement = engagement_at(state, model, now_ms)
    fit = fit_of(state, model)
    return ContactOut(
        contact_id=state.contact_id,
        identity=Identity(
            user_id=state.user_id, anonymous_ids=state.anonymous_ids, email=state.email, merged_ids=state.merged_ids
        ),
        traits=state.traits,
        engagement=EngagementOut(
            score=engagement.score,
            band=engagement.band,
            as_of=datetime.fromtimestamp(now_ms / 1000, tz=UTC),
            half_life_days=model.half_life_ms / 86_400_000,
            top=_contributions(engagement.top),
        ),
        fit=FitOut(score=fit.score, grade=fit.grade, top=_contributions(fit.top)),
        grade=grade_of(fit, engagement),
        first_seen=_dt(state.first_seen_ms),
        last_seen=_dt(state.last_seen_ms),
        model_version=state.model_version,
    )


def model_out(model: Model) -> ModelOut:
    return ModelOut(
        name=model.name,
        version=model.version,
        half_life_days=model.half_life_ms / 86_400_000,
        engagement_rules=len(model.rules),
        fit_rules=len(model.fit_rules),
        source=dict(model.source),
    )
