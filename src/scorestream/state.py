"""A contact's state: what scorestream knows about one contact, and the points its hits earn.

Plain data and the arithmetic every floor above reads it with (:func:`decay`, :class:`Caps`,
:func:`effective_points`). How events and merges change it is :mod:`scorestream.contact`; its
lifecycle part (:class:`scorestream.journey.Journey`) is computed by :mod:`scorestream.walk`.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from scorestream.adjustments import Adjustment, is_rule
from scorestream.identity import ANONYMOUS_PREFIX
from scorestream.interests import Interests
from scorestream.journey import Journey
from scorestream.machine import EmailFact, verdicts
from scorestream.rfm import CustomerValue
from scorestream.rules.model import Model

STATE_VERSION = 2
"""2: ``traits_capped``, ``anonymous_at`` and the purchase ledger's folded orders (``CustomerValue.folded``)."""


def decay(points: float, from_ms: int, to_ms: int, half_life_ms: int) -> float:
    """``points * 2^(-(to - from)/H)``: exponential decay on event time."""
    return points * math.pow(2.0, -(to_ms - from_ms) / half_life_ms)


class Hit(NamedTuple):
    """One scored event: its time, message id and the ids of the rules it matched.

    A plain tuple, so hits sort by ``(ts, mid)`` natively and decode cheaply; the points come
    from the model when they are evaluated.
    """

    ts: int
    mid: str
    rules: tuple[str, ...]


@dataclass(slots=True)
class ContactState:
    """Everything scorestream knows about one contact (a table value; versioned by ``v``)."""

    contact_id: str
    model_version: str
    v: int = STATE_VERSION
    user_id: str | None = None
    anonymous_ids: list[str] = field(default_factory=list)
    email: str | None = None
    traits: dict[str, Any] = field(default_factory=dict)
    trait_at: dict[str, tuple[int, str]] = field(default_factory=dict)
    hits: list[Hit] = field(default_factory=list)
    base: dict[str, float] = field(default_factory=dict)
    base_ms: int = 0
    base_once: list[str] = field(default_factory=list)
    capped: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    folded_ids: list[str] = field(default_factory=list)
    groups: list[str] = field(default_factory=list)
    merged_ids: list[str] = field(default_factory=list)
    merged_into: str | None = None
    first_seen_ms: int | None = None
    last_seen_ms: int | None = None
    # customer value: the purchase ledger (orders, refunds), see scorestream.rfm
    value: CustomerValue | None = None
    # event-matched flag rules: rule id -> the earliest matching (timestamp, message id)
    flag_hits: dict[str, tuple[int, str]] = field(default_factory=dict)
    # rule id -> latest timestamp among its hits folded into the base (timers start from it)
    rule_last: dict[str, int] = field(default_factory=dict)
    # the B2B account: the group id of the latest ``group`` call, and its (timestamp, message id)
    account_id: str | None = None
    account_at: tuple[int, str] | None = None
    # lifecycle stage, its history, timers and thresholds (computed by scorestream.walk)
    journey: Journey | None = None
    # the latest instant the lifecycle has been advanced to by a timer tick (event time otherwise)
    ticked_ms: int | None = None
    # the account traits of the latest ``group`` call (the one at ``account_at``; scorestream.accounts)
    account_traits: dict[str, Any] = field(default_factory=dict)
    # the RFM segment last announced (worker-side: it depends on the population's quintiles)
    rfm_segment: str | None = None
    # a trait (or account trait) was left out at the bounds: too many, too long a name, too large
    traits_capped: bool = False
    # anonymous id -> the latest (timestamp, message id) it was seen at (which ids are kept)
    anonymous_at: dict[str, tuple[int, str]] = field(default_factory=dict)
    # the latest consent object seen (``context.consent.categoryPreferences``) and its (timestamp,
    # message id): the contact's current consent
    consent: dict[str, bool] | None = None
    consent_at: tuple[int, str] | None = None
    # the consent timeline (a model with a ``consent`` section): (instant, categories granted) in
    # time order, one entry an instant (two consents at one instant: what both grant); the
    # entries before the oldest kept hit are settled into the latest of them (see consent_denied)
    consent_log: list[tuple[int, tuple[str, ...]]] = field(default_factory=list)
    # score groups whose half-life is not the overall one (``Model.group_half_lives``): their
    # rules' folded points decayed at the group's half-life to ``base_ms`` (``base`` holds them at
    # the overall half-life; the rules of the other groups read ``base``)
    group_base: dict[str, float] = field(default_factory=dict)
    # the interest profile (a model with an ``interests`` section; scorestream.interests): decayed
    # affinity per category, brand and product, orders and carts per product
    interests: Interests | None = None
    # manual adjustments (scorestream.adjustments): adjustment id -> its record, reverted ones
    # and reverts whose adjustment is not seen yet included
    adjustments: dict[str, Adjustment] = field(default_factory=dict)
    # e-mail facts (a model with a ``machine_traffic`` section; scorestream.machine): deliveries,
    # opens and clicks in (instant, message id) order, bounded; which hits a machine made is read
    # from the whole log when points are computed (machine_verdicts)
    email_log: list[EmailFact] = field(default_factory=list)
    # the churn-risk band last announced (worker-side, like rfm_segment: it depends on the
    # population's CLV fit; scorestream.population.churn_for)
    churn_band: str | None = None


def new_contact(contact_id: str, model: Model) -> ContactState:
    state = ContactState(contact_id=contact_id, model_version=model.version)
    if not contact_id.startswith(ANONYMOUS_PREFIX):
        state.user_id = contact_id
    return state


_NOTHING_DENIED: frozenset[str] = frozenset()


def consent_denied(state: ContactState, model: Model) -> frozenset[str]:
    """The message ids of the hits whose consent denies engagement scoring: a hit takes the
    consent in effect at its instant, the latest entry of ``state.consent_log`` at or before it
    (an event that carried its own consent object logged it at its instant), or the model's
    ``default`` before any. A function of the hits and the timeline, not of arrival order: a late
    withdrawal un-scores the hits after it, a late grant scores them again. Empty (at no cost)
    for a model without a ``consent`` section."""
    rules = model.consent
    if rules is None:
        return _NOTHING_DENIED
    log = state.consent_log
    if not log:
        return _NOTHING_DENIED if rules.default_granted else frozenset(h.mid for h in state.hits)
    denied: set[str] = set()
    allowed = rules.default_granted
    i, n = 0, len(log)
    for hit in state.hits:  # sorted by (ts, mid): one pass over both
        while i < n and log[i][0] <= hit.ts:
            allowed = rules.allows(log[i][1])
            i += 1
        if not allowed:
            denied.add(hit.mid)
    return frozenset(denied) if denied else _NOTHING_DENIED


_NO_ADJUSTMENTS: dict[str, float] = {}


def adjusted_points(state: ContactState) -> dict[str, float]:
    """Adjustment id -> the points its hit earns (0 once reverted; :mod:`scorestream.adjustments`):
    the points come from the event, not from a model rule. Empty (at no cost) without adjustments."""
    if not state.adjustments:
        return _NO_ADJUSTMENTS
    return {k: a.live_points for k, a in state.adjustments.items() if a.at_ms is not None}


def machine_verdicts(state: ContactState, model: Model) -> dict[str, str]:
    """Message id -> why a machine made it, for the contact's e-mail events judged so
    (:func:`scorestream.machine.verdicts` over the whole log: a function of the set of events).
    Empty (at no cost) for a model without a ``machine_traffic`` section."""
    rules = model.machine
    if rules is None or not state.email_log:
        return {}
    return verdicts(state.email_log, rules)


def unscored(state: ContactState, model: Model) -> tuple[frozenset[str], frozenset[str]]:
    """``(denied, scaled)``: the hits that earn nothing and are no checkpoint of the walk (their
    consent denies scoring, or a machine made them and ``machine_traffic.points`` is 0), and the
    machine-made hits that earn their points times ``machine_traffic.points`` (through the caps
    like any hit)."""
    denied = consent_denied(state, model)
    found = machine_verdicts(state, model)
    if not found:
        return denied, _NOTHING_DENIED
    assert model.machine is not None
    if model.machine.factor == 0.0:
        return denied | frozenset(found), _NOTHING_DENIED
    return denied, frozenset(found)


class Caps:
    """Once-only awards and rolling-window caps, evaluated hit by hit in ``(timestamp, messageId)``
    order: what :func:`effective_points` runs over all hits, kept as an object so a walk can stop
    and later go on (``snapshot`` / ``restore``) with exactly the same arithmetic."""

    __slots__ = ("adjusted", "awarded_once", "denied", "factor", "rule_of", "scaled", "used", "windows")

    def __init__(
        self,
        model: Model,
        windows: dict[str, deque[tuple[int, float]]],
        used: dict[str, float],
        awarded_once: set[str],
        denied: frozenset[str] = _NOTHING_DENIED,
        adjusted: dict[str, float] | None = None,
        *,
        scaled: frozenset[str] = _NOTHING_DENIED,
    ) -> None:
        self.rule_of = model.by_id.get
        self.windows = windows
        self.used = used
        self.awarded_once = awarded_once
        # hits whose consent denies scoring (consent_denied): they earn nothing and use no cap
        self.denied = denied
        # an adjustment hit's points by its message id (adjusted_points)
        self.adjusted = adjusted if adjusted is not None else _NO_ADJUSTMENTS
        # hits a machine made (unscored; scorestream.machine): their points times ``factor``
        self.scaled = scaled
        self.factor = model.machine.factor if model.machine is not None else 1.0

    @classmethod
    def start(cls, state: ContactState, model: Model) -> Caps:
        """Before the first kept hit: the folded base's once-only awards and capped entries."""
        windows = {k: deque(w) for k, w in state.capped.items()}
        used = {k: sum(abs(v) for _, v in w) for k, w in windows.items()}
        denied, scaled = unscored(state, model)
        return cls(model, windows, used, set(state.base_once), denied, adjusted_points(state), scaled=scaled)

    def snapshot(self) -> tuple[dict[str, list[tuple[int, float]]], dict[str, float], list[str]]:
        return {k: list(w) for k, w in self.windows.items()}, dict(self.used), sorted(self.awarded_once)

    @classmethod
    def restore(
        cls,
        model: Model,
        windows: dict[str, list[tuple[int, float]]],
        used: dict[str, float],
        awarded_once: list[str],
        denied: frozenset[str] = _NOTHING_DENIED,
        adjusted: dict[str, float] | None = None,
        *,
        scaled: frozenset[str] = _NOTHING_DENIED,
    ) -> Caps:
        restored = {k: deque((int(t), float(v)) for t, v in w) for k, w in windows.items()}
        return cls(model, restored, dict(used), set(awarded_once), denied, adjusted, scaled=scaled)

    def earn(self, hit: Hit) -> list[tuple[str, float]]:
        """The points ``hit`` earns after once-only awards and caps (the next hit in order); none
        when its consent denies scoring (the caps and once-only awards stay for the next)."""
        if self.denied and hit.mid in self.denied:
            return [(rule_id, 0.0) for rule_id in hit.rules]
        earned: list[tuple[str, float]] = []
        windows, used, awarded_once = self.windows, self.used, self.awarded_once
        scale = self.factor if self.scaled and hit.mid in self.scaled else 1.0
        for rule_id in hit.rules:
            rule = self.rule_of(rule_id)
            if rule is None:  # the rule left the model: it earns nothing now (an adjustment: its own points)
                earned.append((rule_id, self.adjusted.get(hit.mid, 0.0) if is_rule(rule_id) else 0.0))
                continue
            value = rule.points * scale
            if rule.once:
                if rule_id in awarded_once:
                    value = 0.0
                else:
                    awarded_once.add(rule_id)
            if value and rule.cap_points is not None and rule.cap_window_ms is not None:
                window = windows.get(rule_id)
                if window is None:
                    window = windows[rule_id] = deque()
                    used[rule_id] = 0.0
                start = hit.ts - rule.cap_window_ms
                while window and window[0][0] <= start:
                    used[rule_id] -= abs(window.popleft()[1])
                room = max(rule.cap_points - used[rule_id], 0.0)
                value = math.copysign(min(abs(value), room), value) if room > 1e-12 else 0.0
                if value:
                    window.append((hit.ts, value))
                    used[rule_id] += abs(value)
            earned.append((rule_id, value))
        return earned


def effective_points(state: ContactState, model: Model) -> list[list[tuple[str, float]]]:
    """Points each hit actually earns after once-only awards and rolling-window caps.

    Evaluated over hits in ``(timestamp, messageId)`` order, so the answer does not depend on
    arrival order. A cap limits the magnitude a rule awards within any trailing window; awards
    already folded into the base but still inside their window count against it.
    """
    caps = Caps.start(state, model)
    return [caps.earn(hit) for hit in state.hits]
