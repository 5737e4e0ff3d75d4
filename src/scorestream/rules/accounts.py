"""The model file's ``accounts`` section, parsed: buying roles and their weights, account fit rules
and bands, and the account stage graph."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from scorestream.errors import ModelError
from scorestream.rules.common import Band, Predicate, lookup, parse_bands, parse_number
from scorestream.rules.fit import FitRule

ROLES = ("decision_maker", "buyer", "specifier", "influencer", "gatekeeper")
OTHER = "other"
"""The role of a member no rule places: it adds engagement (at its weight) but no coverage."""
ROLE_ALIASES = {
    "decision maker": "decision_maker",
    "decision-maker": "decision_maker",
    "economic buyer": "buyer",
    "user": "specifier",
    "champion": "influencer",
}
SIGNALS = ("engagement", "fit", "coverage", "roles", "members", "engaged_members", "customers", "traits")


# --- configuration -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AnyOf:
    """Holds when at least one of its predicates holds (``{any: [...]}`` in a guard list)."""

    predicates: tuple[Predicate, ...]

    def test(self, source: Mapping[str, Any]) -> bool:
        return any(p.test(source) for p in self.predicates)


Guard = Predicate | AnyOf


def _guards(raw: object, where: str) -> tuple[Guard, ...]:
    if not isinstance(raw, list):
        raise ModelError(f"{where}: expected a list of predicates")
    out: list[Guard] = []
    for i, item in enumerate(raw):
        if isinstance(item, Mapping) and "any" in item:
            options = item["any"]
            if len(item) != 1 or not isinstance(options, list) or not options:
                raise ModelError(f"{where}[{i}]: 'any' takes a non-empty list of predicates and nothing else")
            out.append(AnyOf(tuple(Predicate.parse(p, f"{where}[{i}].any[{j}]") for j, p in enumerate(options))))
        else:
            out.append(Predicate.parse(item, f"{where}[{i}]"))
    return tuple(out)


def normalise_role(value: object) -> str | None:
    """A role name from a trait value (``"Decision Maker"``, ``"user"``, ``"buyer"``), or None."""
    if not isinstance(value, str):
        return None
    text = value.strip().casefold()
    text = ROLE_ALIASES.get(text, text).replace(" ", "_").replace("-", "_")
    return text if text in ROLES else None


@dataclass(frozen=True, slots=True)
class RoleRule:
    """Members whose traits satisfy every predicate take ``role`` (rules are tried in model order)."""

    role: str
    when: tuple[Guard, ...]

    @classmethod
    def parse(cls, raw: object, index: int) -> RoleRule:
        where = f"accounts.roles[{index}]"
        if not isinstance(raw, Mapping):
            raise ModelError(f"{where}: a role rule is a mapping {{role: buyer, when: [...]}}")
        unknown = set(raw) - {"role", "when", "description"}
        if unknown:
            raise ModelError(f"{where}: unknown key(s) {sorted(unknown)}")
        role = raw.get("role")
        if role not in ROLES:
            raise ModelError(f"{where}: 'role' must be one of {', '.join(ROLES)}, got {role!r}")
        when = raw.get("when")
        if not isinstance(when, list) or not when:
            raise ModelError(f"{where} ({role}): 'when' must be a non-empty list of predicates")
        return cls(role=str(role), when=_guards(when, f"{where}.when"))


@dataclass(frozen=True, slots=True)
class AccountTransition:
    """``from`` stages (``None``: any stage but ``to``) -> ``to`` when every guard holds over the
    account's signals (:func:`signals`)."""

    id: str
    sources: frozenset[str] | None
    to: str
    when: tuple[Guard, ...]

    def applies(self, stage: str, facts: Mapping[str, Any]) -> bool:
        if stage == self.to or (self.sources is not None and stage not in self.sources):
            return False
        return all(g.test(facts) for g in self.when)


def _transition(raw: object, index: int) -> AccountTransition:
    where = f"accounts.stages.transitions[{index}]"
    if not isinstance(raw, Mapping):
        raise ModelError(f"{where}: a transition is a mapping {{id, from, to, when}}")
    unknown = set(raw) - {"id", "from", "to", "when", "description"}
    if unknown:
        raise ModelError(f"{where}: unknown key(s) {sorted(unknown)}")
    tid = raw.get("id")
    if not isinstance(tid, str) or not tid:
        raise ModelError(f"{where}: needs a non-empty string 'id'")
    where = f"account transition {tid!r}"
    to = raw.get("to")
    if not isinstance(to, str) or not to:
        raise ModelError(f"{where}: 'to' must be a stage name")
    source = raw.get("from")
    sources: frozenset[str] | None
    if source == "*":
        sources = None
    else:
        items = [source] if isinstance(source, str) else source
        if not isinstance(items, list) or not items or not all(isinstance(s, str) and s for s in items):
            raise ModelError(f"{where}: 'from' must be a stage, a list of stages or '*'")
        sources = frozenset(items)
    guards = _guards(raw.get("when", []), f"{where}.when")
    for guard in guards:
        for pred in guard.predicates if isinstance(guard, AnyOf) else (guard,):
            if pred.field.split(".")[0] not in SIGNALS:
                raise ModelError(f"{where}: unknown signal {pred.field!r}; one of {', '.join(SIGNALS)} (traits.<name>)")
    return AccountTransition(id=tid, sources=sources, to=to, when=guards)


def needs_customer(guard: Guard) -> bool:
    """Whether ``guard`` holds only for an account with at least one customer member (``customers``
    is a count: ``gte`` above 0, ``gt`` 0 or more, ``eq`` above 0; an ``any`` of such guards)."""
    if isinstance(guard, AnyOf):
        return all(needs_customer(p) for p in guard.predicates)
    if guard.field != "customers" or isinstance(guard.value, bool):
        return False
    try:
        bound = float(guard.value)
    except (TypeError, ValueError):
        return False
    return (guard.op in ("gte", "eq") and bound > 0) or (guard.op == "gt" and bound >= 0)


DEFAULT_ACCOUNT_FIT_GRADES = (Band("A", 60), Band("B", 35), Band("C", 15), Band("D", -math.inf))
DEFAULT_ACCOUNT_ENGAGEMENT_BANDS = (Band("1", 100), Band("2", 50), Band("3", 15), Band("4", -math.inf))
DEFAULT_WEIGHTS: Mapping[str, float] = {
    "decision_maker": 1.5,
    "buyer": 1.25,
    "specifier": 1.0,
    "influencer": 0.75,
    "gatekeeper": 0.5,
    OTHER: 0.5,
}


def _parse_weights(given: object) -> dict[str, float]:
    """``accounts.weights``: role -> weight (at least 0) over the defaults."""
    weights = dict(DEFAULT_WEIGHTS)
    if not isinstance(given, Mapping):
        raise ModelError("accounts.weights: expected a mapping of role -> weight")
    for role, weight in given.items():
        if role not in (*ROLES, OTHER):
            raise ModelError(f"accounts.weights: unknown role {role!r}; one of {', '.join((*ROLES, OTHER))}")
        weights[role] = parse_number(weight, f"accounts.weights.{role}", minimum=0.0)
    return weights


def _parse_fit(fit: object) -> dict[str, Any]:
    """``accounts.fit``: the ``fit_rules`` and ``fit_grades`` of :class:`AccountsConfig`."""
    if not isinstance(fit, Mapping) or set(fit) - {"rules", "grades"}:
        raise ModelError("accounts.fit: expected a mapping with 'rules' and/or 'grades'")
    fit_rules = fit.get("rules", [])
    if not isinstance(fit_rules, list):
        raise ModelError("accounts.fit.rules: expected a list of fit rules")
    parsed = []
    for i, rule in enumerate(fit_rules):
        try:
            parsed.append(FitRule.parse(rule, i))
        except ModelError as exc:
            raise ModelError(f"accounts.{exc}") from exc
    ids = [r.id for r in parsed]
    if len(set(ids)) != len(ids):
        raise ModelError(f"accounts.fit.rules: duplicate rule id(s) {sorted({i for i in ids if ids.count(i) > 1})}")
    return {
        "fit_rules": tuple(parsed),
        "fit_grades": parse_bands(fit.get("grades"), "accounts.fit.grades", DEFAULT_ACCOUNT_FIT_GRADES),
    }


def _parse_stages(stages: object) -> dict[str, Any]:
    """``accounts.stages``: the ``initial_stage`` (when given) and ``transitions`` of :class:`AccountsConfig`."""
    if not isinstance(stages, Mapping) or set(stages) - {"initial", "transitions"}:
        raise ModelError("accounts.stages: expected a mapping with 'initial' and 'transitions'")
    out: dict[str, Any] = {}
    if "initial" in stages:
        if not isinstance(stages["initial"], str) or not stages["initial"]:
            raise ModelError("accounts.stages.initial: expected a stage name")
        out["initial_stage"] = stages["initial"]
    transitions = stages.get("transitions", [])
    if not isinstance(transitions, list):
        raise ModelError("accounts.stages.transitions: expected a list of {id, from, to, when}")
    parsed = tuple(_transition(t, i) for i, t in enumerate(transitions))
    tids = [t.id for t in parsed]
    if len(set(tids)) != len(tids):
        raise ModelError(
            f"accounts.stages.transitions: duplicate id(s) {sorted({i for i in tids if tids.count(i) > 1})}"
        )
    out["transitions"] = parsed
    return out


@dataclass(frozen=True, slots=True)
class AccountsConfig:
    """The model file's ``accounts`` section (every key optional)."""

    role_trait: str = "buying_role"
    roles: tuple[RoleRule, ...] = ()
    weights: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_WEIGHTS))
    engaged_member: float = 10.0
    fit_rules: tuple[FitRule, ...] = ()
    fit_grades: tuple[Band, ...] = DEFAULT_ACCOUNT_FIT_GRADES
    engagement_bands: tuple[Band, ...] = DEFAULT_ACCOUNT_ENGAGEMENT_BANDS
    initial_stage: str = "target"
    transitions: tuple[AccountTransition, ...] = ()

    @property
    def stages(self) -> tuple[str, ...]:
        """Every stage named by the graph, the initial one first."""
        seen = [self.initial_stage]
        for t in self.transitions:
            for s in (*sorted(t.sources or ()), t.to):
                if s not in seen:
                    seen.append(s)
        return tuple(seen)

    @property
    def customer_stages(self) -> tuple[str, ...]:
        """The stages of customer accounts, in :attr:`stages` order: every transition into them
        needs a customer member (:func:`needs_customer`; the default's ``became-customer``:
        ``customers >= 1``). The initial stage never is one (it is entered without a guard)."""
        out = []
        for stage in self.stages:
            into = [t for t in self.transitions if t.to == stage]
            if stage != self.initial_stage and into and all(any(map(needs_customer, t.when)) for t in into):
                out.append(stage)
        return tuple(out)

    @classmethod
    def from_dict(cls, raw: object) -> AccountsConfig:
        if raw is None:
            raw = {}
        if not isinstance(raw, Mapping):
            raise ModelError("'accounts' must be a mapping")
        unknown = set(raw) - {"role_trait", "roles", "weights", "engaged_member", "fit", "engagement", "stages"}
        if unknown:
            raise ModelError(f"accounts: unknown key(s) {sorted(unknown)}")
        kwargs: dict[str, Any] = {}
        if "role_trait" in raw:
            if not isinstance(raw["role_trait"], str) or not raw["role_trait"]:
                raise ModelError("accounts.role_trait: expected a trait name (dotted path)")
            kwargs["role_trait"] = raw["role_trait"]
        roles = raw.get("roles", [])
        if not isinstance(roles, list):
            raise ModelError("accounts.roles: expected a list of {role, when}")
        kwargs["roles"] = tuple(RoleRule.parse(r, i) for i, r in enumerate(roles))
        kwargs["weights"] = _parse_weights(raw.get("weights", {}))
        if "engaged_member" in raw:
            kwargs["engaged_member"] = parse_number(raw["engaged_member"], "accounts.engaged_member")
        kwargs.update(_parse_fit(raw.get("fit", {})))
        engagement = raw.get("engagement", {})
        if not isinstance(engagement, Mapping) or set(engagement) - {"bands"}:
            raise ModelError("accounts.engagement: expected a mapping with 'bands'")
        kwargs["engagement_bands"] = parse_bands(
            engagement.get("bands"), "accounts.engagement.bands", DEFAULT_ACCOUNT_ENGAGEMENT_BANDS
        )
        kwargs.update(_parse_stages(raw.get("stages", {})))
        parsed_t: tuple[AccountTransition, ...] = kwargs["transitions"]
        config = cls(**kwargs)
        reachable = {config.initial_stage, *(t.to for t in parsed_t)}
        for t in parsed_t:
            dead = sorted((t.sources or frozenset()) - reachable)
            if dead:
                raise ModelError(f"account transition {t.id!r}: 'from' names stage(s) {dead} no transition reaches")
        return config

    def role_of(self, traits: Mapping[str, Any]) -> str:
        """The explicit role trait when it names a role, else the first matching rule, else ``other``."""
        explicit = normalise_role(lookup(traits, self.role_trait))
        if explicit is not None:
            return explicit
        for rule in self.roles:
            if all(g.test(traits) for g in rule.when):
                return rule.role
        return OTHER

    def weight(self, role: str) -> float:
        return self.weights.get(role, self.weights.get(OTHER, 0.0))
