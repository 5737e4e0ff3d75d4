"""Manual score adjustments: what sales know and the events do not, as events like any other.

``POST /v1/contacts/{id}/adjustments`` publishes a ``track`` event named :data:`ADJUSTED` on the
``crm`` channel (the API's own source topic, ``events.crm``): its message id is the adjustment
id, its time the instant it was made, its properties ``adjustment_id``, ``points``, ``group``,
``reason`` and ``by``. ``DELETE .../adjustments/{adjustment_id}`` publishes :data:`REVERTED` with
``adjustment_id`` (and ``by``). The fold (:mod:`scorestream.contact`) keeps one
:class:`Adjustment` record per id in ``ContactState.adjustments`` and a hit per adjustment whose
rule is :func:`rule_id` (``adjustment``, or ``adjustment:<group>`` for a score group the model
declares; a group it does not declare counts in the overall score only): the hit earns the
record's points (:class:`scorestream.state.Caps`), decays, is explained and folds into the base
like any hit. A revert zeroes it, whichever arrives first; one arriving after the hit folded
into the base takes its decayed points out of the base.

Only events of the ``crm`` channel are adjustments: the collector's write keys cannot send to
it, so a website cannot adjust its own visitors' scores. Plain data and parsing here (floor 0);
how they change a state is :mod:`scorestream.contact`'s.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

from scorestream.events import Event

ADJUSTED = "Score Adjusted"
REVERTED = "Score Adjustment Reverted"
CHANNEL = "crm"
RULE = "adjustment"
MAX_POINTS = 1000.0
"""The largest magnitude of one adjustment's points."""
MAX_REASON = 500
"""The longest reason, in characters."""
MAX_BY = 200
"""The longest author name, in characters."""
MAX_ID = 128
"""The longest adjustment id, in characters."""
MAX_KEPT = 100
"""Adjustment records a contact keeps beyond those whose hit is still kept: the newest (a revert of
an older folded one then does nothing; its points stay in the base)."""


def rule_id(group: str | None) -> str:
    """The built-in rule an adjustment's hit matches: ``adjustment``, or ``adjustment:<group>``."""
    return RULE if group is None else f"{RULE}:{group}"


def is_rule(rule: str) -> bool:
    """Whether ``rule`` is an adjustment's built-in rule id (a model rule may not take such an id)."""
    return rule == RULE or rule.startswith(RULE + ":")


def group_of_rule(rule: str) -> str | None:
    """The group of ``adjustment:<group>``, None for ``adjustment``."""
    return rule[len(RULE) + 1 :] if rule.startswith(RULE + ":") else None


class Revert(NamedTuple):
    """An adjustment's revert: the earliest by ``(instant, message id)`` when several came."""

    at_ms: int
    mid: str
    by: str


class Adjustment(NamedTuple):
    """One adjustment as the state keeps it (a table value: a plain tuple).

    ``at_ms`` None: only its revert is known so far (the revert came first). ``folded``: the
    points its hit earned when it folded into the base (None while the hit is kept)."""

    at_ms: int | None = None
    points: float = 0.0
    group: str | None = None
    reason: str = ""
    by: str = ""
    reverted: Revert | None = None
    folded: float | None = None

    @property
    def live_points(self) -> float:
        """What its hit earns before consent: its points, 0 once reverted."""
        return 0.0 if self.reverted is not None else self.points


class Adjusted(NamedTuple):
    """An adjustment event, read."""

    adjustment_id: str
    at_ms: int
    points: float
    group: str | None
    reason: str
    by: str


class Reverted(NamedTuple):
    """A revert event, read."""

    adjustment_id: str
    revert: Revert


def _text(value: Any, limit: int) -> str | None:
    return value if isinstance(value, str) and len(value) <= limit else None


def read(event: Event) -> Adjusted | Reverted | None:
    """The adjustment or revert ``event`` carries, None when it is neither (another channel,
    another name, or properties out of contract: the API never publishes such, and the fold then
    treats the event as any other)."""
    if event.channel != CHANNEL or event.kind != "track":
        return None
    props = event.properties
    if event.event == ADJUSTED:
        points = props.get("points")
        group = props.get("group")
        reason = _text(props.get("reason"), MAX_REASON)
        by = _text(props.get("by", ""), MAX_BY)
        if (
            isinstance(points, bool)
            or not isinstance(points, int | float)
            or not math.isfinite(points)
            or abs(points) > MAX_POINTS
            or (group is not None and not isinstance(group, str))
            or not reason
            or by is None
            or props.get("adjustment_id", event.message_id) != event.message_id
        ):
            return None
        return Adjusted(event.message_id, event.timestamp_ms, float(points), group or None, reason, by)
    if event.event == REVERTED:
        target = _text(props.get("adjustment_id"), MAX_ID)
        by = _text(props.get("by", ""), MAX_BY)
        if not target or by is None:
            return None
        return Reverted(target, Revert(event.timestamp_ms, event.message_id, by))
    return None


def earliest(a: Revert | None, b: Revert | None) -> Revert | None:
    """The earlier of two reverts by ``(instant, message id)`` (None: no revert)."""
    if a is None:
        return b
    if b is None:
        return a
    return min(a, b, key=lambda r: (r.at_ms, r.mid))


def combine(a: Adjustment, b: Adjustment) -> Adjustment:
    """One adjustment's two records (two contacts merging, each knowing part of it) as one: the
    adjustment's own fields from the one that knows it, the earliest revert, the folded points."""
    known = a if a.at_ms is not None else b
    folded = a.folded if a.folded is not None else b.folded
    return known._replace(reverted=earliest(a.reverted, b.reverted), folded=folded)
