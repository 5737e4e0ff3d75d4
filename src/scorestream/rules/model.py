"""The scoring model: every section of the model file, parsed into one immutable :class:`Model`.

The YAML file is read by an adapter (``schemas.model_file``); the core only sees the parsed
mapping, so tests and replays build models from literals. Each section has its module under
:mod:`scorestream.rules`; this one assembles them and indexes the engagement rules for matching.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from scorestream.adjustments import is_rule as is_adjustment_rule
from scorestream.adjustments import rule_id as adjustment_rule
from scorestream.errors import ModelError
from scorestream.events import KINDS, Event
from scorestream.rules.accounts import AccountsConfig
from scorestream.rules.common import Band, parse_bands, parse_duration_ms
from scorestream.rules.consent import ConsentRules
from scorestream.rules.engagement import EngagementRule
from scorestream.rules.fit import FitRule
from scorestream.rules.groups import ScoreGroup, parse_groups
from scorestream.rules.interests import InterestRules
from scorestream.rules.lifecycle import Lifecycle, parse_lifecycle
from scorestream.rules.machine import MachineRules
from scorestream.rules.value import ValueConfig

DEFAULT_FIT_GRADES = (Band("A", 60.0), Band("B", 35.0), Band("C", 15.0), Band("D", -math.inf))
DEFAULT_ENGAGEMENT_BANDS = (Band("1", 60.0), Band("2", 30.0), Band("3", 10.0), Band("4", -math.inf))


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
    # the model file's ``consent`` section (None: every event is scored; scorestream.rules.consent)
    consent: ConsentRules | None = None
    # score groups (``engagement.groups``; scorestream.rules.groups), in file order; their rules
    # are in ``rules`` too. ``group_of``: rule id -> its group; ``weights``: rule id -> the weight
    # its points count with in the overall score, for the rules of a group weighing other than 1;
    # ``group_half_lives``: rule id -> its group's half-life, for the groups whose half-life is not
    # the overall one (their rules keep a second folded base, ``ContactState.group_base``)
    groups: tuple[ScoreGroup, ...] = ()
    group_of: Mapping[str, ScoreGroup] = field(default_factory=dict)
    weights: Mapping[str, float] = field(default_factory=dict)
    group_half_lives: Mapping[str, int] = field(default_factory=dict)
    # the model file's ``interests`` section (None: no interest profile; scorestream.rules.interests)
    interests: InterestRules | None = None
    # the model file's ``machine_traffic`` section (None: no e-mail event is judged a machine's;
    # scorestream.rules.machine, scorestream.machine)
    machine: MachineRules | None = None

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
        half_life_ms = parse_duration_ms(engagement.get("half_life", "14d"), "engagement.half_life")
        engagement_bands = parse_bands(engagement.get("bands"), "engagement.bands", DEFAULT_ENGAGEMENT_BANDS)
        groups, group_rules = parse_groups(engagement.get("groups"), half_life_ms, engagement_bands, len(rules))
        rules += group_rules
        _no_adjustment_ids(rules)
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
        value = raw.get("value") or {}
        if not isinstance(value, Mapping):
            raise ModelError("'value' must be a mapping")
        accounts = AccountsConfig.from_dict(raw.get("accounts"))
        lifecycle = parse_lifecycle(raw, [r.id for r in rules], {g.id: g for g in groups})
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
            half_life_ms=half_life_ms,
            rules=rules,
            fit_rules=fit_rules,
            fit_grades=parse_bands(
                fit.get("grades"),
                "fit.grades",
                DEFAULT_FIT_GRADES,
            ),
            engagement_bands=engagement_bands,
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
            consent=ConsentRules.parse(raw.get("consent")),
            groups=groups,
            group_of={r: g for g in groups for r in (*g.rule_ids, adjustment_rule(g.id))},
            weights={r: g.weight for g in groups if g.weight != 1.0 for r in (*g.rule_ids, adjustment_rule(g.id))},
            group_half_lives={
                r: g.half_life_ms
                for g in groups
                if g.half_life_ms != half_life_ms
                for r in (*g.rule_ids, adjustment_rule(g.id))
            },
            interests=InterestRules.parse(raw.get("interests")),
            machine=MachineRules.parse(raw.get("machine_traffic")),
        )

    def matching_rules(self, event: Event) -> list[EngagementRule]:
        """Rules whose match clause accepts ``event``, in model order."""
        name = event.event if event.kind == "track" else event.name
        candidates = self._by_key.get((event.kind, name))
        if candidates is None:
            candidates = self._wildcard.get(event.kind, ())
        return [r for r in candidates if r.matches(event)]

    def rule(self, rule_id: str) -> EngagementRule | None:
        """The engagement rule ``rule_id``; for an adjustment's built-in rule (``adjustment``,
        ``adjustment:<group>``; scorestream.adjustments) one matching nothing, for its description."""
        found = self.by_id.get(rule_id)
        if found is None and is_adjustment_rule(rule_id):
            return _adjustment_rule_of(rule_id)
        return found

    def group(self, group_id: str) -> ScoreGroup | None:
        """The score group ``group_id`` (``engagement.groups``), None if the model has none such."""
        for group in self.groups:
            if group.id == group_id:
                return group
        return None


def _no_adjustment_ids(rules: tuple[EngagementRule, ...]) -> None:
    """The adjustments' built-in rule ids are not a model's to take."""
    for rule in rules:
        if is_adjustment_rule(rule.id):
            raise ModelError(f"engagement rule {rule.id!r}: ids 'adjustment' and 'adjustment:*' are reserved")


def _adjustment_rule_of(rule_id: str) -> EngagementRule:
    """The built-in rule of manual adjustments: no event matches it, its points come from each
    adjustment (``scorestream.state.Caps``)."""
    group = rule_id.partition(":")[2] or None
    text = "Manual adjustment" + (f" ({group})" if group else "")
    return EngagementRule(id=rule_id, points=0.0, description=text, kinds=frozenset(), group=group)
