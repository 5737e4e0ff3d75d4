"""Instants on the wire: milliseconds since the epoch inside, aware UTC datetimes in API bodies."""

from __future__ import annotations

from datetime import UTC, datetime

DAY_MS = 86_400_000


def at_of(ms: int) -> datetime:
    """The UTC datetime of ``ms`` milliseconds since the epoch."""
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def dt_of(ms: int | None) -> datetime | None:
    """:func:`at_of`, None for None."""
    return None if ms is None else at_of(ms)


def ms_of(at: datetime) -> int:
    """Milliseconds since the epoch of ``at`` (a naive datetime is read as UTC)."""
    return int((at if at.tzinfo is not None else at.replace(tzinfo=UTC)).timestamp() * 1000)
