"""The lifecycle walk: a contact's stage history, flags, persona, timers and thresholds, computed
from its state and the model's lifecycle rules (:mod:`scorestream.rules.lifecycle`).

**The walk.** A contact's stage history is computed, not accumulated: :func:`walk` goes through
the contact's checkpoints (its scored events, orders, refunds and flag-matching events) in event
time order, ``(timestamp, message id)``, from an *anchor* (the start of the contact, or the point
where old events were folded away) to ``as_of``. At each checkpoint it applies the event, then the
transitions whose guards hold; between checkpoints, time alone moves it: engagement decays
(``2^(-dt/H)``, so a guard such as ``engagement < 20`` becomes true at a computable instant),
timers come due (``cart.abandoned`` one hour after the last cart activity without an order) and
thresholds are crossed. Each of those happens at its exact instant, stamped with it. So the
history depends on the set of events and on ``as_of``, never on their arrival order or batching,
and a late event rewrites what followed it. ``as_of`` is the contact's newest event or the latest
timer tick the worker sent it (a message on the contacts topic), whichever is later.

**Walking less.** A walk keeps positions (``Journey.cursors``), each with the caps' state and the
purchase signals: the one at the newest event, and positions spaced by event time behind it, at
roughly geometric ages (the starts of the latest two cells of grids of 1 s, 4 s, 16 s, ... up to
half the allowed lateness ``fold_after``; two per grid at most, see :func:`_keep`). They depend
on the events' instants only, not on how they were batched or how fast they came. A walk over new
events resumes from the latest position before the earliest of them (for an event ``d`` late,
one at most about ``5d`` before it, typically ``2d`` to ``3d``, however busy the contact) and
earns only the new hits' points; new traits or a merge walk again from the anchor. The caller
(:func:`scorestream.fold.step`) may also put a walk off for up to ``WALK_DEBOUNCE_MS`` (a
busy contact with late events); the clock's tick then walks it, with the same result. Before old
hits fold away, :mod:`scorestream.contact` settles the journey there (:func:`anchor_at`): later walks
start from that anchor. The score at the walk's newest position is kept (``Journey.cursor``), and
:func:`scorestream.scoring.engagement_now` reads engagement from it without walking.

**Guards** are predicates (``scorestream.rules.common.Predicate``) over the contact's signals at that
instant: ``engagement`` (decayed score), ``fit``, ``fit_grade``, ``orders`` (completed orders net
of refunds), ``monetary``, ``customer``, ``flagged``, ``flags`` (list of names), ``traits.<name>``,
``stage``. Only ``engagement`` changes between checkpoints. A transition may also require the
checkpoint to be one of its ``events``: engagement rule ids, ``order``, ``refund`` or a timer id.

**Traits are facts about a person, not events**: fit and trait-based flags use the contact's
latest known traits throughout the walk (a title learned on day 10 was true on day 3 too).
Event-based flags (a careers page view, a crawler's user agent) hold from the first matching event.

Two rules hold whatever the model says: a contact with a completed order is at least a customer
(it moves to ``customer.stage`` unless its stage is one of ``customer.stages``), and a flagged
contact cannot enter a ``qualified`` stage (MQL, SQL).
"""

from __future__ import annotations

import math
from bisect import bisect_right
from dataclasses import dataclass, field, replace
from typing import Any

from scorestream.journey import MAX_FIRED, MAX_HISTORY, Cursor, Fired, Journey, StageEntry
from scorestream.rfm import CustomerValue, FactsStep, FoldedOrders, Order, Refund, facts_timeline
from scorestream.rules.common import Predicate
from scorestream.rules.groups import ScoreGroup
from scorestream.rules.lifecycle import ORDER_TAG, REFUND_TAG, Lifecycle, StageTransition, score_edge
from scorestream.rules.model import Model
from scorestream.scoring import fit_of
from scorestream.state import Caps, ContactState, Hit, decay

MAX_CHAIN = 8
POSITION_GRAIN_MS = 1_000  # the finest grid of kept walk positions (event time)
POSITION_RATIO = 4  # each grid's spacing is this many times the previous one's
POSITIONS_PER_GRID = 2  # the latest this many crossings of each grid are kept


# --- the walk ------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Checkpoint:
    ts: int
    mid: str
    hits: list[Hit] = field(default_factory=list)
    tags: set[str] = field(default_factory=set)
    flags: list[str] = field(default_factory=list)
    value_changed: bool = False


def _checkpoints(
    state: ContactState,
    model: Model,
    lc: Lifecycle,
    after: tuple[int, str] | None,
    hits_after: bool = False,
    denied: frozenset[str] = frozenset(),
) -> list[_Checkpoint]:
    """Every checkpoint after ``after`` (all when None), in ``(timestamp, message id)`` order;
    scored events before it too unless ``hits_after`` (a merged contact's older events count from
    an anchor on; a resumed walk has seen them). A hit whose consent denies scoring (``denied``,
    :func:`scorestream.state.consent_denied`) is no checkpoint."""
    points: dict[tuple[int, str], _Checkpoint] = {}
    skip = after if hits_after else None

    def at(ts: int, mid: str) -> _Checkpoint:
        cp = points.get((ts, mid))
        if cp is None:
            cp = points[(ts, mid)] = _Checkpoint(ts, mid)
        return cp

    hits = state.hits  # sorted: a resumed walk starts at the first hit after ``after``
    first = 0 if skip is None else bisect_right(hits, skip, key=lambda h: (h.ts, h.mid))
    for hit in hits[first:] if first else hits:
        if denied and hit.mid in denied:
            continue
        cp = at(hit.ts, hit.mid)
        cp.hits.append(hit)
        cp.tags.update(hit.rules)
    if state.value is not None:
        for order in state.value.orders:
            if after is None or (order.ts, order.mid) > after:
                cp = at(order.ts, order.mid)
                cp.tags.add(ORDER_TAG)
                cp.value_changed = True
        for refund in state.value.refunds:
            if after is None or (refund.ts, refund.mid) > after:
                cp = at(refund.ts, refund.mid)
                cp.tags.add(REFUND_TAG)
                cp.value_changed = True
    for rule_id, (ts, mid) in state.flag_hits.items():
        if rule_id in lc.flag_rules and (after is None or (ts, mid) > after):
            at(ts, mid).flags.append(rule_id)
    return [points[k] for k in sorted(points)]


def _trait_flags(state: ContactState, lc: Lifecycle) -> dict[str, str]:
    source = {"traits": state.traits, "email": state.email}
    out: dict[str, str] = {}
    for rule in lc.flags:
        if rule.when and rule.flag not in out and all(p.test(source) for p in rule.when):
            out[rule.flag] = rule.reason
    return out


def _holds(op: str, value: float, limit: float) -> bool:
    above = value >= score_edge(op, limit)
    return above if op in ("gt", "gte") else not above


def _window(guard: Predicate, score: float, now: int, half_life: int) -> tuple[int, int | None] | None:
    """Instants ``[start, end)`` from ``now`` on at which ``engagement op value`` holds while the
    score only decays (``end`` None: for ever); None if never."""
    op, limit = guard.op, float(guard.value)
    holds_now = _holds(op, score, limit)
    if score == 0.0:
        return (now, None) if holds_now else None
    tiny = math.copysign(1e-300, score)  # the score tends to 0 without reaching it
    if holds_now == _holds(op, tiny, limit):
        return (now, None) if holds_now else None
    # the one crossing: where the decayed score passes the edge (of the same sign as the score)
    ratio = score / score_edge(op, limit)
    t = now + max(1, math.ceil(half_life * math.log2(ratio))) if ratio > 0 else now + 1
    while _holds(op, decay(score, now, t, half_life), limit) == holds_now:
        t += 1
    while t - 1 > now and _holds(op, decay(score, now, t - 1, half_life), limit) != holds_now:
        t -= 1
    return (now, t) if holds_now else (t, None)


def _group_window(guard: Predicate, group: ScoreGroup, raw: float, now: int) -> tuple[int, int | None] | None:
    """:func:`_window` of a guard on a score group's score: its raw decayed sum, clamped to
    ``[-max, max]``. A clamp changes no crossing of an edge inside it; one at or beyond it the
    clamped score never crosses (the guard holds now and for ever, or never)."""
    limit = float(guard.value)
    if group.max is not None and abs(score_edge(guard.op, limit)) >= group.max:
        return (now, None) if _holds(guard.op, group.clamp(raw), limit) else None
    return _window(guard, raw, now, group.half_life_ms)


def _passes_edge(score: float, now: int, limit: int, half_life: int, edges: tuple[float, ...]) -> bool:
    """Whether ``score`` decaying from ``now`` to ``limit`` passes one of ``edges``."""
    if score == 0.0 or not edges:
        return False
    low = decay(score, now, limit, half_life)
    lo, hi = (low, score) if score > 0 else (score, low)
    return any(lo <= edge <= hi for edge in edges)


@dataclass(slots=True)
class _Walker:
    state: ContactState
    model: Model
    lc: Lifecycle
    now: int
    stage: str
    since: int
    ref_score: float
    ref_ms: int
    score: float
    pending: dict[str, int]
    above: set[float]
    history: list[StageEntry]
    fired: list[Fired]
    signals: dict[str, Any]
    event_flags: dict[str, str]
    trait_flags: dict[str, str]
    value_steps: list[FactsStep] | None
    caps: Caps
    applied: int = 0
    # this walk's candidate positions crossing each grid (see :func:`_keep`)
    crossings: list[int] = field(default_factory=list)
    # the score groups the lifecycle watches (``Lifecycle.watched``) by id: each one's raw score
    # now and at ``ref_ms``, and the thresholds it is above
    groups: dict[str, ScoreGroup] = field(default_factory=dict)
    gscore: dict[str, float] = field(default_factory=dict)
    gref: dict[str, float] = field(default_factory=dict)
    gabove: dict[str, set[float]] = field(default_factory=dict)

    def _decay_to(self, t: int) -> None:
        """Move the clock on. The score is always decayed from the last checkpoint (``ref``), so a
        walk resumed at any instant continues with exactly the same numbers."""
        if t > self.now:
            self.score = decay(self.ref_score, self.ref_ms, t, self.model.half_life_ms)
            for gid, ref in self.gref.items():
                self.gscore[gid] = decay(ref, self.ref_ms, t, self.groups[gid].half_life_ms)
            self.now = t

    def _flags(self) -> dict[str, str]:
        return {**self.trait_flags, **self.event_flags}

    def _refresh_signals(self) -> None:
        flags = self._flags()
        self.signals["flags"] = sorted(flags)
        self.signals["flagged"] = bool(flags)
        self.signals["stage"] = self.stage

    def _refresh_value(self, key: tuple[int, str]) -> None:
        """Purchase signals with every order and refund up to ``key`` known."""
        steps = self.value_steps
        if steps is None:  # built on first use: a resumed walk without purchases never needs it
            steps = self.value_steps = _timeline(self.state.value, self.lc.uses_monetary)
        at = bisect_right(steps, key, key=lambda s: s.key) - 1
        frequency, monetary = (steps[at].frequency, steps[at].monetary) if at >= 0 else (0, 0.0)
        self.signals["orders"] = frequency
        self.signals["monetary"] = monetary
        self.signals["customer"] = frequency > 0

    def _guards_hold(self, tr: StageTransition) -> bool:
        self.signals["engagement"] = self.score
        return all(g.test(self.signals) for g in tr.static_guards) and all(
            _holds(g.op, self._guard_score(g.field), float(g.value)) for g in tr.engagement_guards
        )

    def _guard_score(self, name: str) -> float:
        """The score a score guard reads: ``engagement``, or a group's (``engagement.<group>``, clamped)."""
        if name == "engagement":
            return self.score
        group = self.groups[name[len("engagement.") :]]
        return group.clamp(self.gscore[group.id])

    def _window_of(self, guard: Predicate) -> tuple[int, int | None] | None:
        """:func:`_window` of a score guard, on the score it reads."""
        if guard.field == "engagement":
            return _window(guard, self.score, self.now, self.model.half_life_ms)
        group = self.groups[guard.field[len("engagement.") :]]
        return _group_window(guard, group, self.gscore[group.id], self.now)

    def _enter(self, stage: str, rule: str, cause: str | None) -> None:
        if self.history and self.history[-1].exited_ms is None:
            last = self.history[-1]
            self.history[-1] = last._replace(exited_ms=self.now)
        self.history.append(StageEntry(stage, self.now, None, rule, cause))
        self.stage, self.since = stage, self.now
        self.signals["stage"] = stage

    def settle(self, tags: set[str], cause: str | None) -> None:
        """Apply the transitions that hold now, chained (at most MAX_CHAIN, never back to a stage
        visited at this instant)."""
        visited = {self.stage}
        for _ in range(MAX_CHAIN):
            lc = self.lc
            if (
                lc.customer_stage is not None
                and self.signals.get("customer")
                and self.stage not in lc.customer_stages
                and lc.customer_stage not in visited
            ):
                self._enter(lc.customer_stage, "completed-order", cause)
                visited.add(self.stage)
                continue
            blocked = bool(self.signals.get("flagged"))
            for tr in lc.by_source.get(self.stage, ()):
                if tr.to in visited or (tr.on and not (tr.on & tags)):
                    continue
                if blocked and tr.to in lc.qualified:
                    continue
                if self._guards_hold(tr):
                    self._enter(tr.to, tr.id, cause)
                    visited.add(tr.to)
                    break
            else:
                return

    def _cross(self, cause: str | None) -> None:
        for th in self.lc.thresholds:
            was, now = th in self.above, _holds("gte", self.score, th)
            if was != now:
                self.fired.append(Fired("crossing", _num(th), self.now, "up" if now else "down", cause))
                if now:
                    self.above.add(th)
                else:
                    self.above.discard(th)
        for group in self.lc.watched:
            if not group.thresholds:
                continue
            score = group.clamp(self.gscore[group.id])
            above = self.gabove.setdefault(group.id, set())
            for th in group.thresholds:
                was, now = th in above, _holds("gte", score, th)
                if was != now:
                    self.fired.append(Fired("crossing", _num(th), self.now, "up" if now else "down", cause, group.id))
                    if now:
                        above.add(th)
                    else:
                        above.discard(th)

    def _earn(self, cp: _Checkpoint) -> tuple[float, dict[str, list[float]]]:
        """The points ``cp``'s hits earn after caps, in order (the caps go on with it): in the
        overall score (times a score group's weight), and per watched group."""
        earned = 0.0
        weights = self.model.weights  # a score group's rules count times its weight
        watched = self.groups
        group_earned: dict[str, list[float]] = {gid: [] for gid in watched} if watched else {}
        for hit in cp.hits:
            points = self.caps.earn(hit)
            if weights:
                earned += math.fsum(v * weights.get(r, 1.0) for r, v in points)
            else:
                earned += math.fsum(v for _, v in points)
            if watched:
                group_of = self.model.group_of
                for r, v in points:
                    group = group_of.get(r)
                    if v and group is not None and group.id in group_earned:
                        group_earned[group.id].append(v)
        return earned, group_earned

    def apply(self, cp: _Checkpoint) -> None:
        earned, group_earned = self._earn(cp)
        watched = self.groups
        if cp.ts >= self.now:
            self.advance(cp.ts, inclusive=False)
            self._decay_to(cp.ts)
            self.score += earned
            for gid, values in group_earned.items():
                self.gscore[gid] += math.fsum(values)
        else:  # older than the anchor (a merged contact's events): counted from the anchor on
            self.score += decay(earned, cp.ts, self.now, self.model.half_life_ms)
            for gid, values in group_earned.items():
                self.gscore[gid] += decay(math.fsum(values), cp.ts, self.now, watched[gid].half_life_ms)
        self.ref_score, self.ref_ms = self.score, self.now
        if watched:
            self.gref = dict(self.gscore)
        for rule_id in cp.flags:
            rule = self.lc.flag_rules[rule_id]
            self.event_flags.setdefault(rule.flag, rule.reason)
        if cp.flags:
            self._refresh_signals()
        if cp.value_changed:
            self._refresh_value((cp.ts, cp.mid))
        for timer in self.lc.timers:
            if timer.cancel & cp.tags:
                self.pending.pop(timer.id, None)
            if timer.start & cp.tags:
                self.pending[timer.id] = cp.ts
        self._cross(cp.mid)
        self.settle(cp.tags, cp.mid)

    def _next_due(self) -> int | None:
        """The next instant after ``now`` at which time alone changes something."""
        half_life = self.model.half_life_ms
        due: list[int] = []
        timer_of = self.lc.timer_of
        due.extend(start + timer_of[tid].after_ms for tid, start in self.pending.items() if tid in timer_of)
        for th, guard in self.lc.threshold_guards:
            window = _window(guard, self.score, self.now, half_life)
            if th in self.above and window is not None and window[1] is not None:
                due.append(window[1])
            elif th not in self.above and window is not None and window[0] > self.now:
                due.append(window[0])
        for group in self.lc.watched:
            above = self.gabove.get(group.id, set())
            for th in group.thresholds:
                window = _group_window(Predicate("", "gte", th), group, self.gscore[group.id], self.now)
                if th in above and window is not None and window[1] is not None:
                    due.append(window[1])
                elif th not in above and window is not None and window[0] > self.now:
                    due.append(window[0])
        blocked = bool(self.signals.get("flagged"))
        for tr in self.lc.by_source.get(self.stage, ()):
            if tr.on or (blocked and tr.to in self.lc.qualified) or not tr.engagement_guards:
                continue
            self.signals["engagement"] = self.score
            if not all(g.test(self.signals) for g in tr.static_guards):
                continue
            start, end = self.now, None
            for g in tr.engagement_guards:
                w = self._window_of(g)
                if w is None:
                    break
                start = max(start, w[0])
                end = w[1] if end is None else (end if w[1] is None else min(end, w[1]))
            else:
                if start > self.now and (end is None or start < end):
                    due.append(start)
        later = [d for d in due if d > self.now]
        return min(later) if later else None

    def _fire_timers(self) -> set[str]:
        tags: set[str] = set()
        for tid, start in sorted(self.pending.items()):
            timer = self.lc.timer_of.get(tid)
            if timer is None:
                del self.pending[tid]
            elif start + timer.after_ms <= self.now:
                del self.pending[tid]
                tags.add(tid)
                self.fired.append(Fired("timer", tid, self.now, "", None))
        return tags

    def position(self, periodic: bool = False, at_ms: int | None = None) -> Cursor:
        """Where the walk stands now (every checkpoint and happening up to ``now``, or up to
        ``at_ms`` when the walk has applied all of them, applied)."""
        windows, used, once = self.caps.snapshot()
        return Cursor(
            orders=int(self.signals.get("orders", 0)),
            monetary=float(self.signals.get("monetary", 0.0)),
            cap_windows=windows,
            cap_used=used,
            once=once,
            index=self.applied,
            periodic=periodic,
            at_ms=self.now if at_ms is None else at_ms,
            stage=self.stage,
            since_ms=self.since,
            pending=dict(self.pending),
            above=sorted(self.above),
            ref_score=self.ref_score,
            ref_ms=self.ref_ms,
            group_ref=dict(self.gref),
            group_above={g: sorted(above) for g, above in self.gabove.items() if above},
        )

    def _quiet(self, limit: int) -> bool:
        """Nothing can happen up to ``limit``: no timer comes due and the decaying score passes
        no threshold or guard edge (a cheap test before the exact search)."""
        timer_of = self.lc.timer_of
        for tid, start in self.pending.items():
            timer = timer_of.get(tid)
            if timer is not None and start + timer.after_ms <= limit:
                return False
        if limit <= self.now:
            return True
        if _passes_edge(self.score, self.now, limit, self.model.half_life_ms, self.lc.edges.get(self.stage, ())):
            return False
        if self.groups:
            edges = self.lc.group_edges.get(self.stage, {})
            for gid, group in self.groups.items():
                if _passes_edge(self.gscore[gid], self.now, limit, group.half_life_ms, edges.get(gid, ())):
                    return False
        return True

    def advance(self, limit: int, inclusive: bool) -> None:
        """Let time pass up to ``limit``: timers, thresholds and decay-driven transitions. A timer
        due at the instant of a checkpoint fires after it (an order at the deadline is in time)."""
        if self.now < limit or inclusive:
            tags = self._fire_timers()
            if tags:
                self.settle(tags, None)
        if self._quiet(limit):
            return
        for _ in range(10_000):
            t = self._next_due()
            if t is None or t > limit or (t == limit and not inclusive):
                return
            self._decay_to(t)
            tags = self._fire_timers()
            self._cross(None)
            self.settle(tags, None)


def _num(value: float) -> str:
    return str(int(value)) if value == int(value) else repr(value)


# --- where a walk keeps its positions ------------------------------------------------------------
#
# A candidate position stands just before a checkpoint (at its instant - 1 ms, everything earlier
# applied) that is the first one past a line of a grid in event time: grids of ``POSITION_GRAIN_MS``
# times powers of ``POSITION_RATIO`` (1 s, 4 s, 16 s, ... up to half the allowed lateness). Its
# level is the coarsest grid it crosses; it is kept while fewer than ``POSITIONS_PER_GRID`` later
# candidates cross that grid. So a contact keeps, at each grid, the starts of its latest two
# non-empty cells: positions at ages spread geometrically behind its newest event (for a busy
# contact roughly 0-1 s, 1-2 s, 0-4 s, 4-8 s, ..., up to weeks), two per grid at most, however
# fast its events come. Both rules read only the checkpoints' instants, and a position once
# dropped is never wanted again (later events only add later candidates), so a walk resumed from
# a kept position keeps the positions a walk from the anchor keeps.


_GRAINS: dict[tuple[int, int, int], list[int]] = {}


def _grains(model: Model) -> list[int]:
    """The grids' spacings, finest first: up to half the allowed lateness (``fold_after``; a
    later event older than every kept position walks from the anchor)."""
    key = (model.fold_after_ms, POSITION_GRAIN_MS, POSITION_RATIO)
    grains = _GRAINS.get(key)
    if grains is None:
        grains = [POSITION_GRAIN_MS]
        while grains[-1] * POSITION_RATIO * 2 <= model.fold_after_ms:
            grains.append(grains[-1] * POSITION_RATIO)
        _GRAINS[key] = grains
    return grains


def _level(grains: list[int], before: int, ts: int, start: int = 0) -> int:
    """The coarsest grid with a line in ``(before, ts]``, the level of the position just before a
    checkpoint at ``ts`` whose previous checkpoint (or the walk's start) is at ``before``; the
    grids are tried from ``start`` up, and ``start - 1`` means that grid has no line there (-1
    from 0: the checkpoint is no candidate)."""
    level = start
    while level < len(grains) and ts // grains[level] > before // grains[level]:
        level += 1
    return level - 1


def _keep(spans: list[tuple[int, int]], grains: list[int], counts: list[int]) -> list[bool]:
    """Which candidate positions stay, for ``spans`` newest first, each ``(before, ts)`` (the
    previous checkpoint's instant and the checkpoint's): a candidate stays while fewer than
    ``POSITIONS_PER_GRID`` later candidates cross its coarsest grid. ``counts[k]``: the later
    candidates crossing grid ``k`` (only compared with ``POSITIONS_PER_GRID``: a grid stops
    counting there), starting with those newer than ``spans`` and updated with them.

    Crossing a grid means crossing the finer ones too, so the full grids are the finest few: a
    span is tested from the first grid not yet full (one division for most checkpoints)."""
    keep = [False] * len(spans)
    full, top = 0, len(grains)
    while full < top and counts[full] >= POSITIONS_PER_GRID:
        full += 1
    grain = grains[full] if full < top else 0
    for i, (before, ts) in enumerate(spans):
        if full == top:
            break
        if ts // grain <= before // grain:  # not even the first grid not yet full: most checkpoints
            continue
        level = _level(grains, before, ts, full + 1)
        keep[i] = True  # its grid is not full: fewer later candidates cross it
        for k in range(full, level + 1):
            counts[k] += 1
        while full < top and counts[full] >= POSITIONS_PER_GRID:
            full += 1
            grain = grains[full] if full < top else 0
    return keep


# What a walk reads from the traits alone (fit, fit grade, trait flags), by model version and
# traits: a busy contact is walked on every batch with the same traits (setting up the walker
# was about a quarter of a resumed walk's time, ``python -m bench.profile_fold --sorted``: 2.5 of
# 8.9 s, now 0.4 of 7.7 s). Bounded; values are a function of the key, so the cache changes no
# result.
_TRAIT_VIEWS: dict[tuple[str, str, str | None], tuple[float, str, dict[str, str]]] = {}
_TRAIT_VIEWS_MAX = 20_000


def _trait_view(state: ContactState, model: Model, lc: Lifecycle) -> tuple[float, str, dict[str, str]]:
    key = (model.version, repr(state.traits), state.email)
    view = _TRAIT_VIEWS.get(key)
    if view is None:
        if len(_TRAIT_VIEWS) >= _TRAIT_VIEWS_MAX:
            _TRAIT_VIEWS.clear()
        fit = fit_of(state, model, top=0)
        view = _TRAIT_VIEWS[key] = (fit.score, fit.grade, _trait_flags(state, lc))
    return view


# A ledger's purchase timeline, by its orders and refunds: a contact's walks (from the anchor on
# every batch in a backfill, several per batch when old hits fold) read the same ledger until
# it buys again, and building the timeline is a sort and a pass over every order. Bounded;
# values are a function of the key (equal ledgers, same timeline), so the cache changes no result.
_TIMELINES: dict[tuple[tuple[Order, ...], tuple[Refund, ...], FoldedOrders | None, bool], list[FactsStep]] = {}
_TIMELINES_MAX = 4_096


def _timeline(value: CustomerValue | None, monetary: bool) -> list[FactsStep]:
    if value is None:
        return []
    key = (value.orders, value.refunds, value.folded, monetary)
    steps = _TIMELINES.get(key)
    if steps is None:
        if len(_TIMELINES) >= _TIMELINES_MAX:
            _TIMELINES.clear()
        steps = _TIMELINES[key] = facts_timeline(value, monetary=monetary)
    return steps


def _walker(
    state: ContactState,
    model: Model,
    lc: Lifecycle,
    now: int,
    stage: str,
    since: int,
    score: float,
    group_scores: dict[str, float] | None = None,
) -> _Walker:
    fit_score, fit_grade, trait_flags = _trait_view(state, model, lc)
    scores = {g.id: (group_scores or {}).get(g.id, 0.0) for g in lc.watched}
    return _Walker(
        state=state,
        model=model,
        lc=lc,
        now=now,
        stage=stage,
        since=since,
        ref_score=score,
        ref_ms=now,
        score=score,
        pending={},
        above=set(),
        history=[],
        fired=[],
        signals={"traits": state.traits, "fit": fit_score, "fit_grade": fit_grade},
        event_flags={},
        trait_flags=dict(trait_flags),
        value_steps=None,
        caps=Caps.start(state, model),
        groups={g.id: g for g in lc.watched},
        gscore=scores,
        gref=dict(scores),
    )


def _base_group_scores(state: ContactState, model: Model, lc: Lifecycle, at: int) -> dict[str, float]:
    """The watched groups' scores of the folded base at ``at`` (as
    :func:`scorestream.scoring.group_totals_at` reads the base)."""
    if not lc.watched or not state.base:
        return {}
    watched = {g.id for g in lc.watched}
    split = model.group_half_lives
    per_group: dict[str, list[float]] = {}
    for rule_id, value in state.base.items():
        group = model.group_of.get(rule_id)
        if group is not None and group.id in watched:
            folded = state.group_base.get(rule_id, 0.0) if rule_id in split else value
            decayed = decay(folded, state.base_ms, max(at, state.base_ms), group.half_life_ms)
            per_group.setdefault(group.id, []).append(decayed)
    return {gid: math.fsum(values) for gid, values in per_group.items()}


def _run(
    state: ContactState,
    model: Model,
    lc: Lifecycle,
    until: tuple[int, str],
    inclusive: bool,
    snapshots: list[Cursor] | None = None,
) -> _Walker:
    """Walk from the anchor through the checkpoints up to ``until`` = (instant, message id)."""
    old = state.journey
    anchor = old.anchor if old is not None else None
    after: tuple[int, str] | None = None
    if anchor is not None and old is not None:
        start, stage, since = anchor.at_ms, anchor.stage, anchor.since_ms
        history = [e for e in old.history if e.entered_ms <= start]
        if history and history[-1].stage == stage and history[-1].exited_ms is not None:
            history[-1] = history[-1]._replace(exited_ms=None)
        fired = [f for f in old.fired if _settled(f.at_ms, f.cause, anchor)]
        pending, above = dict(anchor.pending), set(anchor.above)
        group_above = {g: set(v) for g, v in anchor.group_above.items()}
        after = (anchor.at_ms, anchor.mid)
    else:
        first = state.first_seen_ms if state.first_seen_ms is not None else until[0]
        start, stage, since = first, lc.initial, first
        history = [StageEntry(stage, first, None, "initial", None)]
        fired, pending, above, group_above = [], {}, set(), {}
    score = 0.0
    if state.base:
        half_life, weights = model.half_life_ms, model.weights
        score = math.fsum(
            decay(v * weights.get(k, 1.0), state.base_ms, max(start, state.base_ms), half_life)
            for k, v in state.base.items()
        )
    w = _walker(state, model, lc, start, stage, since, score, _base_group_scores(state, model, lc, start))
    w.history, w.fired, w.pending, w.above = history, fired, pending, above
    w.gabove = group_above
    if after is not None:
        _flags_until(w, after)
    w._refresh_signals()
    w._refresh_value(after if after is not None else (start, ""))
    w.settle(set(), None)
    _continue(w, after, until, inclusive, snapshots=snapshots)
    return w


def _settled(at_ms: int, cause: str | None, anchor: Cursor) -> bool:
    """Whether a timer or threshold that fired at ``at_ms`` (caused by the checkpoint ``cause``;
    None: by time) is settled at ``anchor``: before its instant, or at it by a checkpoint up to
    the anchor's. What a later checkpoint at the same instant or time at it fired, the walk from
    the anchor fires again (kept, it was announced twice). The history keeps every stay entered
    up to the anchor's instant: the walk from the anchor starts in the anchor's stage."""
    return at_ms < anchor.at_ms or (at_ms == anchor.at_ms and cause is not None and cause <= anchor.mid)


def _flags_until(w: _Walker, key: tuple[int, str]) -> None:
    for rule_id, stamp in w.state.flag_hits.items():
        rule = w.lc.flag_rules.get(rule_id)
        if rule is not None and tuple(stamp) <= key:
            w.event_flags.setdefault(rule.flag, rule.reason)


def _continue(
    w: _Walker,
    after: tuple[int, str] | None,
    until: tuple[int, str],
    inclusive: bool,
    resumed: bool = False,
    snapshots: list[Cursor] | None = None,
) -> None:
    """Apply the checkpoints up to ``until``, then let time pass to it. From an anchor, scored
    events older than it (a merged contact's) still count, decayed; a resumed walk has seen all
    checkpoints up to ``after`` already. ``snapshots`` collects the positions of the walk that
    stay (see :func:`_keep`), for later walks to resume from; ``w.crossings`` then counts the
    walk's candidates crossing each grid."""
    points = _checkpoints(w.state, w.model, w.lc, after, hits_after=resumed, denied=w.caps.denied)
    points = points[: bisect_right(points, until, key=lambda cp: (cp.ts, cp.mid))]
    keep: list[bool] | None = None
    if snapshots is not None:
        grains = _grains(w.model)
        # each checkpoint with the previous one's instant (the walk's start before the first;
        # a merged contact's checkpoints older than the anchor are none: the start's instant)
        start, times = w.ref_ms, [cp.ts for cp in points]
        befores = [start, *times[:-1]] if times else []
        for i in range(min(bisect_right(times, start) + 1, len(befores))):
            befores[i] = max(befores[i], start)
        w.crossings = [0] * len(grains)
        keep = _keep(list(zip(reversed(befores), reversed(times), strict=True)), grains, w.crossings)[::-1]
    for i, cp in enumerate(points):
        if snapshots is not None and keep is not None and keep[i]:
            # the position just before this checkpoint: what its own step does first, so the
            # walk's result is unchanged; it exists whenever the events do, however batched
            w.advance(cp.ts - 1, inclusive=True)
            snapshots.append(w.position(periodic=True, at_ms=cp.ts - 1))
        w.apply(cp)
        w.applied += 1
    w.advance(until[0], inclusive=inclusive)
    w._decay_to(until[0])


def _resume(
    state: ContactState,
    model: Model,
    lc: Lifecycle,
    old: Journey,
    cursor: Cursor,
    until: tuple[int, str],
    snapshots: list[Cursor] | None = None,
    inclusive: bool = True,
) -> _Walker:
    """Continue a walk from ``cursor`` (every new checkpoint is later than it). What the previous
    walk found after the cursor (time passing up to a tick) is dropped and walked again."""
    w = _walker(state, model, lc, cursor.at_ms, cursor.stage, cursor.since_ms, 0.0)
    w.ref_score, w.ref_ms = cursor.ref_score, cursor.ref_ms
    w.score = decay(cursor.ref_score, cursor.ref_ms, cursor.at_ms, model.half_life_ms)
    w.gref = {gid: cursor.group_ref.get(gid, 0.0) for gid in w.groups}
    w.gscore = {gid: decay(v, cursor.ref_ms, cursor.at_ms, w.groups[gid].half_life_ms) for gid, v in w.gref.items()}
    w.gabove = {gid: set(v) for gid, v in cursor.group_above.items()}
    w.applied = cursor.index
    caps = w.caps  # what Caps.start found: denied, adjusted and machine-made hits
    w.caps = Caps.restore(
        model, cursor.cap_windows, cursor.cap_used, cursor.once, caps.denied, caps.adjusted, scaled=caps.scaled
    )
    w.history = [e for e in old.history if e.entered_ms <= cursor.at_ms]
    if w.history and w.history[-1].exited_ms is not None and w.history[-1].exited_ms > cursor.at_ms:
        w.history[-1] = w.history[-1]._replace(exited_ms=None)
    w.fired = [f for f in old.fired if f.at_ms <= cursor.at_ms]
    w.pending, w.above = dict(cursor.pending), set(cursor.above)
    after = (cursor.at_ms, _LAST_MID)
    _flags_until(w, after)
    w._refresh_signals()
    w.signals["orders"] = cursor.orders  # as the walk had them at the cursor
    w.signals["monetary"] = cursor.monetary
    w.signals["customer"] = cursor.orders > 0
    _continue(w, after, until, inclusive=inclusive, resumed=True, snapshots=snapshots)
    return w


_LAST_MID = "\U0010ffff"


def walk(state: ContactState, model: Model, lc: Lifecycle, as_of_ms: int, resume_before: int | None = None) -> Journey:
    """The contact's journey at ``as_of_ms`` (see the module docstring).

    The walk goes through the contact's checkpoints to its newest event, then lets time pass to
    ``as_of_ms`` (a tick). It keeps a few of its positions (``Journey.cursors``). ``resume_before``:
    the caller knows that nothing changed at or after that instant but new events (no new traits,
    no merge): the walk resumes from the latest position before it instead of walking again from
    the anchor, with the same result. None: walk from the anchor.
    """
    old = state.journey
    frontier = min(as_of_ms, state.last_seen_ms if state.last_seen_ms is not None else as_of_ms)
    start: Cursor | None = None
    kept: list[Cursor] = []
    if resume_before is not None and old is not None and old.model_version == model.version:
        kept = [c for c in old.cursors if c.at_ms < resume_before and c.at_ms <= frontier]
        start = kept[-1] if kept else None
    snapshots: list[Cursor] = []
    if old is not None and start is not None:
        w = _resume(state, model, lc, old, start, (frontier, _LAST_MID), snapshots)
    else:
        kept = []
        w = _run(state, model, lc, (frontier, _LAST_MID), inclusive=True, snapshots=snapshots)
    # the positions kept depend on the events' instants only (see :func:`_keep`), not on how
    # they were batched: the state is the same whatever the arrival order. Those before the
    # start stay while fewer than so many later ones (this walk's candidates included) cross
    # their grid; the start itself, when it is one of them, this walk made again.
    grains = _grains(model)
    older = [c for c in reversed(kept[:-1]) if c.periodic]  # newest first
    counts = w.crossings or [0] * len(grains)
    stays = _keep([(c.ref_ms, c.at_ms + 1) for c in older], grains, counts)
    positions = [*(c for c, stay in reversed(list(zip(older, stays, strict=True))) if stay), *snapshots]
    positions.append(w.position())
    w.advance(as_of_ms, inclusive=True)
    w._decay_to(as_of_ms)
    persona = None
    w.signals["engagement"] = w.score
    for p in lc.personas:
        if all(g.test(w.signals) for g in p.when):
            persona = p.id
            break
    return Journey(
        stage=w.stage,
        since_ms=w.since,
        walked_to_ms=as_of_ms,
        history=w.history[-MAX_HISTORY:],
        fired=w.fired[-MAX_FIRED:],
        flags=dict(sorted(w._flags().items())),
        persona=persona,
        anchor=old.anchor if old is not None else None,
        next_due_ms=w._next_due(),
        model_version=model.version,
        cursors=positions,
    )


def anchor_at(
    state: ContactState, model: Model, lc: Lifecycle, ts: int, mid: str, resume_before: int | None = None
) -> None:
    """Settle the journey up to checkpoint ``(ts, mid)``: called before the hits up to it are
    folded away, so later walks start there with the history before it fixed.

    ``resume_before`` (as for :func:`walk`): nothing changed at or after that instant but new
    events. The anchor is then reached from the latest kept position before both instants (a few
    checkpoints, not every one since the previous anchor), and when every new event is later
    than the anchor, the journey keeps its positions after it, so the walk that follows resumes
    too. The result is the one a walk from the previous anchor gives."""
    old = state.journey
    start: Cursor | None = None
    stands = old is not None and resume_before is not None and old.model_version == model.version
    if old is not None and resume_before is not None and stands:
        if old.deferred_since is not None:
            resume_before = min(resume_before, old.deferred_since)
        usable = [c for c in old.cursors if c.at_ms < min(ts, resume_before)]
        start = usable[-1] if usable else None
    if old is not None and start is not None:
        w = _resume(state, model, lc, old, start, (ts, mid), inclusive=False)
    else:
        w = _run(state, model, lc, (ts, mid), inclusive=False)
    cursor = Cursor(
        at_ms=ts,
        stage=w.stage,
        since_ms=w.since,
        mid=mid,
        pending=dict(w.pending),
        above=sorted(w.above),
        group_above={g: sorted(above) for g, above in w.gabove.items() if above},
    )
    # replaced, not changed: callers compare the old journey with the new
    if old is not None and stands and resume_before is not None and resume_before > ts:
        # the previous walk stands up to the earliest new event: its history and positions after
        # the anchor stay for the next walk to resume from
        kept = [c for c in old.cursors if ts <= c.at_ms < resume_before]
        state.journey = replace(old, anchor=cursor, cursors=kept)
        return
    state.journey = Journey(
        stage=w.stage,
        since_ms=w.since,
        walked_to_ms=ts,
        history=w.history[-MAX_HISTORY:],
        fired=w.fired[-MAX_FIRED:],
        flags=old.flags if old is not None else {},
        persona=old.persona if old is not None else None,
        anchor=cursor,
    )
