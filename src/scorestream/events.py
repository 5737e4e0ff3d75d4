"""The normalised event the core folds: one Segment message, already validated at the edge."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

KINDS = ("identify", "track", "page", "screen", "group", "alias")
CHANNELS = ("web", "email", "store", "crm")  # crm: the API's own (manual adjustments, scorestream.adjustments)


@dataclass(slots=True, frozen=True)
class Event:
    """A validated Segment message in the shape the core needs.

    ``timestamp_ms`` is event time (milliseconds since the Unix epoch, UTC); it is the only clock
    the core ever sees.
    """

    message_id: str
    kind: str
    timestamp_ms: int
    channel: str
    user_id: str | None = None
    anonymous_id: str | None = None
    event: str | None = None
    name: str | None = None
    path: str | None = None
    properties: dict[str, Any] = field(default_factory=dict)
    traits: dict[str, Any] = field(default_factory=dict)
    previous_id: str | None = None
    group_id: str | None = None
    user_agent: str | None = None
    # Segment's consent object, ``context.consent.categoryPreferences`` (category -> granted);
    # None: the event carries none (it takes the contact's consent at its instant)
    consent: dict[str, bool] | None = None

    @property
    def order_key(self) -> tuple[int, str]:
        """Total order on events: event time, then message id (ties broken deterministically)."""
        return (self.timestamp_ms, self.message_id)
