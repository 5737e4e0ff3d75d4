"""An independent rendering of a contact, for the tests only: the ``ContactOut`` model built field
by field from the core's functions on the contact's full state (what ``schemas.api.contact_out``
did before ``api.render`` became the one renderer). ``tests/api/test_render.py`` checks the
renderer's bytes, built from the contact's compact view, against it.

What the API answers from a view, stated here from the full state: engagement at the request's
time, or at the contact's newest scored instant when the request's clock is behind it (events
stamped ahead of it); the journey as the worker last walked it (no walk at request time)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from schemas.api import (
    ConsentOut,
    ContactOut,
    ContributionOut,
    EngagementOut,
    FitOut,
    FlagOut,
    GroupOut,
    Identity,
    MachineOut,
    StageEntryOut,
    StageOut,
)
from scorestream import ContactState, Model, engagement_at, fit_of, grade_of
from scorestream.journey import Journey
from scorestream.scoring import Contribution, group_scores


def _contributions(items: tuple[Contribution, ...]) -> list[ContributionOut]:
    return [ContributionOut(rule=c.rule_id, points=c.points, description=c.description) for c in items]


def _at(ms: int | None) -> datetime | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, tz=UTC)


def _lifecycle(journey: Journey | None, now_ms: int) -> dict[str, Any]:
    """Built with the documented models from plain datetimes (not the renderer's dict shapes)."""
    if journey is None:
        return {"stage": None, "flags": [], "persona": None}
    day = 86_400_000
    stage = StageOut(
        name=journey.stage,
        since=datetime.fromtimestamp(journey.since_ms / 1000, tz=UTC),
        days_in_stage=max(now_ms - journey.since_ms, 0) / day,
        history=[
            StageEntryOut(
                stage=e.stage,
                entered_at=datetime.fromtimestamp(e.entered_ms / 1000, tz=UTC),
                exited_at=_at(e.exited_ms),
                days=None if e.exited_ms is None else (e.exited_ms - e.entered_ms) / day,
                rule=e.rule,
                cause=e.cause,
            )
            for e in journey.history
        ],
        next_change_at=_at(journey.next_due_ms),
    )
    flags = [FlagOut(flag=name, reason=reason) for name, reason in journey.flags.items()]
    return {"stage": stage, "flags": flags, "persona": journey.persona}


def _consent(state: ContactState) -> ConsentOut | None:
    if state.consent is None or state.consent_at is None:
        return None
    return ConsentOut(categoryPreferences=state.consent, at=datetime.fromtimestamp(state.consent_at[0] / 1000, tz=UTC))


def _machine(state: ContactState, model: Model, at_ms: int) -> list[MachineOut]:
    """The rules some of whose kept events a machine made, each with its points at ``at_ms``."""
    every = engagement_at(state, model, at_ms, top=len(model.rules) + 1)
    points = {c.rule_id: c.points for c in every.top}
    return [
        MachineOut(
            rule=n.rule_id,
            description=r.description if (r := model.rule(n.rule_id)) else "",
            points=points.get(n.rule_id, 0.0),
            events=n.hits,
            last_at=datetime.fromtimestamp(n.last_ms / 1000, tz=UTC),
            reason=n.reason,
        )
        for n in every.machine
    ]


def contact_out(state: ContactState, model: Model, now_ms: int, value: dict[str, Any] | None = None) -> ContactOut:
    """The API view of a contact: scores computed by the core at ``now_ms``; ``value`` is its
    ``{"rfm", "clv"}`` (from the population model; both null when not given)."""
    newest = max([state.base_ms] if state.base else [], default=0)
    newest = max(newest, state.hits[-1].ts if state.hits else 0)
    engagement = engagement_at(state, model, max(now_ms, newest))
    fit = fit_of(state, model)
    value = value or {"rfm": None, "clv": None}
    return ContactOut(
        **_lifecycle(state.journey, now_ms),
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
            machine=_machine(state, model, max(now_ms, newest)),
        ),
        groups=[
            GroupOut(
                id=g.id,
                score=g.score,
                band=g.band,
                half_life_days=group.half_life_ms / 86_400_000,
                top=_contributions(g.top),
            )
            for g, group in zip(group_scores(state, model, max(now_ms, newest)), model.groups, strict=True)
        ],
        fit=FitOut(score=fit.score, grade=fit.grade, top=_contributions(fit.top)),
        grade=grade_of(fit, engagement),
        first_seen=_at(state.first_seen_ms),
        last_seen=_at(state.last_seen_ms),
        model_version=state.model_version,
        consent=_consent(state),
    )
