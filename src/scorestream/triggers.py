"""Triggers: the changes that matter, as plain records for the ``triggers`` topic, and their
derivation from a contact's journey (:func:`journey_triggers`).

Every trigger has a stable ``id``: the same change, computed again (a redelivered batch, a replay,
a second walk over the same history), gets the same id, so a consumer (the webhook dispatcher, a
CRM) delivers it once by remembering ids. The record is a JSON-ready dict; its contract is
``schemas.triggers.Trigger``.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from scorestream.journey import MAX_FIRED, MAX_HISTORY, Journey
from scorestream.rules.lifecycle import Lifecycle
from scorestream.rules.model import Model

TRIGGER_VERSION = 1
TYPES = (
    "stage.changed",
    "score.threshold_crossed",
    "rfm.segment_changed",
    "cart.abandoned",
    "customer.lapsed",
    "contact.disqualified",
    "account.stage_changed",
    "customer.churn_risk_changed",
)


# ``json.dumps(..., sort_keys=True, separators=(",", ":"))`` with its encoder built once (dumps
# builds one per call: a third of the cost of an id)
_canonical_json = json.JSONEncoder(sort_keys=True, separators=(",", ":")).encode


def trigger_id(kind: str, subject: str, at_ms: int, rule: str | None, before: Any, after: Any) -> str:
    """``trg_`` + 24 hex digits of SHA-256 over what identifies the change (not when it was seen)."""
    canonical = _canonical_json([kind, subject, at_ms, rule, before, after])
    return "trg_" + hashlib.sha256(canonical.encode()).hexdigest()[:24]


def make_trigger(
    kind: str,
    *,
    at_ms: int,
    model_version: str,
    contact_id: str | None = None,
    account_id: str | None = None,
    before: Any = None,
    after: Any = None,
    rule: str | None = None,
    cause: str | None = None,
    group: str | None = None,
) -> dict[str, Any]:
    """A trigger record. ``at_ms`` is event time (when the change happened, not when it was
    computed); ``cause`` the message id of the event that caused it (None: time caused it);
    ``group`` the score group of a group's ``score.threshold_crossed`` (the record has a ``group``
    key only then)."""
    if kind not in TYPES:
        raise ValueError(f"unknown trigger type {kind!r}")
    subject = contact_id if contact_id is not None else account_id
    if subject is None:
        raise ValueError("a trigger needs a contact_id or an account_id")
    record = {
        "id": trigger_id(kind, subject, at_ms, rule, before, after),
        "type": kind,
        "at_ms": at_ms,
        "contact_id": contact_id,
        "account_id": account_id,
        "before": before,
        "after": after,
        "rule": rule,
        "cause": cause,
        "model_version": model_version,
        "v": TRIGGER_VERSION,
    }
    if group is not None:
        record["group"] = group
    return record


def journey_triggers(
    before: Journey | None, after: Journey, contact_id: str, model: Model, lc: Lifecycle
) -> list[dict[str, Any]]:
    """Triggers for what ``after`` holds that ``before`` did not: stage entries, timers that
    fired, thresholds crossed. Each has a stable id, so one recomputed later is recognisable.

    A list equal to the one ``before`` holds has nothing new (most walks add nothing): it is not
    looked through."""
    out: list[dict[str, Any]] = []
    if before is None or after.history != before.history:
        _stage_triggers(before, after, contact_id, model, lc, out)
    if before is None or after.fired != before.fired:
        _fired_triggers(before, after, contact_id, model, lc, out)
    return out


def _stage_triggers(
    before: Journey | None, after: Journey, contact_id: str, model: Model, lc: Lifecycle, out: list[dict[str, Any]]
) -> None:
    """Stage entries of ``after`` that ``before`` did not hold (and their disqualifications)."""
    old_entries = {(e.stage, e.entered_ms, e.rule) for e in before.history} if before is not None else set()
    # what fell off the front of a full list is old news, not new: it is not announced again
    history_floor = before.history[0].entered_ms if before is not None and len(before.history) >= MAX_HISTORY else None
    version = model.version
    previous: str | None = None
    for entry in after.history:
        trimmed = history_floor is not None and entry.entered_ms < history_floor
        if (entry.stage, entry.entered_ms, entry.rule) not in old_entries and entry.rule != "initial" and not trimmed:
            out.append(
                make_trigger(
                    "stage.changed",
                    at_ms=entry.entered_ms,
                    model_version=version,
                    contact_id=contact_id,
                    before=previous,
                    after=entry.stage,
                    rule=entry.rule,
                    cause=entry.cause,
                )
            )
            if entry.stage == lc.disqualified:
                out.append(
                    make_trigger(
                        "contact.disqualified",
                        at_ms=entry.entered_ms,
                        model_version=version,
                        contact_id=contact_id,
                        before=previous,
                        after={"stage": entry.stage, "flags": after.flags},
                        rule=entry.rule,
                        cause=entry.cause,
                    )
                )
        previous = entry.stage


def _fired_triggers(
    before: Journey | None, after: Journey, contact_id: str, model: Model, lc: Lifecycle, out: list[dict[str, Any]]
) -> None:
    """Timers and thresholds ``after`` fired that ``before`` did not hold."""
    old_fired = set(before.fired) if before is not None else set()
    # what fell off the front of a full list is old news, not new: it is not announced again
    fired_floor = before.fired[0].at_ms if before is not None and len(before.fired) >= MAX_FIRED else None
    version = model.version
    for f in after.fired:
        if f in old_fired or (fired_floor is not None and f.at_ms < fired_floor):
            continue
        if f.kind == "timer":
            timer = lc.timer_of.get(f.name)
            if timer is not None and timer.emit is not None:
                out.append(
                    make_trigger(
                        timer.emit,
                        at_ms=f.at_ms,
                        model_version=version,
                        contact_id=contact_id,
                        after={"timer": f.name, "stage": _stage_at(after, f.at_ms)},
                        rule=f.name,
                    )
                )
        else:
            threshold = float(f.name)
            # a score group's crossing names its score ``engagement.<group>`` (as its guards do)
            score = "engagement" if f.group is None else f"engagement.{f.group}"
            out.append(
                make_trigger(
                    "score.threshold_crossed",
                    at_ms=f.at_ms,
                    model_version=version,
                    contact_id=contact_id,
                    before={"score": score, "threshold": threshold, "above": f.direction == "down"},
                    after={"score": score, "threshold": threshold, "above": f.direction == "up"},
                    rule=f"{score}-{f.direction}-{f.name}",
                    cause=f.cause,
                    group=f.group,
                )
            )


def _stage_at(journey: Journey, at_ms: int) -> str | None:
    stage = None
    for entry in journey.history:
        if entry.entered_ms <= at_ms:
            stage = entry.stage
    return stage
