"""Engagement rules: points for the events that match a rule's clause."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from fnmatch import translate

from scorestream.errors import ModelError
from scorestream.events import CHANNELS, KINDS, Event
from scorestream.rules.common import Predicate, parse_duration_ms, parse_points, str_set


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
    # the score group the rule belongs to (``engagement.groups``; scorestream.rules.groups), if any
    group: str | None = None

    @classmethod
    def parse(cls, raw: object, index: int, group: str | None = None, where: str | None = None) -> EngagementRule:
        """The rule at ``engagement.rules[index]``, or at ``where`` in ``group``'s rules."""
        where = where or f"engagement.rules[{index}]"
        if not isinstance(raw, Mapping):
            raise ModelError(f"{where}: a rule is a mapping")
        rule_id = raw.get("id")
        if not isinstance(rule_id, str) or not rule_id:
            raise ModelError(f"{where}: rule needs a non-empty string 'id'")
        where = f"engagement rule {rule_id!r}" + (f" of group {group!r}" if group else "")
        match = raw.get("match", {})
        if not isinstance(match, Mapping):
            raise ModelError(f"{where}: 'match' must be a mapping")
        unknown = set(match) - {"type", "event", "channel", "path", "where"}
        if unknown:
            raise ModelError(f"{where}: unknown match key(s) {sorted(unknown)}")
        paths = str_set(match.get("path"), f"{where}.match.path")
        preds = match.get("where", [])
        if not isinstance(preds, list):
            raise ModelError(f"{where}.match.where: expected a list of predicates")
        cap = raw.get("cap")
        cap_points: float | None = None
        cap_window: int | None = None
        if cap is not None:
            if not isinstance(cap, Mapping) or "points" not in cap or "window" not in cap:
                raise ModelError(f"{where}.cap: expected {{points: N, window: '1d'}}")
            cap_points = abs(parse_points(cap["points"], f"{where}.cap"))
            cap_window = parse_duration_ms(cap["window"], f"{where}.cap.window")
        return cls(
            id=rule_id,
            points=parse_points(raw.get("points"), where),
            description=str(raw.get("description", "")),
            kinds=str_set(match.get("type"), f"{where}.match.type", KINDS),
            events=str_set(match.get("event"), f"{where}.match.event"),
            channels=str_set(match.get("channel"), f"{where}.match.channel", CHANNELS),
            paths=tuple(sorted(paths or ())),
            path_pattern=re.compile("|".join(f"(?:{translate(p)})" for p in sorted(paths))) if paths else None,
            where=tuple(Predicate.parse(p, f"{where}.match.where[{i}]") for i, p in enumerate(preds)),
            once=bool(raw.get("once", False)),
            cap_points=cap_points,
            cap_window_ms=cap_window,
            group=group,
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
