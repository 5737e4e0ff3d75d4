"""HTTP bodies of manual score adjustments (``/v1/contacts/{id}/adjustments``), v1, and the
``track`` messages the API publishes for them on the ``crm`` source topic (the event contract:
``Score Adjusted`` and ``Score Adjustment Reverted``, docs/events.md "Manual adjustments").
Times are ISO 8601 (UTC)."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from scorestream.adjustments import ADJUSTED, MAX_BY, MAX_POINTS, MAX_REASON, REVERTED
from scorestream.rules.groups import GROUP_ID

Reason = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_REASON)]
By = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_BY)]
GroupId = Annotated[str, StringConstraints(pattern=GROUP_ID.pattern, max_length=64)]


class AdjustmentIn(BaseModel):
    """A manual adjustment: points added to (or, negative, taken from) the contact's engagement at
    the instant it is made, decaying like any event's."""

    model_config = ConfigDict(extra="forbid")

    points: float = Field(
        description=f"Non-zero, finite, at most {MAX_POINTS:g} in magnitude; negative lowers the score."
    )
    group: GroupId | None = Field(
        default=None,
        description="A score group of the active model (`engagement.groups`): the points count in that group's "
        "score (at its half-life) and in the overall score times its weight. Omitted: the overall score only.",
    )
    reason: Reason = Field(description="Why: shown in the contact's explanation and history.")
    by: By | None = Field(default=None, description="Who made it; default: the API key's name.")

    @field_validator("points")
    @classmethod
    def _points(cls, value: float) -> float:
        if not math.isfinite(value) or value == 0 or abs(value) > MAX_POINTS:
            raise ValueError(f"must be a finite non-zero number of at most {MAX_POINTS:g} in magnitude")
        return value


class AdjustmentOut(BaseModel):
    """An adjustment: what was asked, by whom and when; its revert when undone."""

    adjustment_id: str
    contact_id: str
    points: float = Field(description="The points as made (not decayed).")
    group: str | None
    reason: str
    by: str
    at: datetime = Field(description="When it was made: its event time, from which it decays.")
    reverted_at: datetime | None = Field(default=None, description="When it was undone (null: it counts).")
    reverted_by: str | None = None
    points_now: float | None = Field(
        default=None,
        description="Its points decayed to the request time at the overall half-life (0 once reverted); in lists only.",
    )


class AdjustmentListOut(BaseModel):
    """A contact's adjustments as the worker has folded them, newest first, reverted ones marked."""

    contact_id: str
    adjustments: list[AdjustmentOut]


class RevertOut(BaseModel):
    """A revert accepted: it is published; the worker takes the adjustment's points out."""

    adjustment_id: str
    contact_id: str
    reverted_at: datetime
    reverted_by: str


def iso(ms: int) -> str:
    """An instant as the messages carry it: ISO 8601 with milliseconds and ``Z``."""
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _who(user_id: str | None, anonymous_id: str | None) -> dict[str, Any]:
    return {"userId": user_id, "anonymousId": anonymous_id}


def adjusted_message(
    adjustment_id: str,
    at_ms: int,
    user_id: str | None,
    anonymous_id: str | None,
    body: AdjustmentIn,
    by: str,
) -> dict[str, Any]:
    """The ``Score Adjusted`` track message: its message id is the adjustment id, its time the
    instant it was made."""
    return {
        "type": "track",
        "event": ADJUSTED,
        "messageId": adjustment_id,
        "timestamp": iso(at_ms),
        **_who(user_id, anonymous_id),
        "properties": {
            "adjustment_id": adjustment_id,
            "points": body.points,
            "group": body.group,
            "reason": body.reason,
            "by": by,
        },
        "context": {"library": {"name": "scorestream-api"}},
    }


def reverted_message(
    message_id: str, adjustment_id: str, at_ms: int, user_id: str | None, anonymous_id: str | None, by: str
) -> dict[str, Any]:
    """The ``Score Adjustment Reverted`` track message."""
    return {
        "type": "track",
        "event": REVERTED,
        "messageId": message_id,
        "timestamp": iso(at_ms),
        **_who(user_id, anonymous_id),
        "properties": {"adjustment_id": adjustment_id, "by": by},
        "context": {"library": {"name": "scorestream-api"}},
    }
