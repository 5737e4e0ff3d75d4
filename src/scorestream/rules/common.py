"""What every part of the model file is made of: predicates over a mapping, durations, numbers,
name sets and bands. The bottom of the rules floor: it imports nothing of the core but the errors.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

from scorestream.errors import ModelError

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}
OPS = ("eq", "ne", "in", "not_in", "gt", "gte", "lt", "lte", "contains", "matches", "glob", "exists")


def parse_duration_ms(value: object, where: str) -> int:
    """``"14d"``, ``"12h"``, ``"30m"``, ``"45s"``, ``"250ms"`` or a number of seconds."""
    if isinstance(value, bool):
        raise ModelError(f"{where}: expected a duration, got {value!r}")
    if isinstance(value, int | float):
        ms = int(value * 1000)
    elif isinstance(value, str) and (m := _DURATION.match(value)):
        ms = int(float(m.group(1)) * _UNIT_MS[m.group(2) or "s"])
    else:
        raise ModelError(f"{where}: expected a duration such as '14d' or '12h', got {value!r}")
    if ms <= 0:
        raise ModelError(f"{where}: duration must be positive, got {value!r}")
    return ms


def lookup(source: Mapping[str, Any], dotted: str) -> Any:
    """Value at a dotted path (``"product.category"``) or ``None`` when any step is missing."""
    current: Any = source
    for part in dotted.split("."):
        if not isinstance(current, Mapping):
            return None
        current = current.get(part)
    return current


def _casefold(value: Any) -> Any:
    """Strings compare ignoring case."""
    return value.casefold() if isinstance(value, str) else value


def as_number(value: Any) -> float | None:
    """A number, a numeric string as its number, anything else (a bool included) None: how a
    predicate reads the value it compares."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


@dataclass(frozen=True, slots=True)
class Predicate:
    """``field op value`` over a mapping. String equality and membership ignore case."""

    field: str
    op: str
    value: Any = None
    pattern: re.Pattern[str] | None = None

    @classmethod
    def parse(cls, raw: object, where: str) -> Predicate:
        if not isinstance(raw, Mapping):
            raise ModelError(f"{where}: a predicate is a mapping such as {{field: x, op: eq, value: 1}}")
        name = raw.get("field") or raw.get("property") or raw.get("trait")
        if not isinstance(name, str) or not name:
            raise ModelError(f"{where}: predicate needs 'field' (a dotted path)")
        op = raw.get("op", "eq")
        if op not in OPS:
            raise ModelError(f"{where}: unknown op {op!r}; one of {', '.join(OPS)}")
        value = raw.get("value")
        pattern = None
        if op == "matches":
            if not isinstance(value, str):
                raise ModelError(f"{where}: 'matches' needs a regular expression string")
            try:
                pattern = re.compile(value)
            except re.error as exc:
                raise ModelError(f"{where}: bad regular expression {value!r}: {exc}") from exc
        elif op in ("in", "not_in"):
            if not isinstance(value, list):
                raise ModelError(f"{where}: '{op}' needs a list value")
            value = frozenset(_casefold(v) for v in value)
        elif op in ("gt", "gte", "lt", "lte") and as_number(value) is None:
            raise ModelError(f"{where}: '{op}' needs a number")
        elif op == "exists":
            value = True if value is None else bool(value)
        return cls(field=name, op=op, value=value, pattern=pattern)

    def test(self, source: Mapping[str, Any]) -> bool:
        actual = lookup(source, self.field)
        op = self.op
        if op == "exists":
            return (actual is not None) is self.value
        if actual is None:
            return op in ("ne", "not_in")
        if op == "eq":
            return bool(_casefold(actual) == _casefold(self.value))
        if op == "ne":
            return bool(_casefold(actual) != _casefold(self.value))
        if op in ("in", "not_in"):
            # a list or object trait is never one of the listed (scalar) values
            found = not isinstance(actual, list | dict) and _casefold(actual) in self.value
            return found if op == "in" else not found
        if op == "contains":
            if isinstance(actual, str):
                return str(self.value).casefold() in actual.casefold()
            if isinstance(actual, list):
                return _casefold(self.value) in [_casefold(a) for a in actual]
            return False
        if op == "matches":
            assert self.pattern is not None
            return isinstance(actual, str) and self.pattern.search(actual) is not None
        if op == "glob":
            return isinstance(actual, str) and fnmatchcase(actual, str(self.value))
        number = as_number(actual)
        if number is None:
            return False
        limit = float(self.value)
        if op == "gt":
            return number > limit
        if op == "gte":
            return number >= limit
        if op == "lt":
            return number < limit
        return number <= limit


def str_set(raw: object, where: str, allowed: Sequence[str] | None = None) -> frozenset[str] | None:
    """A name or a list of names as a set (None when absent), each one of ``allowed`` if given."""
    if raw is None:
        return None
    items = [raw] if isinstance(raw, str) else raw
    if not isinstance(items, list) or not all(isinstance(i, str) and i for i in items):
        raise ModelError(f"{where}: expected a string or a list of strings")
    if allowed is not None:
        bad = [i for i in items if i not in allowed]
        if bad:
            raise ModelError(f"{where}: unknown value(s) {bad}; allowed: {', '.join(allowed)}")
    return frozenset(items)


def parse_points(raw: object, where: str) -> float:
    """A rule's ``points``: an int or a float (not a string, not a bool)."""
    number = as_number(raw) if not isinstance(raw, str) else None
    if number is None:
        raise ModelError(f"{where}: 'points' must be a number")
    return number


@dataclass(frozen=True, slots=True)
class Band:
    """A label given to scores at or above ``min`` (bands are checked highest first)."""

    label: str
    min: float


def parse_number(raw: object, where: str, minimum: float | None = None) -> float:
    """A finite int or float (not a bool), at least ``minimum`` when given."""
    if isinstance(raw, bool) or not isinstance(raw, int | float) or not math.isfinite(raw):
        raise ModelError(f"{where}: expected a number, got {raw!r}")
    if minimum is not None and raw < minimum:
        raise ModelError(f"{where}: must be >= {minimum}, got {raw!r}")
    return float(raw)


def parse_bands(raw: object, where: str, default: Sequence[Band]) -> tuple[Band, ...]:
    """Bands from ``[{label: A, min: 60}, ...]``, highest ``min`` first; ``default`` when absent."""
    if raw is None:
        return tuple(sorted(default, key=lambda b: -b.min))
    if not isinstance(raw, list) or not raw:
        raise ModelError(f"{where}: expected a non-empty list of {{label, min}}")
    bands = []
    for i, item in enumerate(raw):
        if not isinstance(item, Mapping) or "label" not in item or "min" not in item:
            raise ModelError(f"{where}[{i}]: expected {{label: A, min: 60}}")
        low = item["min"]
        if isinstance(low, bool) or not isinstance(low, int | float):
            raise ModelError(f"{where}[{i}]: 'min' must be a number")
        bands.append(Band(label=str(item["label"]), min=float(low)))
    return tuple(sorted(bands, key=lambda b: -b.min))
