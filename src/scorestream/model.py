"""The scoring model: engagement rules, fit rules, decay and grade bands, parsed from a plain dict.

The YAML file is read by an adapter (``schemas.model_file``); the core only sees the parsed
mapping, so tests and replays build models from literals.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase, translate
from typing import TYPE_CHECKING, Any

from scorestream.events import CHANNELS, KINDS, Event

if TYPE_CHECKING:
    from scorestream.accounts import AccountsConfig
    from scorestream.lifecycle import Lifecycle
    from scorestream.rfm import ValueConfig

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}
OPS = ("eq", "ne", "in", "not_in", "gt", "gte", "lt", "lte", "contains", "matches", "glob", "exists")


class ModelError(ValueError):
    """The model file is not valid; the message names the offending field."""


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


def _fold(value: Any) -> Any:
    return value.casefold() if isinstance(value, str) else value


def _number(value: Any) -> float | None:
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
            value = frozenset(_fold(v) for v in value)
        elif op in ("gt", "gte", "lt", "lte") and _number(value) is None:
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
            return bool(_fold(actual) == _fold(self.value))
        if op == "ne":
            return bool(_fold(actual) != _fold(self.value))
        if op in ("in", "not_in"):
            # a list or object trait is never one of the listed (scalar) values
            found = not isinstance(actual, list | dict) and _fold(actual) in self.value
            return found if op == "in" else not found
        if op == "contains":
            if isinstance(actual, str):
                return str(self.value).casefold() in actual.casefold()
            if isinstance(actual, list):
                return _fold(self.value) in [_fold(a) for a in actual]
            return False
        if op == "matches":
            assert self.pattern is not None
            return isinstance(actual, str) and self.pattern.search(actual) is not None
        if op == "glob":
            return isinstance(actual, str) and fnmatchcase(actual, str(self.value))
        number = _number(actual)
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


def _str_set(raw: object, where: str, allowed: Sequence[str] | None = None) -> frozenset[str] | None:
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


def _points(raw: object, where: str) -> float:
    number = _number(raw) if not isinstance(raw, str) else None
    if number is None:
        raise ModelError(f"{where}: 'points' must be a number")
    return number


@dataclass(frozen=True, slots=True)
class EngagementRule:
    """Points for events that match; optional rolling-window cap and once-only award."""

    id: str
    points: float
    description: str = ""
    kinds: frozenset[str] | None = None
    events: frozenset[str] | None = None
    channels: frozenset[str] | None = None
    paths: tuple[str, ...] = ()
    where: tuple[Predicate, ...] = ()
    once: bool = False
    path_pattern: re.Pattern[str] | None = None
    cap_points: float | None = None
    cap_window_ms: int | None = None

    @classmethod
    def parse(cls, raw: object, index: int) -> EngagementRule:
        where = f"engagement.rules[{index}]"
        if not isinstance(raw, Mapping):
            raise ModelError(f"{where}: a rule is a mapping")
        rule_id = raw.get("id")
        if not isinstance(rule_id, str) or not rule_id:
            raise ModelError(f"{where}: rule needs a non-empty string 'id'")
        where = f"engagement rule {rule_id!r}"
        match = raw.get("match", {})
        if not isinstance(match, Mapping):
            raise ModelError(f"{where}: 'match' must be a mapping")
        unknown = set(match) - {"type", "event", "channel", "path", "where"}
        if unknown:
            raise ModelError(f"{where}: unknown match key(s) {sorted(unknown)}")
        paths = _str_set(match.get("path"), f"{where}.match.path")
        preds = match.get("where", [])
        if not isinstance(preds, list):
            raise ModelError(f"{where}.match.where: expected a list of predicates")
        cap = raw.get("cap")
        cap_points: float | None = None
        cap_window: int | None = None
        if cap is not None:
            if not isinstance(cap, Mapping) or "points" not in cap or "window" not in cap:
                raise ModelError(f"{where}.cap: expected {{points: N, window: '1d'}}")
            cap_points = abs(_points(cap["points"], f"{where}.cap"))
            cap_window = parse_duration_ms(cap["window"], f"{where}.cap.window")
        return cls(
            id=rule_id,
            points=_points(raw.get("points"), where),
            description=str(raw.get("description", "")),
            kinds=_str_set(match.get("type"), f"{where}.match.type", KINDS),
            events=_str_set(match.get("event"), f"{where}.match.event"),
            channels=_str_set(match.get("channel"), f"{where}.match.channel", CHANNELS),
            paths=tuple(sorted(paths or ())),
            path_pattern=re.compile("|".join(f"(?:{translate(p)})" for p in sorted(paths))) if paths else None,
            where=tuple(Predicate.parse(p, f"{where}.match.where[{i}]") for i, p in enumerate(preds)),
            once=bool(raw.get("once", False)),
            cap_points=cap_points,
            cap_window_ms=cap_window,
        )

    def matches(self, event: Event) -> bool:
        if self.kinds is not None and event.kind not in self.kinds:
            return False
        if self.events is not None and (event.event or event.name) not in self.events:
            return False
        if self.channels is not None and event.channel not in self.channels:
            return False
        if self.path_pattern is not None and not (event.path and self.path_pattern.match(event.path)):
            return False
        if not self.where:
            return True
        source = event.traits if event.kind in ("identify", "group") else event.properties
        for predicate in self.where:  # noqa: SIM110 (a genexpr per candidate rule costs ~3% of the worker)
            if not predicate.test(source):
                return False
        return True


@dataclass(frozen=True, slots=True)
class FitRule:
    """Points when every predicate over the contact's traits holds."""

    id: str
    points: float
    when: tuple[Predicate, ...]
    description: str = ""

    @classmethod
    def parse(cls, raw: object, index: int) -> FitRule:
        where = f"fit.rules[{index}]"
        if not isinstance(raw, Mapping):
            raise ModelError(f"{where}: a rule is a mapping")
        rule_id = raw.get("id")
        if not isinstance(rule_id, str) or not rule_id:
            raise ModelError(f"{where}: rule needs a non-empty string 'id'")
        when = raw.get("when")
        if not isinstance(when, list) or not when:
            raise ModelError(f"fit rule {rule_id!r}: 'when' must be a non-empty list of predicates")
        return cls(
            id=rule_id,
            points=_points(raw.get("points"), f"fit rule {rule_id!r}"),
            when=tuple(Predicate.parse(p, f"fit rule {rule_id!r}.when[{i}]") for i, p in enumerate(when)),
            description=str(raw.get("description", "")),
        )


@dataclass(frozen=True, slots=True)
class Band:
    """A label given to scores at or above ``min`` (bands are checked highest first)."""

    label: str
    min: float


def _bands(raw: object, where: str, default: list[dict[str, Any]]) -> tuple[Band, ...]:
    items = default if raw is None else raw
    if not isinstance(items, list) or not items:
        raise ModelError(f"{where}: expected a non-empty list of {{label, min}}")
    bands = []
    for i, item in enumerate(items):
        if not isinstance(item, Mapping) or "label" not in item or "min" not in item:
            raise ModelError(f"{where}[{i}]: expected {{label: A, min: 60}}")
        bands.append(Band(label=str(item["label"]), min=_points(item["min"], f"{where}[{i}]")))
    return tuple(sorted(bands, key=lambda b: -b.min))


@dataclass(frozen=True, slots=True)
class Model:
    """A parsed, immutable scoring model. ``version`` is ``name@<content hash>``."""

    name: str
    version: str
    half_life_ms: int
    rules: tuple[EngagementRule, ...]
    fit_rules: tuple[FitRule, ...]
    fit_grades: tuple[Band, ...]
    engagement_bands: tuple[Band, ...]
    max_hits: int
    fold_after_ms: int
    dedupe_memory: int
    source: Mapping[str, Any]
    value: ValueConfig
    lifecycle: Lifecycle | None
    _by_key: Mapping[tuple[str, str | None], tuple[EngagementRule, ...]]
    _wildcard: Mapping[str, tuple[EngagementRule, ...]]
    by_id: Mapping[str, EngagementRule]
    accounts: AccountsConfig

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Model:
        if not isinstance(raw, Mapping):
            raise ModelError("the model must be a mapping at the top level")
        name = raw.get("name")
        if not isinstance(name, str) or not name:
            raise ModelError("model needs a non-empty 'name'")
        engagement = raw.get("engagement") or {}
        fit = raw.get("fit") or {}
        if not isinstance(engagement, Mapping) or not isinstance(fit, Mapping):
            raise ModelError("'engagement' and 'fit' must be mappings")
        raw_rules = engagement.get("rules", [])
        if not isinstance(raw_rules, list):
            raise ModelError("engagement.rules must be a list")
        rules = tuple(EngagementRule.parse(r, i) for i, r in enumerate(raw_rules))
        raw_fit = fit.get("rules", [])
        if not isinstance(raw_fit, list):
            raise ModelError("fit.rules must be a list")
        fit_rules = tuple(FitRule.parse(r, i) for i, r in enumerate(raw_fit))
        for kind, group in (("engagement", rules), ("fit", fit_rules)):
            ids = [r.id for r in group]
            dupes = sorted({i for i in ids if ids.count(i) > 1})
            if dupes:
                raise ModelError(f"duplicate {kind} rule id(s): {dupes}")
        storage = raw.get("storage") or {}
        max_hits = int(storage.get("max_hits_per_contact", 500))
        dedupe_memory = int(storage.get("dedupe_memory", 512))
        if max_hits < 8 or dedupe_memory < 0:
            raise ModelError("storage.max_hits_per_contact must be >= 8 and dedupe_memory >= 0")
        from scorestream.lifecycle import parse_lifecycle  # these import this module
        from scorestream.rfm import ValueConfig

        value = raw.get("value") or {}
        if not isinstance(value, Mapping):
            raise ModelError("'value' must be a mapping")
        from scorestream.accounts import AccountsConfig  # accounts imports this module

        accounts = AccountsConfig.from_dict(raw.get("accounts"))
        lifecycle = parse_lifecycle(raw, [r.id for r in rules])
        canonical = json.dumps(raw, sort_keys=True, separators=(",", ":"), default=str)
        digest = hashlib.sha256(canonical.encode()).hexdigest()[:12]
        by_key: dict[tuple[str, str | None], list[EngagementRule]] = {}
        wildcard: dict[str, list[EngagementRule]] = {k: [] for k in KINDS}
        for rule in rules:
            kinds = sorted(rule.kinds) if rule.kinds is not None else list(KINDS)
            for kind in kinds:
                if rule.events is None:
                    wildcard[kind].append(rule)
                else:
                    for name_ in rule.events:
                        by_key.setdefault((kind, name_), []).append(rule)
        return cls(
            name=name,
            version=f"{name}@{digest}",
            half_life_ms=parse_duration_ms(engagement.get("half_life", "14d"), "engagement.half_life"),
            rules=rules,
            fit_rules=fit_rules,
            fit_grades=_bands(
                fit.get("grades"),
                "fit.grades",
                [
                    {"label": "A", "min": 60},
                    {"label": "B", "min": 35},
                    {"label": "C", "min": 15},
                    {"label": "D", "min": float("-inf")},
                ],
            ),
            engagement_bands=_bands(
                engagement.get("bands"),
                "engagement.bands",
                [
                    {"label": "1", "min": 60},
                    {"label": "2", "min": 30},
                    {"label": "3", "min": 10},
                    {"label": "4", "min": float("-inf")},
                ],
            ),
            max_hits=max_hits,
            fold_after_ms=parse_duration_ms(storage.get("fold_after", "30d"), "storage.fold_after"),
            dedupe_memory=dedupe_memory,
            source=raw,
            value=ValueConfig.from_dict(value),
            lifecycle=lifecycle,
            # each named key's candidates include its kind's wildcard rules, in model order, so
            # matching needs one lookup and no sort
            _by_key={k: tuple(sorted((*v, *wildcard[k[0]]), key=rules.index)) for k, v in by_key.items()},
            _wildcard={k: tuple(v) for k, v in wildcard.items()},
            by_id={r.id: r for r in rules},
            accounts=accounts,
        )

    def matching_rules(self, event: Event) -> list[EngagementRule]:
        """Rules whose match clause accepts ``event``, in model order."""
        name = event.event if event.kind == "track" else event.name
        candidates = self._by_key.get((event.kind, name))
        if candidates is None:
            candidates = self._wildcard.get(event.kind, ())
        return [r for r in candidates if r.matches(event)]

    def rule(self, rule_id: str) -> EngagementRule | None:
        return self.by_id.get(rule_id)
