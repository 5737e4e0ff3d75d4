"""The lifecycle part of a contact's state: its stage, stage history, and what fired on the way.

Plain data (a table value, encoded by ``schemas.state``); :mod:`scorestream.walk` computes it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

MAX_HISTORY = 100
"""Stage entries a journey keeps (the latest)."""
MAX_FIRED = 64
"""Timers and thresholds fired a journey keeps (the latest)."""


class StageEntry(NamedTuple):
    """One stay in a stage: when it began and ended (None: current), the transition that led into
    it (``initial`` for the first) and the message id of the event that caused it (None when time
    caused it: a timer or engagement decaying past a guard)."""

    stage: str
    entered_ms: int
    exited_ms: int | None
    rule: str
    cause: str | None


class Fired(NamedTuple):
    """A timer that fired (``kind`` "timer", ``name`` its id) or an engagement threshold crossed
    (``kind`` "crossing", ``name`` the threshold, ``direction`` "up"/"down"), at ``at_ms``; a score
    group's threshold names its ``group`` (None: the overall score's)."""

    kind: str
    name: str
    at_ms: int
    direction: str
    cause: str | None
    group: str | None = None


@dataclass(slots=True)
class Cursor:
    """Where a walk through a contact's history stands just after the checkpoint
    ``(at_ms, mid)``: enough to continue it."""

    at_ms: int
    stage: str
    since_ms: int
    mid: str = ""
    pending: dict[str, int] = field(default_factory=dict)
    above: list[float] = field(default_factory=list)
    # engagement: ``ref_score`` at ``ref_ms`` (the last checkpoint), decayed from there
    ref_score: float = 0.0
    ref_ms: int = 0
    # checkpoints applied since the anchor; a kept position before the newest (just before a
    # checkpoint, spaced by event time: ``scorestream.walk._keep``) or the one at the newest event
    index: int = 0
    periodic: bool = False
    # the caps' state after the hits up to here (``scorestream.contact.Caps``)
    cap_windows: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    cap_used: dict[str, float] = field(default_factory=dict)
    once: list[str] = field(default_factory=list)
    # purchase signals here (completed orders net of refunds, net revenue)
    orders: int = 0
    monetary: float = 0.0
    # score groups the lifecycle watches (guards, thresholds): each one's raw score at ``ref_ms``
    # and the thresholds it is above (``scorestream.rules.lifecycle.Lifecycle.watched``)
    group_ref: dict[str, float] = field(default_factory=dict)
    group_above: dict[str, list[float]] = field(default_factory=dict)


@dataclass(slots=True)
class Journey:
    """A contact's lifecycle at ``walked_to_ms``.

    ``history`` is oldest first and ends with the current stage; ``anchor`` is the walk's state at
    the fold horizon (history before it is settled), None while nothing has been folded;
    ``next_due_ms`` is the next instant something would happen with no further events (a timer,
    a decay-driven transition or threshold crossing), None if nothing would.
    """

    stage: str
    since_ms: int
    walked_to_ms: int
    history: list[StageEntry] = field(default_factory=list)
    fired: list[Fired] = field(default_factory=list)
    flags: dict[str, str] = field(default_factory=dict)
    persona: str | None = None
    anchor: Cursor | None = None
    next_due_ms: int | None = None
    # positions of the walk (oldest first, at roughly geometric ages behind the last one, which is
    # at the newest event): a later walk resumes from the latest one before the earliest new event
    # instead of walking again from the anchor
    cursors: list[Cursor] = field(default_factory=list)
    # the model version that walked it (another model walks again from the anchor)
    model_version: str = ""
    # a walk put off (see ``scorestream.fold.step``): the earliest event time not walked yet
    deferred_since: int | None = None

    @property
    def cursor(self) -> Cursor | None:
        """The walk's position at the contact's newest event."""
        return self.cursors[-1] if self.cursors else None
