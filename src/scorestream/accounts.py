"""B2B accounts and buying centres: members' roles, role-weighted account engagement, account fit,
buying-centre coverage and an account stage graph with history.

A contact that made a ``group`` call belongs to the account of its latest one. The contacts stage
reports each member's current state to its account as a :class:`MemberUpdate` (role, engagement
at an event-time instant, fit, lifecycle stage, customer or not, the account traits of its latest
group call); the accounts stage folds them into an :class:`AccountState`. What the model file says
about accounts (roles, weights, fit, the stage graph) is :mod:`scorestream.rules.accounts`.

The rules this module keeps:

- **the member set does not depend on arrival order**: per member, the snapshot with the greater
  :func:`snapshot_key` wins (later ``at_ms``, then more evidence, then a departure, then content),
  so any interleaving or repetition of the same updates gives the same members and traits;
- account engagement is computed at read time: at ``t``, the sum over members of
  ``role_weight x score x 2^(-(t - at_ms)/H)`` with the model's engagement half-life;
- the account stage is advanced, in event time, whenever updates arrive: transitions are tried in
  model order from the current stage (several may chain) at the account's latest update instant.
  Stage history is path-dependent by design (hysteresis): it records what the account went
  through as updates arrived;
- **an erased member is gone**: an ``erased`` update (a regulation erased the contact,
  :func:`erased_update`) removes the member entirely and leaves only its
  :func:`scorestream.privacy.contact_key` (a hash) with the erased state's latest instant; any
  snapshot of that contact at or before it (a redelivered or late one) is refused, in any order,
  and a newer one (new collection after the erasure) is a new member. At most ``MAX_ERASED``
  keys are kept per account (the latest). Account traits an erased member's group calls set stay
  (they describe the company, not the person; a snapshot refused after the erasure adds none).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

from scorestream.privacy import contact_key
from scorestream.rfm import summary
from scorestream.rules.accounts import ROLES
from scorestream.rules.model import Model
from scorestream.scoring import band_of, engagement_now, fit_of, round_score
from scorestream.state import ContactState, decay

ACCOUNT_STATE_VERSION = 3
"""2: ``members_capped`` (the bounds: at most ``MAX_MEMBERS`` members and ``MAX_ACCOUNT_TRAITS`` traits);
3: ``erased`` (members a regulation erased, by contact key)."""
MAX_MEMBERS = 1_000
"""Members kept per account: those with the latest snapshots (ties by contact id)."""
MAX_ACCOUNT_TRAITS = 128
"""Account traits kept: the most recently set (ties by name)."""
MAX_ERASED = 1_000
"""Erased members' keys kept per account: those with the latest instants (ties by key)."""
MAX_CHAIN = 8
"""Most transitions taken in one evaluation (a graph with a cycle of always-true guards stops)."""


# --- what a contact reports ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MemberUpdate:
    """A contact's snapshot for its account, valid at event time ``at_ms``.

    ``member`` False says the contact left the account (it moved to another or merged into
    another contact). ``traits`` are the account traits of the contact's latest group call to
    this account, stamped ``traits_at`` (its timestamp and message id). ``erased`` True: a
    regulation erased the contact; ``at_ms`` is its erased state's latest instant and the rest is
    empty (:func:`erased_update`).
    """

    contact_id: str
    account_id: str
    at_ms: int
    evidence: int
    role: str
    score: float
    fit: float
    stage: str | None = None
    customer: bool = False
    member: bool = True
    traits: dict[str, Any] = field(default_factory=dict)
    traits_at: tuple[int, str] | None = None
    erased: bool = False


def erased_update(contact_id: str, account_id: str, at_ms: int) -> MemberUpdate:
    """The update that removes an erased contact from an account: every snapshot of it at or
    before ``at_ms`` (the erased state's latest instant) is gone for good."""
    return MemberUpdate(
        contact_id=contact_id,
        account_id=account_id,
        at_ms=at_ms,
        evidence=0,
        role="",
        score=0.0,
        fit=0.0,
        member=False,
        erased=True,
    )


def erased_updates(state: ContactState) -> list[MemberUpdate]:
    """An :func:`erased_update` for every account the contact belonged to or was grouped with."""
    accounts = set(state.groups)
    if state.account_id is not None:
        accounts.add(state.account_id)
    at_ms = state.last_seen_ms if state.last_seen_ms is not None else 0
    return [erased_update(state.contact_id, account, at_ms) for account in sorted(accounts)]


class Member(NamedTuple):
    """A member's latest snapshot as the account holds it."""

    role: str
    score: float
    at_ms: int
    evidence: int
    fit: float
    stage: str | None
    customer: bool
    active: bool


def snapshot_key(m: Member) -> tuple[Any, ...]:
    """Total order on snapshots of one member: the greater one wins.

    Later event time first; at the same instant (a late event changed the score at the contact's
    newest event) the one built from more evidence; then a departure over a stay; then content,
    so two replicas that saw the same snapshots in any order keep the same one.
    """
    return (m.at_ms, m.evidence, not m.active, m.role, m.score, m.fit, m.stage or "", m.customer)


def _evidence(state: ContactState) -> int:
    return len(state.hits) + len(state.folded_ids)


def _update(state: ContactState, model: Model, account_id: str, member: bool) -> MemberUpdate:
    at_ms = state.last_seen_ms if state.last_seen_ms is not None else 0
    config = model.accounts
    own = account_id == state.account_id and state.account_at is not None
    return MemberUpdate(
        contact_id=state.contact_id,
        account_id=account_id,
        at_ms=at_ms,
        evidence=_evidence(state),
        role=config.role_of(state.traits),
        score=engagement_now(state, model, at_ms),
        fit=fit_of(state, model, top=0).score,
        stage=state.journey.stage if state.journey is not None else None,
        customer=summary(state.value, at_ms).frequency > 0,
        member=member,
        traits=dict(state.account_traits) if own and member else {},
        traits_at=(state.account_at[0], state.account_at[1]) if own and member and state.account_at else None,
    )


def member_update(state: ContactState, model: Model) -> MemberUpdate | None:
    """What the contact reports to its account now; None when it has no account.

    A contact merged into another reports that it left (the contact it merged into reports the
    membership from then on).
    """
    if state.account_id is None:
        return None
    return _update(state, model, state.account_id, member=state.merged_into is None)


def member_updates(state: ContactState, model: Model) -> list[MemberUpdate]:
    """:func:`member_update` plus a departure for every other account the contact was grouped with
    (it moved: the latest group call decides the account)."""
    current = member_update(state, model)
    out = [] if current is None else [current]
    others = [g for g in state.groups if g != state.account_id]
    if others:
        base = current if current is not None else _update(state, model, others[0], member=False)
        for group in others:  # the same snapshot, scored once
            out.append(replace(base, account_id=group, member=False, traits={}, traits_at=None))
    return out


# --- the account -------------------------------------------------------------------------------


class AccountStageEntry(NamedTuple):
    """One stay in an account stage; ``exited_ms`` None while current; ``rule`` the transition that
    led into it (``initial`` for the first)."""

    stage: str
    entered_ms: int
    exited_ms: int | None
    rule: str


class AccountStageChange(NamedTuple):
    account_id: str
    before: str
    after: str
    at_ms: int
    rule: str


@dataclass(slots=True)
class AccountState:
    """An account (a table value; versioned by ``v``)."""

    account_id: str
    model_version: str
    v: int = ACCOUNT_STATE_VERSION
    traits: dict[str, Any] = field(default_factory=dict)
    trait_at: dict[str, tuple[int, str]] = field(default_factory=dict)
    members: dict[str, Member] = field(default_factory=dict)
    stage: str | None = None
    history: list[AccountStageEntry] = field(default_factory=list)
    updated_ms: int = 0
    # members or traits were left out at the bounds (the oldest ones)
    members_capped: bool = False
    # contact key (scorestream.privacy.contact_key) of an erased member -> its erased instant
    erased: dict[str, int] = field(default_factory=dict)


def _cap(state: AccountState) -> None:
    """Keep the ``MAX_MEMBERS`` members with the latest snapshot instants and the
    ``MAX_ACCOUNT_TRAITS`` most recently set traits (ties by id, by name). A function of the set
    of updates: whatever is left out is older than everything kept, so an older snapshot of it
    arriving later is left out again, and a newer one comes back in."""
    if len(state.members) > MAX_MEMBERS:
        ranked = sorted(state.members, key=lambda c: (state.members[c].at_ms, c), reverse=True)
        for contact_id in ranked[MAX_MEMBERS:]:
            del state.members[contact_id]
        state.members_capped = True
    if len(state.traits) > MAX_ACCOUNT_TRAITS:
        names = sorted(state.traits)
        names.sort(key=lambda k: tuple(state.trait_at[k]) if k in state.trait_at else (0, ""), reverse=True)
        for key in names[MAX_ACCOUNT_TRAITS:]:
            del state.traits[key]
            state.trait_at.pop(key, None)
        state.members_capped = True


def _erase_member(state: AccountState, update: MemberUpdate) -> bool:
    """An erased contact: its member entry goes (if not newer than the erasure), its key stays."""
    key = contact_key(update.contact_id)
    changed = False
    held = state.erased.get(key)
    if held is None or update.at_ms > held:
        state.erased[key] = update.at_ms
        changed = True
    member = state.members.get(update.contact_id)
    if member is not None and member.at_ms <= state.erased[key]:
        del state.members[update.contact_id]
        changed = True
    if len(state.erased) > MAX_ERASED:
        ranked = sorted(state.erased.items(), key=lambda kv: (kv[1], kv[0]), reverse=True)
        state.erased = dict(ranked[:MAX_ERASED])
    return changed


def _refused(state: AccountState, update: MemberUpdate) -> bool:
    """A snapshot of an erased member taken at or before its erasure."""
    if not state.erased:
        return False
    at = state.erased.get(contact_key(update.contact_id))
    return at is not None and update.at_ms <= at


def _merge_member(state: AccountState, update: MemberUpdate) -> bool:
    new = Member(
        role=update.role,
        score=update.score,
        at_ms=update.at_ms,
        evidence=update.evidence,
        fit=update.fit,
        stage=update.stage,
        customer=update.customer,
        active=update.member,
    )
    old = state.members.get(update.contact_id)
    if old is not None and snapshot_key(old) >= snapshot_key(new):
        return False
    state.members[update.contact_id] = new
    return True


def _merge_traits(state: AccountState, update: MemberUpdate) -> bool:
    """Per trait, the value from the latest group call wins (ties: the greater ``repr``)."""
    if update.traits_at is None:
        return False
    stamp = (update.traits_at[0], update.traits_at[1])
    changed = False
    for key, value in update.traits.items():
        current = state.trait_at.get(key)
        if current is None or (tuple(current), repr(state.traits.get(key))) < (stamp, repr(value)):
            state.traits[key] = value
            state.trait_at[key] = stamp
            changed = True
    return changed


def member_engagement(member: Member, half_life_ms: int, at_ms: int) -> float:
    """The member's engagement decayed from its snapshot to ``at_ms`` (never grown before it)."""
    return decay(member.score, member.at_ms, max(at_ms, member.at_ms), half_life_ms)


@dataclass(frozen=True, slots=True)
class MemberView:
    contact_id: str
    role: str
    engagement: float
    fit: float
    stage: str | None
    customer: bool
    engaged: bool
    at_ms: int


@dataclass(frozen=True, slots=True)
class AccountView:
    """An account read at ``as_of_ms``: scores, grade, buying-centre coverage, stage."""

    account_id: str
    as_of_ms: int
    engagement: float
    band: str
    fit: float
    fit_grade: str
    grade: str
    fit_rules: tuple[str, ...]
    roles_engaged: tuple[str, ...]
    missing_roles: tuple[str, ...]
    members: tuple[MemberView, ...]
    customers: int
    stage: str | None
    since_ms: int | None


def account_view(state: AccountState, model: Model, now_ms: int) -> AccountView:
    """The account at ``now_ms``: engagement = sum of role weight x member engagement decayed to
    ``now_ms``, fit from the account fit rules over its traits, the roles engaged (members whose
    decayed engagement reaches ``accounts.engaged_member``). Sums use ``math.fsum`` over members
    sorted by id, so the answer does not depend on the order updates arrived in."""
    config = model.accounts
    half_life = model.half_life_ms
    members: list[MemberView] = []
    weighted: list[float] = []
    for contact_id in sorted(state.members):
        m = state.members[contact_id]
        if not m.active:
            continue
        score = member_engagement(m, half_life, now_ms)
        weighted.append(config.weight(m.role) * score)
        members.append(
            MemberView(
                contact_id=contact_id,
                role=m.role,
                engagement=round_score(score),
                fit=m.fit,
                stage=m.stage,
                customer=m.customer,
                engaged=score >= config.engaged_member,
                at_ms=m.at_ms,
            )
        )
    engagement = math.fsum(weighted)
    matched = [r for r in config.fit_rules if all(p.test(state.traits) for p in r.when)]
    fit = math.fsum(r.points for r in matched)
    roles = tuple(r for r in ROLES if any(mv.engaged and mv.role == r for mv in members))
    band, letter = band_of(config.engagement_bands, engagement), band_of(config.fit_grades, fit)
    current = state.history[-1] if state.history else None
    return AccountView(
        account_id=state.account_id,
        as_of_ms=now_ms,
        engagement=round_score(engagement),
        band=band,
        fit=round_score(fit),
        fit_grade=letter,
        grade=f"{letter}{band}",
        fit_rules=tuple(r.id for r in matched),
        roles_engaged=roles,
        missing_roles=tuple(r for r in ROLES if r not in roles),
        members=tuple(members),
        customers=sum(1 for mv in members if mv.customer),
        stage=state.stage,
        since_ms=current.entered_ms if current is not None else None,
    )


def signals(view: AccountView, traits: Mapping[str, Any]) -> dict[str, Any]:
    """What account transitions test: ``engagement``, ``fit``, ``coverage`` (roles engaged),
    ``roles`` (their names), ``members``, ``engaged_members``, ``customers``, ``traits.<name>``."""
    return {
        "engagement": view.engagement,
        "fit": view.fit,
        "coverage": len(view.roles_engaged),
        "roles": list(view.roles_engaged),
        "members": len(view.members),
        "engaged_members": sum(1 for m in view.members if m.engaged),
        "customers": view.customers,
        "traits": traits,
    }


def _enter(state: AccountState, stage: str, at_ms: int, rule: str) -> None:
    if state.history:
        last = state.history[-1]
        state.history[-1] = last._replace(exited_ms=at_ms)
    state.history.append(AccountStageEntry(stage, at_ms, None, rule))
    state.stage = stage


def advance(state: AccountState, model: Model, at_ms: int) -> list[AccountStageChange]:
    """Take the transitions that apply at ``at_ms``, in model order, chaining (each stage at most
    once per call); returns the changes made."""
    config = model.accounts
    if state.stage is None:
        _enter(state, config.initial_stage, at_ms, "initial")
    changes: list[AccountStageChange] = []
    visited = {state.stage}
    for _ in range(MAX_CHAIN):
        facts = signals(account_view(state, model, at_ms), state.traits)
        stage = state.stage
        assert stage is not None
        taken = next((t for t in config.transitions if t.applies(stage, facts)), None)
        if taken is None or taken.to in visited:
            break
        _enter(state, taken.to, at_ms, taken.id)
        visited.add(taken.to)
        changes.append(AccountStageChange(state.account_id, stage, taken.to, at_ms, taken.id))
    return changes


def apply_member_updates(
    state: AccountState | None, account_id: str, updates: Iterable[MemberUpdate], model: Model
) -> tuple[AccountState, list[AccountStageChange]]:
    """Fold members' snapshots into the account and advance its stage at the account's latest
    update instant (event time). The member set and traits depend on the set of updates only
    (the traits of an erased member's snapshots: those applied before its erasure stay)."""
    if state is None:
        state = AccountState(account_id=account_id, model_version=model.version)
    state.model_version = model.version
    changed = False
    for update in updates:
        if update.account_id != account_id:
            raise ValueError(f"update for account {update.account_id!r} applied to {account_id!r}")
        if update.erased:
            changed |= _erase_member(state, update)
            continue
        if _refused(state, update):
            continue
        changed |= _merge_traits(state, update)
        changed |= _merge_member(state, update)
    _cap(state)
    state.v = ACCOUNT_STATE_VERSION
    latest = max((m.at_ms for m in state.members.values()), default=0)
    state.updated_ms = max(state.updated_ms, latest)
    if not changed and state.stage is not None:
        return state, []
    return state, advance(state, model, state.updated_ms)
