"""Numbers, money and times as people read them (Babel's CLDR data, English by default): the
console's Jinja filters. Each takes the raw value (None shows as an em dash) and returns text;
templates keep the raw value beside it in ``<data value=...>`` (``macros.html``' ``num``), which
is what the browser tests compare with the API's answers."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from babel.dates import format_datetime, format_timedelta
from babel.numbers import format_currency, format_decimal, format_percent

LOCALE = "en"
NONE = "—"


def number(value: float | int | None, digits: int = 0) -> str:
    """``12345.6`` -> ``12,346`` (``digits`` decimals at most)."""
    if value is None:
        return NONE
    pattern = "#,##0" + ("." + "#" * digits if digits else "")
    return format_decimal(value, format=pattern, locale=LOCALE)


def score(value: float | None) -> str:
    """A score: one decimal below 100, none above."""
    if value is None:
        return NONE
    return number(value, 1 if abs(value) < 100 else 0)


def money(value: float | None, currency: str = "USD") -> str:
    """``1234.5`` -> ``$1,234.50``."""
    if value is None:
        return NONE
    return format_currency(value, currency, locale=LOCALE)


def percent(value: float | None, digits: int = 1) -> str:
    """A share: ``0.4567`` -> ``45.7%``."""
    if value is None:
        return NONE
    return format_percent(value, format="#,##0" + ("." + "#" * digits if digits else "") + "%", locale=LOCALE)


def _moment(value: datetime | int | float | None) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    return datetime.fromtimestamp(value / 1000, tz=UTC)  # epoch milliseconds


def ago(value: datetime | int | float | None, now_ms: int) -> str:
    """``3 minutes ago`` / ``in 2 days`` from an instant (datetime or epoch ms) to ``now_ms``."""
    moment = _moment(value)
    if moment is None:
        return NONE
    delta = moment - datetime.fromtimestamp(now_ms / 1000, tz=UTC)
    if abs(delta.total_seconds()) < 45:
        return "just now"
    return format_timedelta(delta, add_direction=True, threshold=1.1, locale=LOCALE)


def when(value: datetime | int | float | None) -> str:
    """An absolute instant, UTC: ``Dec 6, 2026, 14:05 UTC``."""
    moment = _moment(value)
    if moment is None:
        return NONE
    return format_datetime(moment, "MMM d, y, HH:mm", tzinfo=UTC, locale=LOCALE) + " UTC"


def duration(ms: float | int | None) -> str:
    """A length of time: ``3 days``, ``5 hours``."""
    if ms is None:
        return NONE
    return format_timedelta(timedelta(milliseconds=ms), threshold=1.1, locale=LOCALE)


def days(value: float | None) -> str:
    """A number of days (the reports give medians in days): ``4.2 days``."""
    return NONE if value is None else duration(value * 86_400_000)


FILTERS: dict[str, Callable[..., Any]] = {
    "number": number,
    "score": score,
    "money": money,
    "percent": percent,
    "ago": ago,
    "when": when,
    "duration": duration,
    "days": days,
}
