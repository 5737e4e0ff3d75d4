"""Scores read from a contact's state: engagement decayed to a given instant (from its hits, or as
its last lifecycle walk holds it), fit, grade."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from scorestream.machine import MachineNote, notes
from scorestream.rules.common import Band
from scorestream.rules.groups import ScoreGroup
from scorestream.rules.model import Model
from scorestream.state import ContactState, decay, effective_points, machine_verdicts


@dataclass(frozen=True, slots=True)
class Contribution:
    rule_id: str
    points: float
    description: str = ""


@dataclass(frozen=True, slots=True)
class EngagementView:
    score: float
    as_of_ms: int
    band: str
    top: tuple[Contribution, ...]
    # per rule, the kept hits a machine made (scorestream.machine), scored by ``machine_traffic``
    machine: tuple[MachineNote, ...] = ()


@dataclass(frozen=True, slots=True)
class FitView:
    score: float
    grade: str
    top: tuple[Contribution, ...]


def band_of(bands: tuple[Band, ...], score: float) -> str:
    """The label of the first band (highest first) whose minimum ``score`` reaches."""
    for band in bands:
        if score >= band.min:
            return band.label
    return bands[-1].label


def round_score(value: float) -> float:
    """A score as the API shows it: 6 decimals, never ``-0.0``."""
    return round(value, 6) + 0.0


def engagement_at(state: ContactState, model: Model, now_ms: int, top: int = 5) -> EngagementView:
    """score(t) = sum of p_i * 2^(-(t - t_i)/H) over earned points, at ``now_ms``.

    Events stamped after ``now_ms`` (clock skew) count undecayed rather than growing. Sums use
    ``math.fsum`` in a fixed order so the result does not depend on arrival order.
    """
    half_life = model.half_life_ms
    per_rule: dict[str, list[float]] = {}
    for rule_id, value in state.base.items():
        per_rule.setdefault(rule_id, []).append(decay(value, state.base_ms, max(now_ms, state.base_ms), half_life))
    for hit, earned in zip(state.hits, effective_points(state, model), strict=True):
        for rule_id, value in earned:
            if value:
                per_rule.setdefault(rule_id, []).append(decay(value, hit.ts, max(now_ms, hit.ts), half_life))
    weights = model.weights  # a score group's rules count times its weight (1 unless said)
    totals = {rule_id: math.fsum(values) * weights.get(rule_id, 1.0) for rule_id, values in per_rule.items()}
    found = engagement_of_totals(totals, model, now_ms, top)
    if top and model.machine is not None and state.email_log:
        found = replace(found, machine=tuple(notes(state.hits, machine_verdicts(state, model))))
    return found


def engagement_of_totals(totals: dict[str, float], model: Model, now_ms: int, top: int = 5) -> EngagementView:
    """The engagement view of per-rule totals already decayed to ``now_ms``: their sum in rule-id
    order (``math.fsum``), its band, the ``top`` rules by magnitude. :func:`engagement_at` and
    :func:`scorestream.view.engagement_of_view` both end here, so they rank and round alike."""
    score = math.fsum(totals[k] for k in sorted(totals))
    ranked = sorted(totals.items(), key=lambda kv: (-abs(kv[1]), kv[0]))[:top]
    contributions = tuple(
        Contribution(rule_id=k, points=round_score(v), description=(r.description if (r := model.rule(k)) else ""))
        for k, v in ranked
        if abs(v) >= 1e-6
    )
    return EngagementView(
        score=round_score(score), as_of_ms=now_ms, band=band_of(model.engagement_bands, score), top=contributions
    )


# --- score groups (scorestream.rules.groups) ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GroupView:
    """A score group's score at an instant: its rules' earned points decayed at the group's
    half-life (clamped to ``[-max, max]`` when the group has a ``max``), its band from the group's
    bands and its ``top`` rules by magnitude (unclamped, as earned)."""

    id: str
    score: float
    band: str
    top: tuple[Contribution, ...]


def group_of_totals(group: ScoreGroup, totals: dict[str, float], model: Model, top: int = 5) -> GroupView:
    """The view of ``group`` from its rules' totals already decayed (at its half-life) to the
    instant asked: :func:`group_scores` and :func:`scorestream.view.groups_of_view` both end here."""
    score = group.clamp(math.fsum(totals[k] for k in sorted(totals)))
    ranked = sorted(totals.items(), key=lambda kv: (-abs(kv[1]), kv[0]))[:top]
    contributions = tuple(
        Contribution(rule_id=k, points=round_score(v), description=(r.description if (r := model.rule(k)) else ""))
        for k, v in ranked
        if abs(v) >= 1e-6
    )
    return GroupView(id=group.id, score=round_score(score), band=band_of(group.bands, score), top=contributions)


def group_totals_at(state: ContactState, model: Model, now_ms: int) -> dict[str, dict[str, float]]:
    """Group id -> rule id -> the rule's earned points decayed at the group's half-life to
    ``now_ms`` (events stamped later count undecayed, as in :func:`engagement_at`)."""
    group_of = model.group_of
    split = model.group_half_lives
    per_rule: dict[str, list[float]] = {}
    base_at = max(now_ms, state.base_ms)
    for rule_id, value in state.base.items():
        group = group_of.get(rule_id)
        if group is not None:
            folded = state.group_base.get(rule_id, 0.0) if rule_id in split else value
            per_rule.setdefault(rule_id, []).append(decay(folded, state.base_ms, base_at, group.half_life_ms))
    for hit, earned in zip(state.hits, effective_points(state, model), strict=True):
        for rule_id, value in earned:
            if value and (group := group_of.get(rule_id)) is not None:
                per_rule.setdefault(rule_id, []).append(decay(value, hit.ts, max(now_ms, hit.ts), group.half_life_ms))
    out: dict[str, dict[str, float]] = {g.id: {} for g in model.groups}
    for rule_id, values in per_rule.items():
        out[group_of[rule_id].id][rule_id] = math.fsum(values)
    return out


def group_scores(state: ContactState, model: Model, now_ms: int, top: int = 5) -> tuple[GroupView, ...]:
    """Every score group's view at ``now_ms``, in model order (none for a model without groups)."""
    if not model.groups:
        return ()
    totals = group_totals_at(state, model, now_ms)
    return tuple(group_of_totals(g, totals[g.id], model, top) for g in model.groups)


def fit_of(state: ContactState, model: Model, top: int = 5) -> FitView:
    """Sum of the points of every fit rule whose predicates all hold over the traits."""
    matched = [r for r in model.fit_rules if all(p.test(state.traits) for p in r.when)]
    score = math.fsum(r.points for r in matched)
    ranked = sorted(matched, key=lambda r: (-abs(r.points), r.id))[:top]
    return FitView(
        score=round_score(score),
        grade=band_of(model.fit_grades, score),
        top=tuple(Contribution(rule_id=r.id, points=r.points, description=r.description) for r in ranked),
    )


def grade(fit_grade: str, band: str) -> str:
    """The grade: the fit letter followed by the engagement band, as HubSpot and Pardot show it.

    ``grade("A", "1") == "A1"``: ``A1`` is best, ``D4`` worst. The one place this rule is written;
    the API and the analytics reports call it.
    """
    return f"{fit_grade}{band}"


def grade_of(fit: FitView, engagement: EngagementView) -> str:
    """Fit letter x engagement band of a contact's views (:func:`grade`)."""
    return grade(fit.grade, engagement.band)


def walked_engagement(state: ContactState, model: Model, at_ms: int) -> float | None:
    """Engagement at ``at_ms`` as the last walk holds it (rounded as the API shows it), or None when
    the walk does not cover that instant: no walk, another model, a walk put off, or ``at_ms``
    outside its last checkpoint .. the instant it walked to."""
    journey = state.journey
    if journey is None or journey.model_version != model.version or journey.deferred_since is not None:
        return None
    cursor = journey.cursor
    if cursor is None or not cursor.ref_ms <= at_ms <= journey.walked_to_ms:
        return None
    return round_score(decay(cursor.ref_score, cursor.ref_ms, at_ms, model.half_life_ms))


def engagement_now(state: ContactState, model: Model, at_ms: int) -> float:
    """The contact's engagement at ``at_ms``: from its lifecycle walk when that covers it (the
    walk keeps the score; recomputing it is O(hits)), else computed from its hits."""
    walked = walked_engagement(state, model, at_ms)
    return walked if walked is not None else engagement_at(state, model, at_ms, top=0).score
