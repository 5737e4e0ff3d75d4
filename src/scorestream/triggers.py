"""Triggers: the changes that matter, as plain records for the ``triggers`` topic.

Every trigger has a stable ``id``: the same change, computed again (a redelivered batch, a replay,
a second walk over the same history), gets the same id, so a consumer (the webhook dispatcher, a
CRM) delivers it once by remembering ids. The record is a JSON-ready dict; its contract is
``schemas.triggers.Trigger``.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

TRIGGER_VERSION = 1
TYPES = (
    "stage.changed",
    "score.threshold_crossed",
    "rfm.segment_changed",
    "cart.abandoned",
    "customer.lapsed",
    "contact.disqualified",
    "account.stage_changed",
)


def trigger_id(kind: str, subject: str, at_ms: int, rule: str | None, before: Any, after: Any) -> str:
    """``trg_`` + 24 hex digits of SHA-256 over what identifies the change (not when it was seen)."""
    canonical = json.dumps([kind, subject, at_ms, rule, before, after], sort_keys=True, separators=(",", ":"))
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
) -> dict[str, Any]:
    """A trigger record. ``at_ms`` is event time (when the change happened, not when it was
    computed); ``cause`` the message id of the event that caused it (None: time caused it)."""
    if kind not in TYPES:
        raise ValueError(f"unknown trigger type {kind!r}")
    subject = contact_id if contact_id is not None else account_id
    if subject is None:
        raise ValueError("a trigger needs a contact_id or an account_id")
    return {
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
