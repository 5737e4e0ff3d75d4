"""Fit rules: points for what a contact's traits say (title, industry, size)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from scorestream.errors import ModelError
from scorestream.rules.common import Predicate, parse_points


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
            points=parse_points(raw.get("points"), f"fit rule {rule_id!r}"),
            when=tuple(Predicate.parse(p, f"fit rule {rule_id!r}.when[{i}]") for i, p in enumerate(when)),
            description=str(raw.get("description", "")),
        )
