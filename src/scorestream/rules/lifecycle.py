"""The model file's ``lifecycle``, ``flags``, ``personas`` and ``triggers`` sections, parsed: the stage
graph, its transitions and timers, flag rules, personas and engagement thresholds.

What they mean over time (guards, checkpoints, timers coming due) is the walk's business:
:mod:`scorestream.walk` has the rules it keeps.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from scorestream.errors import ModelError
from scorestream.events import Event
from scorestream.rules.common import Predicate, parse_duration_ms, str_set
from scorestream.rules.engagement import EngagementRule
from scorestream.rules.groups import ScoreGroup, check_group_fields, group_field

NUMERIC_OPS = ("gt", "gte", "lt", "lte")
ORDER_TAG = "order"
REFUND_TAG = "refund"
ROUND_EPS = 5e-7  # half of the last decimal the API shows (scores are rounded to 6 decimals)


def score_edge(op: str, limit: float) -> float:
    """The raw score at which ``op limit`` flips for the score as the API shows it (rounded to 6
    decimals), so a contact never appears at 20.0 yet below 20: ``gte``/``lt`` flip at
    ``limit - 0.5e-6``, ``gt``/``lte`` at ``limit + 0.5e-6``."""
    return limit - ROUND_EPS if op in ("gte", "lt") else limit + ROUND_EPS


# --- configuration -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FlagRule:
    """Raises ``flag`` with ``reason``: from the latest traits (``when``) or from the first event
    matching ``match`` (an engagement-rule match clause without ``where``) and ``event_where``
    (its ``where`` predicates over the event's properties, plus ``user_agent``)."""

    id: str
    flag: str
    reason: str
    when: tuple[Predicate, ...] = ()
    match: EngagementRule | None = None
    event_where: tuple[Predicate, ...] = ()

    def matches(self, event: Event) -> bool:
        if self.match is None or not self.match.matches(event):
            return False
        if not self.event_where:
            return True
        source = dict(event.traits if event.kind in ("identify", "group") else event.properties)
        source["user_agent"] = event.user_agent
        return all(p.test(source) for p in self.event_where)


@dataclass(frozen=True, slots=True)
class Persona:
    id: str
    when: tuple[Predicate, ...]
    description: str = ""


@dataclass(frozen=True, slots=True)
class StageTransition:
    """Moves a contact from one of ``sources`` (None: any stage) to ``to`` when its guards hold at a
    checkpoint that is one of ``on`` (any checkpoint when empty)."""

    id: str
    to: str
    sources: frozenset[str] | None
    on: frozenset[str]
    guards: tuple[Predicate, ...]
    engagement_guards: tuple[Predicate, ...]
    static_guards: tuple[Predicate, ...]
    description: str = ""


@dataclass(frozen=True, slots=True)
class Timer:
    """Due ``after`` the latest ``start`` event unless a ``cancel`` event came in between; emits
    the trigger ``emit`` when it fires. Events are rule ids, ``order`` or ``refund``."""

    id: str
    start: frozenset[str]
    cancel: frozenset[str]
    after_ms: int
    emit: str | None = None


@dataclass(frozen=True, slots=True)
class Lifecycle:
    initial: str
    stages: tuple[str, ...]
    descriptions: Mapping[str, str]
    qualified: frozenset[str]
    customer_stage: str | None
    customer_stages: frozenset[str]
    disqualified: str | None
    transitions: tuple[StageTransition, ...]
    by_source: Mapping[str, tuple[StageTransition, ...]]
    timers: tuple[Timer, ...]
    thresholds: tuple[float, ...]
    flags: tuple[FlagRule, ...]
    personas: tuple[Persona, ...]

    flag_rules: Mapping[str, FlagRule]
    timer_of: Mapping[str, Timer]
    event_flags: tuple[FlagRule, ...]
    # per stage: the raw scores at which a threshold or an engagement guard of a transition out
    # of it flips (a walk between events skips the search when the decay passes none of them)
    edges: Mapping[str, tuple[float, ...]]
    threshold_guards: tuple[tuple[float, Predicate], ...]
    uses_monetary: bool
    # the score groups the walk follows (model order): those with thresholds or named by a guard
    # (``engagement.<group>``); per stage, per such group, the raw scores at which one of its
    # thresholds or a guard on it of a transition out of the stage flips
    watched: tuple[ScoreGroup, ...] = ()
    group_edges: Mapping[str, Mapping[str, tuple[float, ...]]] = field(default_factory=dict)


def _mapping(raw: object, where: str) -> Mapping[str, Any]:
    if not isinstance(raw, Mapping):
        raise ModelError(f"{where}: expected a mapping")
    return raw


def _list(raw: object, where: str) -> list[Any]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise ModelError(f"{where}: expected a list")
    return raw


def _ident(raw: object, where: str) -> str:
    if not isinstance(raw, str) or not raw:
        raise ModelError(f"{where}: expected a non-empty string id")
    return raw


def _names(raw: object, where: str) -> frozenset[str]:
    """A name or a list of names (none when absent)."""
    return str_set(raw, where) or frozenset()


def _predicates(raw: object, where: str) -> tuple[Predicate, ...]:
    return tuple(Predicate.parse(p, f"{where}[{i}]") for i, p in enumerate(_list(raw, where)))


def _parse_flags(raw: object) -> tuple[FlagRule, ...]:
    rules = []
    for i, item in enumerate(_list(raw, "flags")):
        at = f"flags[{i}]"
        item = _mapping(item, at)
        rule_id = _ident(item.get("id"), f"{at}.id")
        at = f"flag rule {rule_id!r}"
        flag = _ident(item.get("flag", rule_id), f"{at}.flag")
        when = _predicates(item.get("when"), f"{at}.when")
        match = None
        event_where: tuple[Predicate, ...] = ()
        if "match" in item:
            clause = dict(_mapping(item["match"], f"{at}.match"))
            agent = clause.pop("user_agent", None)
            where = list(_list(clause.pop("where", None), f"{at}.match.where"))
            if agent is not None:
                where.append({"field": "user_agent", "op": "matches", "value": agent})
            event_where = _predicates(where, f"{at}.match.where")
            match = EngagementRule.parse({"id": rule_id, "points": 0, "match": clause}, i)
        if bool(when) == (match is not None):
            raise ModelError(f"{at}: give either 'when' (trait predicates) or 'match' (an event clause)")
        rules.append(FlagRule(rule_id, flag, str(item.get("reason", flag)), when, match, event_where))
    ids = [r.id for r in rules]
    if len(set(ids)) != len(ids):
        raise ModelError("flags: rule ids must be unique")
    return tuple(rules)


def _parse_personas(raw: object) -> tuple[Persona, ...]:
    out = []
    for i, item in enumerate(_list(raw, "personas")):
        item = _mapping(item, f"personas[{i}]")
        persona_id = _ident(item.get("id"), f"personas[{i}].id")
        when = _predicates(item.get("when"), f"persona {persona_id!r}.when")
        if not when:
            raise ModelError(f"persona {persona_id!r}: 'when' must be a non-empty list of predicates")
        for p in when:
            if group_field(p.field) is not None:
                raise ModelError(
                    f"persona {persona_id!r}.when: {p.field!r} is a score group's score, which only "
                    "transitions read (a persona reads engagement, fit, traits, ...)"
                )
        out.append(Persona(persona_id, when, str(item.get("description", ""))))
    return tuple(out)


def _parse_thresholds(raw: object) -> list[float]:
    triggers = _mapping(raw or {}, "triggers")
    thresholds = []
    for i, t in enumerate(_list(triggers.get("engagement_thresholds"), "triggers.engagement_thresholds")):
        if isinstance(t, bool) or not isinstance(t, int | float) or not math.isfinite(t) or t == 0:
            raise ModelError(f"triggers.engagement_thresholds[{i}]: expected a non-zero number")
        thresholds.append(float(t))
    return thresholds


class _Stages:
    """The ``lifecycle.stages`` list: names in order, descriptions, the qualified ones."""

    def __init__(self, raw: object) -> None:
        self.names: list[str] = []
        self.descriptions: dict[str, str] = {}
        self.qualified: set[str] = set()
        for i, item in enumerate(_list(raw, "lifecycle.stages")):
            if isinstance(item, str):
                item = {"id": item}
            item = _mapping(item, f"lifecycle.stages[{i}]")
            stage = _ident(item.get("id"), f"lifecycle.stages[{i}].id")
            if stage in self.descriptions:
                raise ModelError(f"lifecycle.stages: {stage!r} is listed twice")
            self.names.append(stage)
            self.descriptions[stage] = str(item.get("description", ""))
            if item.get("qualified"):
                self.qualified.add(stage)
        if not self.names:
            raise ModelError("lifecycle.stages: at least one stage is needed")

    def known(self, name: object, where: str) -> str:
        """``name``, a stage of the list (else ``ModelError`` naming ``where``)."""
        stage = _ident(name, where)
        if stage not in self.descriptions:
            raise ModelError(f"{where}: unknown stage {stage!r}; stages: {', '.join(self.names)}")
        return stage


def _parse_timer(raw: object, index: int) -> Timer:
    item = _mapping(raw, f"lifecycle.timers[{index}]")
    timer_id = _ident(item.get("id"), f"lifecycle.timers[{index}].id")
    at = f"timer {timer_id!r}"
    emit = item.get("emit")
    if emit is not None and emit not in ("cart.abandoned", "customer.lapsed"):
        raise ModelError(f"{at}.emit: one of cart.abandoned, customer.lapsed")
    start = _names(item.get("start"), f"{at}.start")
    if not start:
        raise ModelError(f"{at}.start: name the events that start it")
    return Timer(
        timer_id,
        start,
        _names(item.get("cancel", []), f"{at}.cancel"),
        parse_duration_ms(item.get("after"), f"{at}.after"),
        emit,
    )


def is_score_field(name: str) -> bool:
    """A guard field that decays between checkpoints: ``engagement`` or ``engagement.<group>``."""
    return name == "engagement" or group_field(name) is not None


def _parse_transition(
    raw: object, index: int, stages: _Stages, events: set[str], groups: Mapping[str, ScoreGroup]
) -> StageTransition:
    """A transition whose ``events`` are among ``events`` (rule ids, ``order``, ``refund``, timer
    ids) and whose score guards name the overall score or one of ``groups``."""
    item = _mapping(raw, f"lifecycle.transitions[{index}]")
    tid = _ident(item.get("id"), f"lifecycle.transitions[{index}].id")
    at = f"transition {tid!r}"
    raw_from = item.get("from", "*")
    sources = (
        None if raw_from == "*" else frozenset(stages.known(s, f"{at}.from") for s in _names(raw_from, f"{at}.from"))
    )
    if any(not isinstance(k, str) for k in item) or "on" in item:
        raise ModelError(f"{at}: name its events with 'events:' (YAML reads a bare 'on' as true)")
    on = _names(item.get("events", []), f"{at}.events")
    if on - events:
        raise ModelError(f"{at}.events: unknown event(s) {sorted(on - events)}")
    guards = _predicates(item.get("when"), f"{at}.when")
    check_group_fields([(g.field, f"{at}.when") for g in guards], groups)
    for g in guards:
        if is_score_field(g.field) and g.op not in NUMERIC_OPS:
            raise ModelError(f"{at}: an engagement guard compares with gt, gte, lt or lte")
    return StageTransition(
        id=tid,
        to=stages.known(item.get("to"), f"{at}.to"),
        sources=sources,
        on=on,
        guards=guards,
        engagement_guards=tuple(g for g in guards if is_score_field(g.field)),
        static_guards=tuple(g for g in guards if not is_score_field(g.field)),
        description=str(item.get("description", "")),
    )


def parse_lifecycle(
    raw: Mapping[str, Any], rule_ids: Iterable[str], groups: Mapping[str, ScoreGroup] | None = None
) -> Lifecycle | None:
    """The ``lifecycle``, ``flags``, ``personas`` and ``triggers`` sections of a model file
    (``groups``: the model's score groups, which guards and thresholds may name)."""
    groups = groups or {}
    flags = _parse_flags(raw.get("flags"))
    personas = _parse_personas(raw.get("personas"))
    thresholds = _parse_thresholds(raw.get("triggers"))
    section = raw.get("lifecycle")
    if section is None:
        if flags or personas or thresholds:
            raise ModelError("flags, personas and triggers need a 'lifecycle' section")
        for group in groups.values():
            if group.thresholds:
                raise ModelError(
                    f"engagement group {group.id!r}.thresholds: threshold triggers need a 'lifecycle' section"
                )
        return None
    section = _mapping(section, "lifecycle")
    stages = _Stages(section.get("stages"))
    initial = stages.known(section.get("initial", stages.names[0]), "lifecycle.initial")
    customer = _mapping(section.get("customer") or {}, "lifecycle.customer")
    customer_stage = stages.known(customer["stage"], "lifecycle.customer.stage") if "stage" in customer else None
    customer_stages = frozenset(
        stages.known(s, "lifecycle.customer.stages")
        for s in _names(customer.get("stages", []), "lifecycle.customer.stages")
    )
    if customer_stage is not None:
        customer_stages |= {customer_stage}
    disqualified = (
        stages.known(section["disqualified"], "lifecycle.disqualified") if "disqualified" in section else None
    )
    timers = [_parse_timer(item, i) for i, item in enumerate(_list(section.get("timers"), "lifecycle.timers"))]
    events = {*rule_ids, ORDER_TAG, REFUND_TAG, *(t.id for t in timers)}
    for timer in timers:
        unknown = (timer.start | timer.cancel) - events
        if unknown:
            raise ModelError(f"timer {timer.id!r}: unknown event(s) {sorted(unknown)}")
    transitions = [
        _parse_transition(item, i, stages, events, groups)
        for i, item in enumerate(_list(section.get("transitions"), "lifecycle.transitions"))
    ]
    ids = [t.id for t in transitions] + [t.id for t in timers]
    if len(set(ids)) != len(ids):
        raise ModelError("lifecycle: transition and timer ids must be unique")
    names = stages.names
    by_source = {s: tuple(t for t in transitions if t.sources is None or s in t.sources) for s in names}
    watched = _watched(groups, transitions)
    return Lifecycle(
        initial=initial,
        stages=tuple(names),
        descriptions=stages.descriptions,
        qualified=frozenset(stages.qualified),
        customer_stage=customer_stage,
        customer_stages=customer_stages,
        disqualified=disqualified,
        transitions=tuple(transitions),
        by_source=by_source,
        timers=tuple(timers),
        thresholds=tuple(sorted(set(thresholds))),
        flags=flags,
        personas=personas,
        flag_rules={f.id: f for f in flags},
        timer_of={t.id: t for t in timers},
        event_flags=tuple(f for f in flags if f.match is not None),
        uses_monetary=any(g.field == "monetary" for t in transitions for g in t.guards)
        or any(g.field == "monetary" for p in personas for g in p.when),
        threshold_guards=tuple((t, Predicate("engagement", "gte", t)) for t in sorted(set(thresholds))),
        edges={
            s: tuple(
                sorted(
                    {score_edge("gte", t) for t in thresholds}
                    | {
                        score_edge(g.op, float(g.value))
                        for tr in by_source[s]
                        for g in tr.engagement_guards
                        if g.field == "engagement"
                    }
                )
            )
            for s in names
        },
        watched=watched,
        group_edges={s: _group_edges(watched, by_source[s]) for s in names},
    )


def _watched(groups: Mapping[str, ScoreGroup], transitions: Iterable[StageTransition]) -> tuple[ScoreGroup, ...]:
    """The groups with thresholds or named by a transition's guard, in model order."""
    named = {group_field(g.field) for t in transitions for g in t.engagement_guards}
    return tuple(g for g in groups.values() if g.thresholds or g.id in named)


def _group_edges(
    watched: tuple[ScoreGroup, ...], transitions: Iterable[StageTransition]
) -> Mapping[str, tuple[float, ...]]:
    """Per watched group, the raw scores at which its thresholds or its guards of ``transitions`` flip."""
    guards = [g for t in transitions for g in t.engagement_guards]
    return {
        group.id: tuple(
            sorted(
                {score_edge("gte", t) for t in group.thresholds}
                | {score_edge(g.op, float(g.value)) for g in guards if group_field(g.field) == group.id}
            )
        )
        for group in watched
    }


# --- events --------------------------------------------------------------------------------------


def flag_event(lc: Lifecycle, event: Event) -> list[str]:
    """Ids of the event-based flag rules ``event`` matches."""
    return [rule.id for rule in lc.event_flags if rule.matches(event)]
