"""A contact's compact read view: what the API shows of a contact, without its history.

The worker folds a contact's whole state (up to 500 hits, 512 message ids, the purchase ledger);
a reader needs only what :func:`view_of` keeps: identity, traits, fit, the lifecycle journey's
visible part, the RFM and CLV inputs, and engagement as **per-rule totals decayed to one
reference instant** (``engagement_ms``, the newest scored instant: the latest hit, or the folded
base's instant). Decay is exponential, so for any ``t >= engagement_ms``::

    score(t) = sum_i p_i 2^(-(t - t_i)/H) = 2^(-(t - ref)/H) * sum_i p_i 2^(-(ref - t_i)/H)

and :func:`engagement_of_view` gives what :func:`scorestream.scoring.engagement_at` gives on the
full state, up to floating-point rounding: the totals are scaled once instead of each term being
decayed to ``t`` (a relative difference of a few units in the last place; the API shows 6
decimals, so a shown score can differ by 1e-6 only when its exact value lies within ~1e-12 of a
rounding midpoint; ``tests/scorestream/test_view.py`` checks it against the full fold).

A reader whose clock is behind the view's instants (events stamped ahead of it) gets the contact
as at those instants: engagement at ``engagement_ms``, customer value at the ledger's newest record.
The full state would count the future hits undecayed and leave the future orders out; the view no
longer holds them one by one. ``as_of`` stays the reader's time.

Pure: no clock, no I/O; the worker builds views (``streams/views.py``), the API reads them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

from scorestream.adjustments import Adjustment
from scorestream.interests import InterestsView, interest_gate, interests_view
from scorestream.journey import StageEntry
from scorestream.machine import MachineNote, notes
from scorestream.population import ClvInputs, PopulationModel, ValueView, clv_figures, ledger_facts, outlook_of
from scorestream.rfm import DAY_MS, CustomerValue, RfmFacts, rfm_score
from scorestream.rules.common import lookup
from scorestream.rules.model import Model
from scorestream.rules.value import DEFAULT_CLV, DEFAULT_SEGMENTS, ClvSettings, SegmentRule
from scorestream.scoring import (
    Contribution,
    EngagementView,
    FitView,
    GroupView,
    band_of,
    engagement_of_totals,
    fit_of,
    group_of_totals,
)
from scorestream.state import Caps, ContactState, Hit, adjusted_points, decay, machine_verdicts, unscored

__all__ = [
    "VIEW_VERSION",
    "ConsentView",
    "ContactView",
    "EarnedPoints",
    "FitMemo",
    "FitSummary",
    "JourneyView",
    "RulePoints",
    "ValueSummary",
    "engagement_of_view",
    "engagement_totals",
    "fit_of_view",
    "group_totals",
    "groups_of_view",
    "value_of_view",
    "value_summary",
    "view_of",
]

VIEW_VERSION = 1


class RulePoints(NamedTuple):
    """A rule's points: engagement totals at the view's reference instant, or a fit rule's points."""

    rule_id: str
    points: float


@dataclass(slots=True)
class FitSummary:
    """Fit as :func:`scorestream.scoring.fit_of` gives it (descriptions come from the reader's model)."""

    score: float
    grade: str
    top: list[RulePoints] = field(default_factory=list)


@dataclass(slots=True)
class JourneyView:
    """The visible part of a :class:`scorestream.journey.Journey` (no walk positions, no fired list)."""

    stage: str
    since_ms: int
    history: list[StageEntry] = field(default_factory=list)
    flags: dict[str, str] = field(default_factory=dict)
    persona: str | None = None
    next_due_ms: int | None = None


@dataclass(slots=True)
class ValueSummary:
    """A customer's RFM facts and CLV inputs as of the ledger's newest record (``as_of_ms``): what
    :func:`scorestream.population.value_view` reads of the ledger at any later instant."""

    as_of_ms: int
    frequency: int
    monetary: float
    aov: float
    first_order_ms: int | None
    last_order_ms: int | None
    unvalued: int = 0
    clv: ClvInputs | None = None


class ConsentView(NamedTuple):
    """The contact's current consent: the latest consent object (``categoryPreferences``) by event
    time and that event's instant."""

    at_ms: int
    preferences: dict[str, bool]


@dataclass(slots=True)
class ContactView:
    """What a reader shows of one contact (a topic record; versioned by ``v``).

    A forwarding record (``merged_into`` set) keeps only its identity: readers follow it.
    """

    contact_id: str
    model_version: str
    v: int = VIEW_VERSION
    user_id: str | None = None
    anonymous_ids: list[str] = field(default_factory=list)
    email: str | None = None
    merged_ids: list[str] = field(default_factory=list)
    merged_into: str | None = None
    traits: dict[str, Any] = field(default_factory=dict)
    fit: FitSummary | None = None
    # engagement: per-rule totals (rule id order, zeros left out) decayed to ``engagement_ms``
    engagement_ms: int = 0
    engagement: list[RulePoints] = field(default_factory=list)
    journey: JourneyView | None = None
    account_id: str | None = None
    value: ValueSummary | None = None
    first_seen_ms: int | None = None
    last_seen_ms: int | None = None
    # the contact's current consent: the latest consent object and its instant (one field: a view
    # without consent pays one key)
    consent: ConsentView | None = None
    # the interest profile's top affinities, decayed to its newest instant (scorestream.interests)
    interests: InterestsView | None = None
    # score groups: per-rule totals of the groups' rules (rule id order, zeros left out), each
    # decayed at its group's half-life to ``engagement_ms`` (``engagement`` holds them times the
    # group's weight at the overall half-life)
    groups: list[RulePoints] = field(default_factory=list)
    # machine-made e-mail events among the kept hits, per rule (scorestream.machine): the
    # explanation's "email-clicked: 0 (machine: ...)"
    machine: list[MachineNote] = field(default_factory=list)
    # manual adjustments (scorestream.adjustments): adjustment id -> its record, reverted ones too
    adjustments: dict[str, Adjustment] = field(default_factory=dict)


# --- building a view (the worker) --------------------------------------------------------------


class EarnedPoints:
    """The points each hit of a contact earned (:func:`scorestream.state.effective_points`), per
    rule, kept across the contact's states: the worker builds a view at every change, and running
    the caps over 500 hits each time cost milliseconds. A later state whose hits extend the ones
    seen (the same folded base and caps, nothing inserted before the last hit seen) continues from
    where the caps stopped, with the same arithmetic in the same order; any other state (a fold, a
    merge, a late event, another model) is computed afresh. Either way the points are those of
    ``effective_points``, so the view does not depend on what came before."""

    __slots__ = ("adjusted", "base", "caps", "consent_log", "count", "last", "machine", "model", "per_rule")

    def __init__(self) -> None:
        self.model: Model | None = None
        # the consent timeline the points were decided with (a change may re-decide any hit)
        self.consent_log: list[tuple[int, tuple[str, ...]]] = []
        self.base: tuple[int, dict[str, float], list[str], dict[str, list[tuple[int, float]]]] | None = None
        self.caps: Caps | None = None
        self.count = 0
        self.last: Hit | None = None
        self.per_rule: dict[str, list[tuple[int, float]]] = {}
        # the adjustments' points the caps earned with (a new one or a revert: computed afresh)
        self.adjusted: dict[str, float] = {}
        # the machine verdicts the points were decided with (a late fact may re-judge any hit)
        self.machine: dict[str, str] = {}

    def update(self, state: ContactState, model: Model) -> dict[str, list[tuple[int, float]]]:
        """Rule id -> the ``(hit time, points)`` its hits earned, in hit order (zeros left out)."""
        hits = state.hits
        n = self.count
        base = self.base
        adjusted = adjusted_points(state)
        machine = machine_verdicts(state, model)
        if (
            self.model is not model
            or base is None
            or n > len(hits)
            or (n and hits[n - 1] != self.last)
            or base[0] != state.base_ms
            or base[1] != state.base
            or base[2] != state.base_once
            or base[3] != state.capped
            or (model.consent is not None and self.consent_log != state.consent_log)
            or self.adjusted != adjusted
            or self.machine != machine
        ):
            self.model, self.caps, n = model, Caps.start(state, model), 0
            self.adjusted = adjusted
            self.machine = machine
            self.consent_log = list(state.consent_log)
            self.base = (
                state.base_ms,
                dict(state.base),
                list(state.base_once),
                {k: list(w) for k, w in state.capped.items()},
            )
            self.per_rule = {}
        caps = self.caps
        assert caps is not None
        if n < len(hits) and (model.consent is not None or model.machine is not None):
            caps.denied, caps.scaled = unscored(state, model)  # the same timeline: the new hits' share
        per_rule = self.per_rule
        for hit in hits[n:]:
            for rule_id, value in caps.earn(hit):
                if value:
                    per_rule.setdefault(rule_id, []).append((hit.ts, value))
        self.count = len(hits)
        self.last = hits[-1] if hits else None
        return per_rule


class FitMemo:
    """Fit by the values the model's fit rules read (a fit rule reads a few traits; most contacts
    share their values: none at all, the same title or industry), for one model. A value other
    than a string, a number, a boolean or null is not remembered: that contact's fit is computed."""

    __slots__ = ("fields", "limit", "memo", "model")

    def __init__(self, model: Model, limit: int = 10_000) -> None:
        self.model = model
        self.limit = limit
        self.fields = sorted({p.field for r in model.fit_rules for p in r.when})
        self.memo: dict[tuple[tuple[str, str], ...], FitSummary] = {}

    def fit(self, state: ContactState) -> FitSummary:
        traits = state.traits
        key: list[tuple[str, str]] = []
        for f in self.fields:
            value = lookup(traits, f)
            if value is not None and not isinstance(value, str | int | float):
                return _fit_summary(state, self.model)
            key.append((type(value).__name__, repr(value)))
        found = self.memo.get(k := tuple(key))
        if found is None:
            if len(self.memo) >= self.limit:
                self.memo.clear()
            found = self.memo[k] = _fit_summary(state, self.model)
        return found


def _fit_summary(state: ContactState, model: Model) -> FitSummary:
    fit = fit_of(state, model)
    return FitSummary(fit.score, fit.grade, [RulePoints(c.rule_id, c.points) for c in fit.top])


def engagement_totals(
    state: ContactState, model: Model, earned: EarnedPoints | None = None
) -> tuple[int, list[RulePoints]]:
    """``(ref_ms, totals)``: every rule's earned points decayed to ``ref_ms``, the newest scored
    instant, summed per rule as :func:`~scorestream.scoring.engagement_at` sums them (``earned``:
    the contact's points kept from its previous state, see :class:`EarnedPoints`)."""
    half_life = model.half_life_ms
    ref = max(state.base_ms if state.base else 0, state.hits[-1].ts if state.hits else 0)
    per_rule: dict[str, list[float]] = {}
    for rule_id, value in state.base.items():
        per_rule.setdefault(rule_id, []).append(decay(value, state.base_ms, ref, half_life))
    points = (earned if earned is not None else EarnedPoints()).update(state, model)
    for rule_id, earned_points in points.items():
        decayed = per_rule.setdefault(rule_id, [])
        decayed.extend(value * math.pow(2.0, -(ref - ts) / half_life) for ts, value in earned_points)
    weights = model.weights  # a score group's rules count times its weight (1 unless said)
    totals = [RulePoints(k, total) for k in sorted(per_rule) if (total := math.fsum(per_rule[k]) * weights.get(k, 1.0))]
    return ref, totals


def group_totals(state: ContactState, model: Model, ref: int, earned: EarnedPoints | None = None) -> list[RulePoints]:
    """The score groups' rules' earned points, each decayed at its group's half-life to ``ref``
    (the view's ``engagement_ms``), summed per rule as
    :func:`~scorestream.scoring.group_totals_at` sums them; empty for a model without groups."""
    group_of = model.group_of
    if not group_of:
        return []
    split = model.group_half_lives
    per_rule: dict[str, list[float]] = {}
    for rule_id, value in state.base.items():
        group = group_of.get(rule_id)
        if group is not None:
            folded = state.group_base.get(rule_id, 0.0) if rule_id in split else value
            per_rule.setdefault(rule_id, []).append(decay(folded, state.base_ms, ref, group.half_life_ms))
    points = (earned if earned is not None else EarnedPoints()).update(state, model)
    for rule_id, earned_points in points.items():
        group = group_of.get(rule_id)
        if group is not None:
            half_life = group.half_life_ms
            decayed = per_rule.setdefault(rule_id, [])
            decayed.extend(value * math.pow(2.0, -(ref - ts) / half_life) for ts, value in earned_points)
    return [RulePoints(k, total) for k in sorted(per_rule) if (total := math.fsum(per_rule[k]))]


def value_summary(value: CustomerValue | None) -> ValueSummary | None:
    """The ledger's facts at its newest record; None for a non-customer (no order not refunded then)."""
    found = ledger_facts(value)
    if found is None:
        return None
    facts, inputs = found
    return ValueSummary(
        as_of_ms=facts.as_of_ms,
        frequency=facts.frequency,
        monetary=facts.monetary,
        aov=facts.aov,
        first_order_ms=facts.first_order_ms,
        last_order_ms=facts.last_order_ms,
        unvalued=facts.unvalued,
        clv=inputs,
    )


def view_of(
    state: ContactState, model: Model, earned: EarnedPoints | None = None, fits: FitMemo | None = None
) -> ContactView:
    """The read view of ``state`` under ``model`` (the worker's model: fit and caps are its);
    ``earned``: the contact's :class:`EarnedPoints` kept by the caller, ``fits``: a
    :class:`FitMemo` of ``model`` (the same view, faster)."""
    view = ContactView(
        contact_id=state.contact_id,
        model_version=state.model_version,
        user_id=state.user_id,
        anonymous_ids=state.anonymous_ids,
        email=state.email,
        merged_ids=state.merged_ids,
        merged_into=state.merged_into,
    )
    if state.merged_into is not None:
        return view
    view.traits = state.traits
    view.fit = fits.fit(state) if fits is not None and fits.model is model else _fit_summary(state, model)
    view.engagement_ms, view.engagement = engagement_totals(state, model, earned)
    view.groups = group_totals(state, model, view.engagement_ms, earned)
    if model.machine is not None:
        view.machine = notes(state.hits, machine_verdicts(state, model))
    journey = state.journey
    if journey is not None:
        view.journey = JourneyView(
            stage=journey.stage,
            since_ms=journey.since_ms,
            history=journey.history,
            flags=journey.flags,
            persona=journey.persona,
            next_due_ms=journey.next_due_ms,
        )
    view.account_id = state.account_id
    view.value = value_summary(state.value)
    view.first_seen_ms = state.first_seen_ms
    view.last_seen_ms = state.last_seen_ms
    view.interests = interests_view(state.interests, model.interests, interest_gate(state.consent_log, model.consent))
    view.adjustments = state.adjustments
    if state.consent is not None and state.consent_at is not None:
        view.consent = ConsentView(state.consent_at[0], state.consent)
    return view


# --- reading a view (the API) ------------------------------------------------------------------


def engagement_of_view(view: ContactView, model: Model, now_ms: int, top: int = 5) -> EngagementView:
    """The contact's engagement at ``now_ms``: :func:`~scorestream.scoring.engagement_at` of the
    full state, from the totals (see the module docstring for the rounding and for a ``now_ms``
    before ``engagement_ms``, answered as at ``engagement_ms``)."""
    ref = view.engagement_ms
    at = max(now_ms, ref)
    half_life = model.half_life_ms
    totals = {k: decay(points, ref, at, half_life) for k, points in view.engagement}
    found = engagement_of_totals(totals, model, now_ms, top)
    if view.machine and top:
        found = replace(found, machine=tuple(MachineNote(*n) for n in view.machine))
    return found


def groups_of_view(view: ContactView, model: Model, now_ms: int, top: int = 5) -> tuple[GroupView, ...]:
    """Every score group's view at ``now_ms``, in model order: what
    :func:`~scorestream.scoring.group_scores` gives on the full state, from the view's group
    totals (as :func:`engagement_of_view`: a ``now_ms`` before ``engagement_ms`` is answered as at
    ``engagement_ms``)."""
    if not model.groups:
        return ()
    ref = view.engagement_ms
    at = max(now_ms, ref)
    group_of = model.group_of
    totals: dict[str, dict[str, float]] = {g.id: {} for g in model.groups}
    for rule_id, points in view.groups:
        group = group_of.get(rule_id)
        if group is not None:
            totals[group.id][rule_id] = decay(points, ref, at, group.half_life_ms)
    return tuple(group_of_totals(g, totals[g.id], model, top) for g in model.groups)


def fit_of_view(view: ContactView, model: Model) -> FitView:
    """The contact's fit (:func:`~scorestream.scoring.fit_of`), rule descriptions from ``model``."""
    fit = view.fit
    if fit is None:
        return FitView(score=0.0, grade=band_of(model.fit_grades, 0.0), top=())
    described = {r.id: r.description for r in model.fit_rules}
    return FitView(
        score=fit.score,
        grade=fit.grade,
        top=tuple(Contribution(k, points, described.get(k, "")) for k, points in fit.top),
    )


def value_of_view(
    view: ContactView,
    now_ms: int,
    population: PopulationModel | None,
    segments: Sequence[SegmentRule] = DEFAULT_SEGMENTS,
    settings: ClvSettings = DEFAULT_CLV,
) -> ValueView | None:
    """:func:`scorestream.population.value_view` of the contact's ledger at ``now_ms`` (no earlier
    than the ledger's newest record), from its summary; None for a non-customer."""
    vs = view.value
    if vs is None or vs.last_order_ms is None:
        return None
    as_of = max(now_ms, vs.as_of_ms)
    facts = RfmFacts(
        as_of_ms=as_of,
        recency_days=(as_of - vs.last_order_ms) / DAY_MS,
        frequency=vs.frequency,
        monetary=vs.monetary,
        aov=vs.aov,
        first_order_ms=vs.first_order_ms,
        last_order_ms=vs.last_order_ms,
        unvalued=vs.unvalued,
    )
    bounds = population.boundaries if population is not None else None
    score = rfm_score(facts, bounds, segments) if bounds is not None else None
    fit = population.fit if population is not None else None
    alive = expected = worth = None
    ahead = None
    if fit is not None and vs.clv is not None:
        try:
            s = vs.clv.at(as_of, DAY_MS)
            alive, expected, worth = clv_figures(fit.bgnbd.params, fit.gamma_gamma.params, s)
            ahead = outlook_of(fit, s, as_of, settings)
        except (ValueError, ArithmeticError, OverflowError):  # a history the fit cannot evaluate
            alive = expected = worth = ahead = None
    fitted = fit.fitted_at_ms if fit is not None else None
    return ValueView(facts, score, alive, expected, worth, fitted, ahead, settings)
