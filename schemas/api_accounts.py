"""HTTP bodies of the accounts API (v1): ``GET /v1/accounts/{id}``."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from schemas.times import at_of as _dt
from scorestream import Model
from scorestream.accounts import AccountState, account_view


class AccountEngagementOut(BaseModel):
    score: float = Field(description="Sum over members of role weight x member engagement decayed to `as_of`.")
    band: str
    as_of: datetime
    half_life_days: float


class AccountFitOut(BaseModel):
    score: float
    grade: str
    rules: list[str] = Field(description="Account fit rules matched by the account's traits.")


class CoverageOut(BaseModel):
    roles_engaged: list[str] = Field(description="Buying roles with at least one engaged member.")
    missing_roles: list[str]
    engaged_members: int
    members: int
    engaged_threshold: float = Field(description="Decayed engagement at which a member counts as engaged.")


class AccountStageEntryOut(BaseModel):
    stage: str
    entered_at: datetime
    exited_at: datetime | None
    rule: str = Field(description="The transition that led into the stage (`initial` for the first).")


class AccountStageOut(BaseModel):
    name: str | None
    since: datetime | None
    history: list[AccountStageEntryOut]


class MemberOut(BaseModel):
    contact_id: str
    role: str = Field(description="decision_maker, buyer, specifier, influencer, gatekeeper or other.")
    stage: str | None = Field(description="The contact's lifecycle stage when it last reported.")
    engagement: float = Field(description="The member's engagement decayed to `as_of`.")
    fit: float
    customer: bool
    engaged: bool
    reported_at: datetime = Field(description="Event time of the member's latest report.")


class AccountOut(BaseModel):
    account_id: str
    traits: dict[str, Any]
    engagement: AccountEngagementOut
    fit: AccountFitOut
    grade: str = Field(description="Account fit letter x account engagement band, `A1` best.")
    coverage: CoverageOut
    stage: AccountStageOut
    customers: int
    members: list[MemberOut]
    updated_at: datetime = Field(description="Event time of the latest member report.")
    model_version: str


def account_out(state: AccountState, model: Model, now_ms: int) -> AccountOut:
    """The API view of an account: scores computed by the core at ``now_ms``."""
    view = account_view(state, model, now_ms)
    return AccountOut(
        account_id=state.account_id,
        traits=state.traits,
        engagement=AccountEngagementOut(
            score=view.engagement,
            band=view.band,
            as_of=_dt(now_ms),
            half_life_days=model.half_life_ms / 86_400_000,
        ),
        fit=AccountFitOut(score=view.fit, grade=view.fit_grade, rules=list(view.fit_rules)),
        grade=view.grade,
        coverage=CoverageOut(
            roles_engaged=list(view.roles_engaged),
            missing_roles=list(view.missing_roles),
            engaged_members=sum(1 for m in view.members if m.engaged),
            members=len(view.members),
            engaged_threshold=model.accounts.engaged_member,
        ),
        stage=AccountStageOut(
            name=view.stage,
            since=None if view.since_ms is None else _dt(view.since_ms),
            history=[
                AccountStageEntryOut(
                    stage=e.stage,
                    entered_at=_dt(e.entered_ms),
                    exited_at=None if e.exited_ms is None else _dt(e.exited_ms),
                    rule=e.rule,
                )
                for e in state.history
            ],
        ),
        customers=view.customers,
        members=[
            MemberOut(
                contact_id=m.contact_id,
                role=m.role,
                stage=m.stage,
                engagement=m.engagement,
                fit=m.fit,
                customer=m.customer,
                engaged=m.engaged,
                reported_at=_dt(m.at_ms),
            )
            for m in view.members
        ],
        updated_at=_dt(state.updated_ms),
        model_version=state.model_version,
    )
