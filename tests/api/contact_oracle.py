"""An independent rendering of a contact, for the tests only: the ``ContactOut`` model built field
by field from the core's functions (what ``schemas.api.contact_out`` did before ``api.render``
became the one renderer). ``tests/api/test_render.py`` checks the renderer's bytes against it."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from schemas.api import ContactOut, ContributionOut, EngagementOut, FitOut, Identity
from schemas.times import DAY_MS
from schemas.times import dt_of as _dt
from scorestream import ContactState, Model, engagement_at, fit_of, grade_of
from scorestream.fold import journey_at
from scorestream.journey import Journey
from scorestream.scoring import Contribution


def _contributions(items: tuple[Contribution, ...]) -> list[ContributionOut]:
    return [ContributionOut(rule=c.rule_id, points=c.points, description=c.description) for c in items]


def _lifecycle(journey: Journey | None, now_ms: int) -> dict[str, Any]:
    if journey is None:
        return {"stage": None, "flags": [], "persona": None}
    history = [
        {
            "stage": e.stage,
            "entered_at": _dt(e.entered_ms),
            "exited_at": _dt(e.exited_ms),
            "days": None if e.exited_ms is None else (e.exited_ms - e.entered_ms) / DAY_MS,
            "rule": e.rule,
            "cause": e.cause,
        }
        for e in journey.history
    ]
    return {
        "stage": {
            "name": journey.stage,
            "since": _dt(journey.since_ms),
            "days_in_stage": max(now_ms - journey.since_ms, 0) / DAY_MS,
            "history": history,
            "next_change_at": _dt(journey.next_due_ms),
        },
        "flags": [{"flag": k, "reason": v} for k, v in journey.flags.items()],
        "persona": journey.persona,
    }


def contact_out(state: ContactState, model: Model, now_ms: int, value: dict[str, Any] | None = None) -> ContactOut:
    """The API view of a contact: scores computed by the core at ``now_ms``; ``value`` is its
    ``{"rfm", "clv"}`` (from the population model; both null when not given)."""
    engagement = engagement_at(state, model, now_ms)
    fit = fit_of(state, model)
    value = value or {"rfm": None, "clv": None}
    return ContactOut(
        **_lifecycle(journey_at(state, model, now_ms), now_ms),
        account_id=state.account_id,
        rfm=value["rfm"],
        clv=value["clv"],
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
