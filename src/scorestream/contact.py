"""How events and merges change a contact's state (:mod:`scorestream.state`).

The rule this module keeps: **the state depends on the set of events, not on the order or the
number of times they arrive.** Events are kept as hits sorted by ``(timestamp, messageId)``; caps
and once-only awards are evaluated over that order; a message id already present counts once.
Scored events are kept in full for ``fold_after`` (the allowed lateness, default 30 days) behind
the contact's newest event and at most ``max_hits`` of them; older ones fold into a decayed
per-rule base, capped awards still inside their window are kept for the caps, and the message ids
of the last ``dedupe_memory`` folded events are remembered for deduplication. Within those
bounds the state is exactly order-independent; an event arriving later than that is still
counted, with its cap and once-only award judged against what was kept.
"""

from __future__ import annotations

import json
from bisect import bisect_left, bisect_right
from collections.abc import Iterable
from typing import Any

from scorestream.adjustments import CHANNEL as ADJUSTMENT_CHANNEL
from scorestream.adjustments import MAX_KEPT as MAX_ADJUSTMENTS
from scorestream.adjustments import Adjustment, Reverted, combine, earliest, is_rule
from scorestream.adjustments import read as read_adjustment
from scorestream.adjustments import rule_id as adjustment_rule_id
from scorestream.events import Event
from scorestream.interests import absorb_interests, fold_interests, interest_gate
from scorestream.machine import add_facts, fact_of, merge_logs, reclassified
from scorestream.rfm import (
    apply_purchase_events,
    bound_ledger,
    fold_cut,
    fold_ledger,
    merge_values,
)
from scorestream.rules.consent import granted_categories
from scorestream.rules.lifecycle import flag_event
from scorestream.rules.model import Model
from scorestream.state import (
    STATE_VERSION,
    ContactState,
    Hit,
    decay,
    effective_points,
    machine_verdicts,
    new_contact,
    unscored,
)
from scorestream.walk import anchor_at

MAX_ANONYMOUS_IDS = 64
"""Anonymous ids kept per contact: the most recently seen (ties by id). One left out still
resolves through the identity table, which is keyed by anonymous id."""
MAX_GROUPS = 32
MAX_TRAITS = 128
"""Traits kept per contact (and account traits per group call): the most recently set, ``email`` first."""
MAX_TRAIT_KEY = 128
"""Longest trait name kept, in characters."""
MAX_TRAIT_BYTES = 512
"""Largest trait value kept, in bytes of compact JSON."""


def _seen_ids(state: ContactState) -> set[str]:
    ids = {h.mid for h in state.hits}
    ids.update(state.folded_ids)
    return ids


def _set_trait(state: ContactState, key: str, value: Any, stamp: tuple[int, str]) -> bool:
    """Latest event time wins; True when the trait's value changed."""
    current = state.trait_at.get(key)
    if current is None or tuple(current) < stamp:
        changed = key not in state.traits or state.traits[key] != value
        state.traits[key] = value
        state.trait_at[key] = stamp
        return changed
    return False


def _trait_fits(key: str, value: Any) -> bool:
    """A trait within the bounds: a name of at most ``MAX_TRAIT_KEY`` characters, a value of at
    most ``MAX_TRAIT_BYTES`` bytes as compact JSON."""
    if len(key) > MAX_TRAIT_KEY:
        return False
    if isinstance(value, str) and len(value) * 4 <= MAX_TRAIT_BYTES - 2:
        return True  # short enough whatever its characters
    if value is None or isinstance(value, bool | int | float):
        return True
    try:
        size = len(json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str).encode("utf-8", "replace"))
    except (ValueError, TypeError, RecursionError):
        return False
    return size <= MAX_TRAIT_BYTES


_READ_TRAITS: dict[str, frozenset[str]] = {}


def read_traits(model: Model) -> frozenset[str]:
    """The trait names the model reads (fit rules, and ``traits.<name>`` in lifecycle guards,
    flags and personas; the accounts' role trait): kept before any other past the bound, so a
    flood of other traits never changes fit, grade, stage or role."""
    names = _READ_TRAITS.get(model.version)
    if names is None:
        fields = [p.field for rule in model.fit_rules for p in rule.when]
        lc = model.lifecycle
        if lc is not None:
            scoped = [p.field for t in lc.transitions for p in (*t.guards, *t.static_guards)]
            scoped += [p.field for rule in lc.flags for p in rule.when]
            scoped += [p.field for persona in lc.personas for p in persona.when]
            fields += [f.removeprefix("traits.") for f in scoped if f.startswith("traits.")]
        fields.append(model.accounts.role_trait)
        names = frozenset(f.split(".", 1)[0] for f in fields)
        _READ_TRAITS[model.version] = names
    return names


def _trait_rank(keys: Iterable[str], stamp: dict[str, tuple[int, str]], read: frozenset[str]) -> list[str]:
    """``email`` first, then the traits the model reads, then the most recently set, ties by
    name: the order in which traits are kept."""
    ranked = sorted(keys)
    ranked.sort(key=lambda k: tuple(stamp[k]) if k in stamp else (0, ""), reverse=True)  # stable: ties keep names
    ranked.sort(key=lambda k: (k != "email", k not in read))
    return ranked


def _cap_traits(state: ContactState, model: Model) -> None:
    """Keep the ``MAX_TRAITS`` first traits of :func:`_trait_rank`. A function of the set of
    identify calls (and the model): a trait left out ranks below every kept one, so it stays out
    whenever it arrives, and comes back only with a newer value."""
    if len(state.traits) <= MAX_TRAITS:
        return
    for key in _trait_rank(state.traits, state.trait_at, read_traits(model))[MAX_TRAITS:]:
        del state.traits[key]
        state.trait_at.pop(key, None)
    state.traits_capped = True


def _bounded_traits(state: ContactState, traits: dict[str, Any]) -> dict[str, Any]:
    """Account traits of a group call within the bounds (the first ``MAX_TRAITS`` names that fit)."""
    kept = {k: traits[k] for k in sorted(traits) if _trait_fits(k, traits[k])}
    if len(kept) > MAX_TRAITS:
        kept = {k: kept[k] for k in sorted(kept)[:MAX_TRAITS]}
    if len(kept) < len(traits):
        state.traits_capped = True
    return kept


def _see_anonymous(state: ContactState, anon: str, stamp: tuple[int, str]) -> None:
    """Remember ``anon`` as seen at ``stamp`` and keep the ``MAX_ANONYMOUS_IDS`` most recently seen
    (ties by id; ids of a version 1 state have no stamp and count as the oldest). The list stays
    sorted by id. A function of the set of events, as for traits (:func:`_cap_traits`)."""
    current = state.anonymous_at.get(anon)
    if current is None or tuple(current) < stamp:
        state.anonymous_at[anon] = stamp
    if anon not in state.anonymous_ids:
        state.anonymous_ids.append(anon)
        state.anonymous_ids.sort()
    if len(state.anonymous_ids) > MAX_ANONYMOUS_IDS:
        ranked = sorted(state.anonymous_ids)
        ranked.sort(key=lambda k: tuple(state.anonymous_at.get(k, (0, ""))), reverse=True)  # stable
        for gone in ranked[MAX_ANONYMOUS_IDS:]:
            state.anonymous_ids.remove(gone)
            state.anonymous_at.pop(gone, None)


def _see_consent(state: ContactState, preferences: dict[str, bool], stamp: tuple[int, str]) -> None:
    """The contact's current consent: the latest consent object by (timestamp, message id)."""
    if state.consent_at is None or tuple(state.consent_at) < stamp:
        state.consent, state.consent_at = dict(preferences), stamp


def _log_consent(state: ContactState, ts: int, granted: tuple[str, ...]) -> None:
    """Add a consent to the timeline at ``ts``: one entry an instant, holding what every consent
    seen at that instant grants (a function of the set of consents, whatever their order)."""
    log = state.consent_log
    i = bisect_right(log, ts, key=lambda e: e[0])
    if i and log[i - 1][0] == ts:
        kept = log[i - 1][1]
        if kept != granted:
            log[i - 1] = (ts, tuple(c for c in kept if c in granted))
    else:
        log.insert(i, (ts, granted))


def _consent_cut(state: ContactState, model: Model) -> int | None:
    """Past ``max_hits`` entries the timeline keeps the newest ``max_hits - max_hits // 8``: the
    instant of the oldest kept one, before which hits fold (their consent settled)."""
    log = state.consent_log
    if model.consent is None or len(log) <= model.max_hits:
        return None
    return log[len(log) - (model.max_hits - model.max_hits // 8)][0]


def _settle_consent(state: ContactState, before_ts: int) -> None:
    """Drop the timeline's entries older than its latest one at or before ``before_ts`` (no kept
    hit is that old: the latest of them decides every hit from ``before_ts`` on)."""
    log = state.consent_log
    i = bisect_right(log, before_ts, key=lambda e: e[0])
    if i > 1:
        del log[: i - 1]


def _add_unique(items: list[str], value: str, limit: int) -> None:
    if value not in items:
        items.append(value)
        items.sort()
        del items[limit:]


def _overflow(hits: list[Hit], model: Model) -> int:
    """How many of the oldest hits fold into the base now (see :func:`_normalise`)."""
    overflow = 0
    if len(hits) > model.max_hits:
        overflow = len(hits) - model.max_hits + model.max_hits // 8
    if hits:
        horizon = hits[-1].ts - model.fold_after_ms
        if overflow > 0 or hits[0].ts < horizon - model.fold_after_ms // 8:
            while overflow < len(hits) and hits[overflow].ts < horizon:
                overflow += 1
    return overflow


def _anchor(state: ContactState, overflow: int, cut: tuple[int, str] | None) -> tuple[int, str] | None:
    """Where the journey settles before the fold: the last folded hit, or the ledger's cut when
    later (and not settled already)."""
    hits = state.hits
    anchor: tuple[int, str] | None = None
    if overflow > 0:
        anchor = (hits[overflow - 1].ts, hits[overflow - 1].mid)
    if cut is not None:
        settled = state.journey.anchor if state.journey is not None else None
        if (anchor is None or cut > anchor) and (settled is None or (settled.at_ms, settled.mid) < cut):
            anchor = cut
    return anchor


def _fold_hits(state: ContactState, model: Model, overflow: int) -> None:
    """Fold the ``overflow`` oldest hits into the decayed per-rule base, keeping their once-only
    awards, the capped awards still inside their window and their message ids (deduplication)."""
    earned = effective_points(state, model)
    denied = unscored(state, model)[0]  # consent denied, or a machine's at 0 points
    ref = max(state.base_ms, state.hits[overflow - 1].ts)
    half_life = model.half_life_ms
    base = {k: decay(v, state.base_ms, ref, half_life) for k, v in state.base.items()}
    group_base = _decayed_group_base(state.group_base, state.base_ms, ref, model)
    group_half_lives = model.group_half_lives
    once = set(state.base_once)
    capped = {k: list(v) for k, v in state.capped.items()}
    for hit, hit_earned in zip(state.hits[:overflow], earned[:overflow], strict=True):
        for rule_id, value in hit_earned:
            if value:
                base[rule_id] = base.get(rule_id, 0.0) + decay(value, hit.ts, ref, half_life)
                if rule_id in group_half_lives:
                    group_half = group_half_lives[rule_id]
                    group_base[rule_id] = group_base.get(rule_id, 0.0) + decay(value, hit.ts, ref, group_half)
                rule = model.rule(rule_id)
                if rule is not None and rule.once:
                    once.add(rule_id)
                if rule is not None and rule.cap_window_ms is not None:
                    capped.setdefault(rule_id, []).append((hit.ts, value))
        state.folded_ids.append(hit.mid)
        if hit.mid in state.adjustments:
            _fold_adjustment(state, hit, hit_earned)
        if denied and hit.mid in denied:
            continue  # no checkpoint of the walk: it starts no timer
        for rule_id in hit.rules:
            state.rule_last[rule_id] = max(state.rule_last.get(rule_id, hit.ts), hit.ts)
    state.capped = {}
    for rule_id, entries in capped.items():
        rule = model.rule(rule_id)
        window = rule.cap_window_ms if rule is not None and rule.cap_window_ms is not None else 0
        kept = sorted(e for e in entries if e[0] > ref - window)
        if kept:
            state.capped[rule_id] = kept
    state.base = base
    state.group_base = group_base
    state.base_ms = ref
    state.base_once = sorted(once)
    del state.hits[:overflow]
    if len(state.folded_ids) > model.dedupe_memory:
        del state.folded_ids[: len(state.folded_ids) - model.dedupe_memory]


def _decayed_group_base(group_base: dict[str, float], from_ms: int, to_ms: int, model: Model) -> dict[str, float]:
    """The second folded base (``ContactState.group_base``) decayed from ``from_ms`` to ``to_ms``,
    each rule at its group's half-life (a rule no longer in such a group is dropped: nothing
    reads it)."""
    half_lives = model.group_half_lives
    return {k: decay(v, from_ms, to_ms, half_lives[k]) for k, v in group_base.items() if k in half_lives}


def _normalise(state: ContactState, model: Model, resume_before: int | None = None) -> None:
    """Sort hits, fold the oldest beyond ``max_hits`` into the base, derive the email.

    Folding is done in steps, not one hit at a time: past ``max_hits`` the oldest are folded down
    to ``max_hits - max_hits // 8``, and hits older than ``fold_after`` are folded once the oldest
    is ``fold_after / 8`` beyond it. A busy contact thus folds every few dozen events instead of
    on every one (each fold settles the lifecycle's anchor, and the next walk starts from it).
    Hits are kept at least ``fold_after`` and at most ``max_hits``, as before.
    """
    state.v = STATE_VERSION  # written at the current version once the fold touched it
    overflow = _overflow(state.hits, model)
    # the purchase ledger folds its oldest orders past ``ValueConfig.max_orders``: the hits up to
    # the same point fold too and the journey settles there first, so no later walk starts
    # before orders it can no longer see
    cut = fold_cut(state.value, model.value) if state.value is not None else None
    if cut is not None:
        overflow = max(overflow, bisect_right(state.hits, cut, key=lambda h: (h.ts, h.mid)))
    consent_cut = _consent_cut(state, model)
    if consent_cut is not None:
        overflow = max(overflow, bisect_left(state.hits, consent_cut, key=lambda h: h.ts))
    anchor = _anchor(state, overflow, cut)
    if anchor is not None and model.lifecycle is not None:
        anchor_at(state, model, model.lifecycle, anchor[0], anchor[1], resume_before)
    if cut is not None and state.value is not None:
        state.value = fold_ledger(state.value, cut, model.value)
    elif state.value is not None and state.value.refunds:
        state.value = bound_ledger(state.value, model.value)
    if overflow > 0:
        settled = state.hits[overflow - 1].ts
        _fold_hits(state, model, overflow)
        _settle_consent(state, settled)
    if consent_cut is not None:
        _settle_consent(state, consent_cut)
    email = state.traits.get("email")
    state.email = email.strip().casefold() if isinstance(email, str) and email.strip() else None


def _see_event(state: ContactState, event: Event, model: Model) -> bool:
    """What any event tells about the contact: when it was seen, its anonymous id, its traits
    (``identify``), its account (``group``). True when a trait changed value."""
    ts = event.timestamp_ms
    changed = False
    if state.first_seen_ms is None or ts < state.first_seen_ms:
        state.first_seen_ms = ts
    if state.last_seen_ms is None or ts > state.last_seen_ms:
        state.last_seen_ms = ts
    if event.anonymous_id:
        _see_anonymous(state, event.anonymous_id, (ts, event.message_id))
    if event.kind == "identify" and event.traits:
        stamp = (ts, event.message_id)
        for key, value in event.traits.items():
            if not _trait_fits(key, value):
                state.traits_capped = True
            elif _set_trait(state, key, value, stamp):
                changed = True
        _cap_traits(state, model)
    elif event.kind == "group" and event.group_id:
        _add_unique(state.groups, event.group_id, MAX_GROUPS)
        stamp = (ts, event.message_id)
        if state.account_at is None or tuple(state.account_at) < stamp:
            state.account_id, state.account_at = event.group_id, stamp
            state.account_traits = _bounded_traits(state, event.traits)
    return changed


def apply_events(
    state: ContactState | None,
    contact_id: str,
    events: Iterable[Event],
    model: Model,
    resume_before: int | None = None,
) -> ContactState:
    """Fold ``events`` into the contact's state and return it (the input may be reused).

    Replaying the same events, in any order, any number of times, gives the same state.
    The caller forwards events for contacts that were merged away (``merged_into``).
    ``resume_before``: what :func:`scorestream.fold.step` knows of the walk (see
    :func:`scorestream.walk.walk`), used if old hits fold away (unless a trait changes value); None (a caller that does not know) is
    always right, only slower.
    """
    if state is None:
        state = new_contact(contact_id, model)
    seen: set[str] | None = None
    added: list[Hit] = []
    events = list(events)
    value_events = model.value.order_events + model.value.refund_events
    if any(e.kind == "track" and e.event in value_events for e in events):
        state.value = apply_purchase_events(state.value, events, model.value, fold=False)
    lifecycle = model.lifecycle
    if lifecycle is not None and lifecycle.flags:
        for event in events:
            for rule_id in flag_event(lifecycle, event):
                _earliest(state.flag_hits, rule_id, (event.timestamp_ms, event.message_id))
    resume_before = log_email_facts(state, events, model, resume_before)
    consent = model.consent
    for event in _take_adjustments(state, events, model, added):
        ts = event.timestamp_ms
        if _see_event(state, event, model):
            resume_before = None  # traits count for the whole history: walk it again
        if event.consent is not None:
            _see_consent(state, event.consent, (ts, event.message_id))
            if consent is not None:
                granted = granted_categories(event.consent)
                _log_consent(state, ts, granted)
                if not consent.allows(granted):
                    continue  # denied by its own consent: no hit (its identity and traits count)
        matched = model.matching_rules(event)
        if not matched:
            continue
        if seen is None:
            seen = _seen_ids(state)
        if event.message_id in seen:
            continue
        seen.add(event.message_id)
        added.append(Hit(ts, event.message_id, tuple(r.id for r in matched)))
    if model.interests is not None:
        _fold_interests(state, events, model)
    _add_hits(state, added)
    _normalise(state, model, resume_before)
    _bound_adjustments(state)
    return state


def log_email_facts(state: ContactState, events: list[Event], model: Model, resume_before: int | None) -> int | None:
    """Add the e-mail facts among ``events`` to the contact's log (a model with a
    ``machine_traffic`` section, :mod:`scorestream.machine`; every fact, whatever its consent: they
    only judge other events) and return ``resume_before``
    lowered to the earliest hit a new fact re-judged (a late delivery makes the clicks before it
    a machine's): the walk goes again from there."""
    rules = model.machine
    if rules is None:
        return resume_before
    candidates = [e for e in events if rules.kind_of(e) is not None]
    if candidates and state.email_log:  # the fold logged them already, or a re-sent copy
        known = {f.mid for f in state.email_log}
        candidates = [e for e in candidates if e.message_id not in known]
    facts = [f for e in candidates if (f := fact_of(e, rules)) is not None]
    if not facts:
        return resume_before
    before = machine_verdicts(state, model)
    state.email_log = add_facts(state.email_log, facts, model.fold_after_ms)
    changed = reclassified(before, machine_verdicts(state, model), state.email_log)
    if changed is not None and resume_before is not None:
        return min(resume_before, changed)
    return resume_before


def _earliest(stamps: dict[str, tuple[int, str]], key: str, stamp: tuple[int, str]) -> None:
    current = stamps.get(key)
    if current is None or stamp < tuple(current):
        stamps[key] = stamp


def _add_hits(state: ContactState, added: list[Hit]) -> None:
    """Insert hits keeping ``state.hits`` sorted (appending when they come in time order)."""
    if not added:
        return
    added.sort()
    in_order = not state.hits or state.hits[-1] < added[0]
    state.hits.extend(added)
    if not in_order:
        state.hits.sort()


def _absorb_points(target: ContactState, source: ContactState, model: Model) -> None:
    """The source's hits, folded base, once-only and capped awards and folded message ids (once:
    a contact already merged in brings its base and caps no second time)."""
    seen = _seen_ids(target)
    fresh = [hit for hit in source.hits if hit.mid not in seen]
    seen.update(hit.mid for hit in fresh)
    _add_hits(target, fresh)
    if source.base and source.contact_id not in target.merged_ids:
        ref = max(target.base_ms, source.base_ms)
        merged = {k: decay(v, target.base_ms, ref, model.half_life_ms) for k, v in target.base.items()}
        for k, v in source.base.items():
            merged[k] = merged.get(k, 0.0) + decay(v, source.base_ms, ref, model.half_life_ms)
        groups = _decayed_group_base(target.group_base, target.base_ms, ref, model)
        for k, v in _decayed_group_base(source.group_base, source.base_ms, ref, model).items():
            groups[k] = groups.get(k, 0.0) + v
        target.base, target.group_base, target.base_ms = merged, groups, ref
    target.base_once = sorted(set(target.base_once) | set(source.base_once))
    if source.contact_id not in target.merged_ids:
        for rule_id, entries in source.capped.items():
            target.capped[rule_id] = sorted({*target.capped.get(rule_id, []), *entries})
    for mid in source.folded_ids:
        if mid not in seen:
            target.folded_ids.append(mid)


def _absorb_facts(target: ContactState, source: ContactState, model: Model) -> None:
    """Everything else the source knows: traits (latest wins), the purchase ledger, flags, rule
    times, the account (latest group call wins), anonymous ids, groups, merged ids, first/last seen."""
    for key, value in source.traits.items():
        stamp = source.trait_at.get(key)
        if stamp is not None:
            _set_trait(target, key, value, (stamp[0], stamp[1]))
    _cap_traits(target, model)
    target.traits_capped = target.traits_capped or source.traits_capped
    if source.value is not None:
        target.value = merge_values(target.value, source.value, model.value, fold=False)
    for rule_id, stamp in source.flag_hits.items():
        _earliest(target.flag_hits, rule_id, (stamp[0], stamp[1]))
    for rule_id, ts in source.rule_last.items():
        target.rule_last[rule_id] = max(target.rule_last.get(rule_id, ts), ts)
    if source.account_at is not None and (
        target.account_at is None or tuple(target.account_at) < tuple(source.account_at)
    ):
        target.account_id, target.account_at = source.account_id, source.account_at
        target.account_traits = dict(source.account_traits)
    for anon in source.anonymous_ids:
        seen_at = source.anonymous_at.get(anon)
        _see_anonymous(target, anon, (0, "") if seen_at is None else (seen_at[0], seen_at[1]))
    for group in source.groups:
        _add_unique(target.groups, group, MAX_GROUPS)
    if source.consent is not None and source.consent_at is not None:
        _see_consent(target, source.consent, (source.consent_at[0], source.consent_at[1]))
    for ts, granted in source.consent_log:
        _log_consent(target, ts, tuple(granted))
    if source.email_log:
        target.email_log = merge_logs(target.email_log, source.email_log, model.fold_after_ms)
    for merged_id in [source.contact_id, *source.merged_ids]:
        _add_unique(target.merged_ids, merged_id, MAX_ANONYMOUS_IDS)
    if source.first_seen_ms is not None:
        target.first_seen_ms = min(x for x in (target.first_seen_ms, source.first_seen_ms) if x is not None)
    if source.last_seen_ms is not None:
        target.last_seen_ms = max(x for x in (target.last_seen_ms, source.last_seen_ms) if x is not None)


def _fold_interests(state: ContactState, events: list[Event], model: Model) -> None:
    """The events into the interest profile (:mod:`scorestream.interests`); one its own consent
    denies scoring is left out, as it is from the hits."""
    rules, consent = model.interests, model.consent
    assert rules is not None
    if consent is not None:
        events = [e for e in events if e.consent is None or consent.allows(granted_categories(e.consent))]
    gate = interest_gate(state.consent_log, consent)
    state.interests = fold_interests(state.interests, events, rules, model.dedupe_memory, gate)


def absorb(target: ContactState, source: ContactState, model: Model) -> ContactState:
    """Merge ``source`` (an anonymous visitor or an aliased id) into ``target``.

    The source's hits re-enter the target's hit list, so caps, once-only awards and decay are
    evaluated once over the union, by the same code as live events, never by adding totals.
    """
    absorbed_before = source.contact_id in target.merged_ids  # (interests) before _absorb_facts records it
    again = source.contact_id in target.merged_ids
    _absorb_points(target, source, model)
    if source.adjustments:
        _absorb_adjustments(target, source, model, again)
    _absorb_facts(target, source, model)
    if model.interests is not None:  # after the facts: the merged consent timeline decides what folds
        gate = interest_gate(target.consent_log, model.consent)
        target.interests = absorb_interests(
            target.interests, source.interests, model.interests, model.dedupe_memory, absorbed_before, gate
        )
    _normalise(target, model)
    _bound_adjustments(target)
    return target


def can_merge_into(state: ContactState | None, target: str) -> bool:
    """A contact may merge into ``target`` unless that would close a loop of merges."""
    if state is None:
        return True
    return target != state.contact_id and target not in state.merged_ids and state.merged_into in (None, target)


# --- manual adjustments (scorestream.adjustments) --------------------------------------------------


def _adjustment_rule(model: Model, group: str | None) -> str:
    """An adjustment's rule: ``adjustment:<group>`` for a group the model declares, else
    ``adjustment`` (a group unknown to the model, e.g. one it dropped since, counts overall only)."""
    return adjustment_rule_id(group if group is not None and model.group(group) is not None else None)


def _take_adjustments(state: ContactState, events: list[Event], model: Model, added: list[Hit]) -> list[Event]:
    """The adjustments and reverts among ``events`` taken into the state (each also seen as any
    event: first and last seen); the other events returned."""
    if not any(e.channel == ADJUSTMENT_CHANNEL for e in events):
        return events
    rest: list[Event] = []
    for event in events:
        if event.channel == ADJUSTMENT_CHANNEL and _see_adjustment(state, event, model, added):
            _see_event(state, event, model)
        else:
            rest.append(event)
    return rest


def _see_adjustment(state: ContactState, event: Event, model: Model, added: list[Hit]) -> bool:
    """An adjustment becomes a hit of its built-in rule earning its own points (once: its id is
    its message id); a revert marks its adjustment reverted, known yet or not (the earliest revert
    counts), and takes the points it folded into the base out of it. False: ``event`` is neither."""
    found = read_adjustment(event)
    if found is None:
        return False
    records = state.adjustments
    if isinstance(found, Reverted):
        mine = records.get(found.adjustment_id, Adjustment())
        revert = earliest(mine.reverted, found.revert)
        if revert != mine.reverted:
            if mine.reverted is None and mine.folded:
                _unfold_adjustment(state, model, mine)
            records[found.adjustment_id] = mine._replace(reverted=revert)
        return True
    aid = found.adjustment_id
    known = records.get(aid)
    if (known is not None and known.at_ms is not None) or aid in state.folded_ids:
        return True  # a duplicate (a record is kept while its hit is; a folded one's id is remembered)
    records[aid] = Adjustment(
        found.at_ms, found.points, found.group, found.reason, found.by, known.reverted if known is not None else None
    )
    added.append(Hit(found.at_ms, aid, (_adjustment_rule(model, found.group),)))
    return True


def _fold_adjustment(state: ContactState, hit: Hit, earned: list[tuple[str, float]]) -> None:
    """Remember what an adjustment's hit folded into the base (a later revert takes it out)."""
    points = sum(value for rule, value in earned if is_rule(rule))
    state.adjustments[hit.mid] = state.adjustments[hit.mid]._replace(folded=points)


def _unfold_adjustment(state: ContactState, model: Model, record: Adjustment) -> None:
    """Take a folded adjustment's points, decayed to the base's instant, out of the base (and of
    its group's second base): what the base would hold had its hit earned nothing."""
    assert record.at_ms is not None and record.folded is not None
    rule = _adjustment_rule(model, record.group)
    left = state.base.get(rule, 0.0) - decay(record.folded, record.at_ms, state.base_ms, model.half_life_ms)
    _set_or_drop(state.base, rule, left, record.folded)
    half_life = model.group_half_lives.get(rule)
    if half_life is not None:
        left = state.group_base.get(rule, 0.0) - decay(record.folded, record.at_ms, state.base_ms, half_life)
        _set_or_drop(state.group_base, rule, left, record.folded)


def _set_or_drop(base: dict[str, float], rule: str, value: float, scale: float) -> None:
    """``base[rule] = value``, or no entry when what is left is rounding (the base then holds what
    it would had the adjustment never folded)."""
    if abs(value) <= 1e-9 * max(1.0, abs(scale)):
        base.pop(rule, None)
    else:
        base[rule] = value


def _absorb_adjustments(target: ContactState, source: ContactState, model: Model, again: bool) -> None:
    """The source's adjustment records join the target's; an adjustment one side folded and the
    other side knows reverted leaves the merged base (the source's folded points only when its
    base came in now, not ``again``)."""
    records = target.adjustments
    for aid, theirs in source.adjustments.items():
        mine = records.get(aid)
        if mine is None:
            records[aid] = theirs
            continue
        both = combine(mine, theirs)
        if both.reverted is not None:
            if mine.reverted is None and mine.folded:
                _unfold_adjustment(target, model, mine)
            if theirs.reverted is None and theirs.folded and not again:
                _unfold_adjustment(target, model, theirs)
        records[aid] = both


def _bound_adjustments(state: ContactState) -> None:
    """Keep every record whose hit is kept, and of the others (folded, or reverts whose
    adjustment is not seen) the newest ``MAX_ADJUSTMENTS`` by instant then id: a function of the
    set of events, as the other bounds."""
    records = state.adjustments
    if len(records) <= MAX_ADJUSTMENTS:
        return
    others = [k for k, a in records.items() if a.at_ms is None or a.folded is not None]
    if len(others) <= MAX_ADJUSTMENTS:
        return

    def newest(aid: str) -> tuple[int, str]:
        a = records[aid]
        at = a.at_ms if a.at_ms is not None else (a.reverted.at_ms if a.reverted is not None else 0)
        return (at, aid)

    for aid in sorted(others, key=newest, reverse=True)[MAX_ADJUSTMENTS:]:
        del records[aid]
