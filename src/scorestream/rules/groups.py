"""Score groups: the model file's ``engagement.groups``, a score per product line or brand beside
the overall engagement score.

Each group has its own rules (engagement rules, same syntax), half-life, bands and thresholds.
A group's score is its rules' earned points decayed at the group's half-life (clamped to
``[-max, max]`` when ``max`` is given); the overall score counts the same earned points times the
group's ``weight`` (0: the group stands apart), decayed at the overall half-life, so it stays one
exponential. Caps and once-only awards are per rule, the same for both sums.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from scorestream.errors import ModelError
from scorestream.rules.common import Band, parse_bands, parse_duration_ms, parse_number
from scorestream.rules.engagement import EngagementRule

GROUP_ID = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
_KEYS = frozenset({"id", "description", "half_life", "weight", "max", "bands", "thresholds", "rules"})


@dataclass(frozen=True, slots=True)
class ScoreGroup:
    """A score group: ``rule_ids`` are its engagement rules (each in one group only)."""

    id: str
    description: str
    half_life_ms: int
    weight: float
    max: float | None
    bands: tuple[Band, ...]
    thresholds: tuple[float, ...]
    rule_ids: tuple[str, ...]

    def clamp(self, score: float) -> float:
        """The group's score of its raw decayed sum: within ``[-max, max]`` when ``max`` is set."""
        limit = self.max
        if limit is None:
            return score
        return min(max(score, -limit), limit)


def _thresholds(raw: object, where: str) -> tuple[float, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise ModelError(f"{where}: expected a list of non-zero numbers")
    out: set[float] = set()
    for i, t in enumerate(raw):
        if isinstance(t, bool) or not isinstance(t, int | float) or not math.isfinite(t) or t == 0:
            raise ModelError(f"{where}[{i}]: expected a non-zero number, got {t!r}")
        out.add(float(t))
    return tuple(sorted(out))


def parse_groups(
    raw: object, overall_half_life_ms: int, default_bands: tuple[Band, ...], first_index: int
) -> tuple[tuple[ScoreGroup, ...], tuple[EngagementRule, ...]]:
    """``engagement.groups``: the groups, in file order, and their rules (``group`` set), in group
    then rule order. ``first_index``: how many rules of no group come before (rule indexes in
    error messages stay the file's)."""
    if raw is None:
        return (), ()
    if not isinstance(raw, list):
        raise ModelError("engagement.groups: expected a list of groups")
    groups: list[ScoreGroup] = []
    rules: list[EngagementRule] = []
    seen: set[str] = set()
    for i, item in enumerate(raw):
        where = f"engagement.groups[{i}]"
        if not isinstance(item, Mapping):
            raise ModelError(f"{where}: a group is a mapping with 'id' and 'rules'")
        group_id = item.get("id")
        if not isinstance(group_id, str) or not GROUP_ID.match(group_id):
            raise ModelError(f"{where}.id: expected a lower-case id such as 'analytics-suite', got {group_id!r}")
        if group_id in seen:
            raise ModelError(f"{where}.id: group {group_id!r} is declared twice")
        seen.add(group_id)
        where = f"engagement group {group_id!r}"
        unknown = set(item) - _KEYS
        if unknown:
            raise ModelError(
                f"{where}: unknown key(s) {sorted(map(str, unknown))}; allowed: {', '.join(sorted(_KEYS))}"
            )
        half_life = (
            parse_duration_ms(item["half_life"], f"{where}.half_life")
            if item.get("half_life") is not None
            else overall_half_life_ms
        )
        weight = parse_number(item.get("weight", 1), f"{where}.weight", minimum=0.0)
        limit = item.get("max")
        top = None
        if limit is not None:
            top = parse_number(limit, f"{where}.max")
            if top <= 0:
                raise ModelError(f"{where}.max: must be positive, got {limit!r}")
        raw_rules = item.get("rules")
        if not isinstance(raw_rules, list) or not raw_rules:
            raise ModelError(f"{where}.rules: expected a non-empty list of engagement rules")
        group_rules = [
            EngagementRule.parse(r, first_index + len(rules) + j, group=group_id, where=f"{where}.rules[{j}]")
            for j, r in enumerate(raw_rules)
        ]
        rules.extend(group_rules)
        groups.append(
            ScoreGroup(
                id=group_id,
                description=str(item.get("description", "")),
                half_life_ms=half_life,
                weight=weight,
                max=top,
                bands=parse_bands(item.get("bands"), f"{where}.bands", default_bands),
                thresholds=_thresholds(item.get("thresholds"), f"{where}.thresholds"),
                rule_ids=tuple(r.id for r in group_rules),
            )
        )
    return tuple(groups), tuple(rules)


def group_field(field: str) -> str | None:
    """The group id a guard field names (``engagement.<group>``), None for any other field."""
    return field[len("engagement.") :] if field.startswith("engagement.") else None


def check_group_fields(fields: Sequence[tuple[str, str]], groups: Mapping[str, ScoreGroup]) -> None:
    """Every ``(field, where)`` naming ``engagement.<group>`` names a declared group."""
    for field, where in fields:
        group_id = group_field(field)
        if group_id is not None and group_id not in groups:
            known = ", ".join(groups) or "none declared"
            raise ModelError(f"{where}: unknown score group {group_id!r} in {field!r}; groups: {known}")
