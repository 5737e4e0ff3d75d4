"""The fold: one contact's messages in; its new state, what it sends on and its triggers out.

:func:`step` is the one entry every caller uses: the worker's contacts agent
(``streams/agents.py``), replay and its bench (``analytics/replay.py``), shadow models (a shadow
namespace runs the same agent) and the tests. It decides everything about a contact; a caller only
moves bytes (decode the inbox, encode the state, write it, send the outgoing messages and the
triggers, index the next due instant for its clock).

::

    inbox (events, merges, absorbed states, ticks, erase orders; in partition order)
      -> events folded, merges and absorbs applied          (scorestream.contact)
      -> an erase order forgets everything before it        (Erased: what the contact held)
      -> the lifecycle walked once, or put off a second     (scorestream.walk)
      -> triggers: lifecycle changes, the RFM segment       (scorestream.triggers)
      -> Folded(state, outgoing, triggers, next_due_ms, erased)

Pure: no clock (time comes from the events and from :class:`Tick`), no I/O. What depends on the
whole population, the RFM segment's cut, is an argument (``segment_of``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

from scorestream.adjustments import CHANNEL as ADJUSTMENT_CHANNEL
from scorestream.adjustments import REVERTED
from scorestream.contact import absorb, apply_events, can_merge_into, log_email_facts
from scorestream.events import Event
from scorestream.identity import MergeInto
from scorestream.interests import cart_payload, interest_gate
from scorestream.journey import Journey
from scorestream.population import ChurnJudgement
from scorestream.privacy import Erase
from scorestream.rules.interests import InterestRules
from scorestream.rules.lifecycle import Lifecycle
from scorestream.rules.model import Model
from scorestream.state import ContactState, new_contact
from scorestream.triggers import journey_triggers, make_trigger
from scorestream.walk import walk

WALK_DEBOUNCE_MS = 1_000
_NO_EVENT = 1 << 62  # later than any event: a step with ticks only resumes from the newest position

SegmentOf = Callable[[ContactState, int], str | None]
"""The contact's RFM segment at an instant under the population's current cut (the worker passes
``streams.population_feed.PopulationFeed.segment_of``; ``scorestream.population.segment_for`` is the rule)."""

ChurnOf = Callable[[ContactState, int], ChurnJudgement | None]
"""The contact's churn-risk band at an instant under the population's current CLV fit, when it was
entered and when time alone next changes it (the worker passes
``streams.population_feed.PopulationFeed.churn_of``; ``scorestream.population.churn_for`` is the rule)."""


@dataclass(frozen=True, slots=True)
class Absorb:
    """A contact's full state on its way into the contact it merged into."""

    state: ContactState


@dataclass(frozen=True, slots=True)
class Tick:
    """The worker's clock reached ``at_ms``: let time-driven transitions and timers happen."""

    at_ms: int


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A message the contacts stage sends on: to ``key``, an event, merge or absorb."""

    key: str
    item: Event | MergeInto | Absorb


@dataclass(frozen=True, slots=True)
class Erased:
    """A regulation's erase order applied to the contact: ``state`` is what it held at that point
    of its inbox (None: nothing), for the caller's report and its clean-up (views, account,
    indexes). The state is not kept."""

    regulation_id: str
    state: ContactState | None


Message = Event | MergeInto | Absorb | Tick | Erase
"""What a contact's inbox holds."""


class Folded(NamedTuple):
    """What one :func:`step` decided for a contact.

    ``state``: the new state (None: the contact is still unknown, e.g. it was only ticked);
    ``outgoing``: messages for other contacts; ``triggers``: records for the ``triggers`` topic
    (:func:`scorestream.triggers.make_trigger`); ``next_due_ms``: when time alone would next change
    the contact (the instant its next :class:`Tick` is due), None if nothing would; ``erased``:
    the erase orders the inbox held, in order (:class:`Erased`: the caller deletes the stored
    state and reports each).
    """

    state: ContactState | None
    outgoing: list[Outgoing]
    triggers: list[dict[str, Any]]
    next_due_ms: int | None
    erased: tuple[Erased, ...] = ()


def step(
    state: ContactState | None,
    contact_id: str,
    inbox: Iterable[Message],
    model: Model,
    segment_of: SegmentOf | None = None,
    churn_of: ChurnOf | None = None,
) -> Folded:
    """Apply one contact's messages, in partition order: the whole per-contact fold.

    Events fold into the state; ``MergeInto`` sends the state to its new owner and turns this
    contact into a forwarding record (which keeps its data, so a redelivered merge re-sends it);
    ``Absorb`` merges another contact's state in; ``Tick`` moves the contact's clock on (a
    contact not known yet ignores it). Messages for a forwarding record pass through, and it has
    no triggers and nothing due. ``Erase`` (a regulation's order, :mod:`scorestream.privacy`)
    forgets the contact and everything before it in the inbox (a forwarding record too: it is not
    passed on): what it held is returned in ``Folded.erased`` and the messages after it start a
    new contact from nothing, as if the erased past had never been seen (the events of the
    erased past are dropped before the fold: ``PrivacyList.decide``). The lifecycle is then walked
    once, to the later of the newest event and the latest tick (or put off for up to
    ``WALK_DEBOUNCE_MS``, see :func:`_walk_on`).

    Triggers: what the walk added to the journey (``journey_triggers``), and
    ``rfm.segment_changed`` when the segment ``segment_of`` gives at that instant differs from the
    one recorded in the state (the state then records it). ``segment_of`` None: no cut is known
    (a replay without the population), the segment is neither judged nor changed. Likewise
    ``customer.churn_risk_changed`` from ``churn_of`` (the band under the CLV fit), whose next
    change by time alone is also due (``next_due_ms``): the band moves on at its exact instant.

    ``state`` may be changed in place. Within the bounds of ``scorestream.contact``, the same
    messages in any order and any batching give the same state. The triggers are the same for one
    inbox in any order, and for messages in event-time order in any batching; an event older than
    what was already walked may rewrite the history announced before (a contact that became a lead
    by engagement turns out to have become one by identifying first): what was announced stays
    announced and the rewritten entries are announced too, so a run may hold more triggers, never
    fewer changes. Trigger ids are stable: a consumer delivers a redelivered one once.
    """
    before = state.journey if state is not None else None
    inbox_pass = _Inbox(state, contact_id, model)
    for item in inbox:
        inbox_pass.take(item)
    inbox_pass.flush()
    state = inbox_pass.state
    erased = tuple(inbox_pass.erased)
    if erased:
        before = None  # the erased contact's journey was announced; a new one starts from nothing
    if state is None:
        return Folded(None, inbox_pass.out, [], None, erased)
    if state.merged_into is not None:
        return Folded(state, inbox_pass.out, [], None, erased)
    lifecycle = model.lifecycle
    triggers: list[dict[str, Any]] = []
    next_due: int | None = None
    if lifecycle is not None:
        _walk_on(state, model, lifecycle, inbox_pass.resume_before, inbox_pass.ticked)
        journey = state.journey
        if journey is not None and journey is not before:
            triggers.extend(journey_triggers(before, journey, contact_id, model, lifecycle))
            if model.interests is not None:
                _with_interests(triggers, state, model, model.interests)
            next_due = journey.next_due_ms
    if segment_of is not None:
        _judge_segment(state, contact_id, model, segment_of, triggers)
    if churn_of is not None:
        churn_due = _judge_churn(state, contact_id, model, churn_of, triggers)
        if churn_due is not None:
            next_due = churn_due if next_due is None else min(next_due, churn_due)
    return Folded(state, inbox_pass.out, triggers, next_due, erased)


class _Inbox:
    """One pass over a contact's inbox: events are gathered and folded together up to the next
    message of another kind (a merge, an absorbed state, a tick), which applies in its place."""

    __slots__ = (
        "contact_id",
        "erased",
        "model",
        "out",
        "pending",
        "resume_before",
        "state",
        "ticked",
        "traits_sent",
    )

    def __init__(self, state: ContactState | None, contact_id: str, model: Model) -> None:
        self.state = state
        self.contact_id = contact_id
        self.model = model
        self.out: list[Outgoing] = []
        self.pending: list[Event] = []
        # the lifecycle walk resumes before the earliest new event, unless a trait changed value
        # or a merge happened (then it walks again from its anchor)
        self.resume_before: int | None = _NO_EVENT
        self.ticked = False
        self.traits_sent = False
        self.erased: list[Erased] = []

    def flush(self) -> None:
        """Fold the events gathered so far."""
        if not self.pending:
            return
        state = self.state
        traits = dict(state.traits) if state is not None and self.traits_sent else None
        if state is not None:  # a late e-mail fact may re-judge earlier hits: walk from there
            self.resume_before = log_email_facts(state, self.pending, self.model, self.resume_before)
        state = self.state = apply_events(state, self.contact_id, self.pending, self.model, self.resume_before)
        if self.traits_sent and state.traits != traits:
            self.resume_before = None
        self.pending = []
        self.traits_sent = False

    def take(self, item: Message) -> None:
        if isinstance(item, Erase):
            self._erase(item)
            return
        state = self.state
        if state is not None and state.merged_into is not None:
            self._forward(state, state.merged_into, item)
            return
        if isinstance(item, Event):
            self.pending.append(item)
            self.traits_sent = self.traits_sent or (item.kind == "identify" and bool(item.traits))
            if self.resume_before is not None:
                self.resume_before = min(self.resume_before, item.timestamp_ms)
            if item.event == REVERTED and item.channel == ADJUSTMENT_CHANNEL:
                self.resume_before = None  # a revert changes past points: walk again from the anchor
            return
        if isinstance(item, Tick):
            self.ticked = True
            self.flush()
            state = self.state
            if state is not None and (state.ticked_ms is None or item.at_ms > state.ticked_ms):
                state.ticked_ms = item.at_ms
            return
        self.resume_before = None
        self.flush()
        if isinstance(item, Absorb):
            self._absorb(item.state)
        else:
            self._merge(item.target)

    def _erase(self, order: Erase) -> None:
        """Forget the contact: what it held (the messages before the order folded in, so the
        report names every id they brought) is kept for the caller only; the pass starts again
        from nothing."""
        self.flush()
        self.erased.append(Erased(order.regulation_id, self.state))
        self.state = None
        self.resume_before = _NO_EVENT
        self.ticked = False
        self.traits_sent = False

    def _forward(self, state: ContactState, target: str, item: Message) -> None:
        """A forwarding record passes messages on to the contact it merged into."""
        if isinstance(item, MergeInto):
            if item.target == target:  # a redelivered merge: the state again
                self.out.append(Outgoing(target, Absorb(state)))
        elif not isinstance(item, (Tick, Erase)):  # the contact it merged into keeps its own clock
            self.out.append(Outgoing(target, item))

    def _absorb(self, source: ContactState) -> None:
        state = self.state if self.state is not None else new_contact(self.contact_id, self.model)
        if source.contact_id != self.contact_id:
            state = absorb(state, source, self.model)
        self.state = state

    def _merge(self, target: str) -> None:
        if not can_merge_into(self.state, target):
            return
        state = self.state if self.state is not None else new_contact(self.contact_id, self.model)
        state.merged_into = target
        self.state = state
        self.out.append(Outgoing(target, Absorb(state)))


def _walk_on(state: ContactState, model: Model, lifecycle: Lifecycle, resume_before: int | None, ticked: bool) -> None:
    """Walk the contact's lifecycle to the later of its newest event and its latest tick.

    Late events for a contact walked less than ``WALK_DEBOUNCE_MS`` ago (a very busy contact whose
    events arrive slightly out of order) put the walk off instead: walking again would redo
    everything after them on every batch. The journey records what is pending
    (``deferred_since``) and comes due within the second; the tick then walks over all of them,
    with the same result.
    """
    as_of = max(state.last_seen_ms or 0, state.ticked_ms or 0)
    journey = state.journey
    if journey is not None and journey.deferred_since is not None and resume_before is not None:
        resume_before = min(resume_before, journey.deferred_since)
    cursor = journey.cursor if journey is not None else None
    if (
        journey is not None
        and cursor is not None
        and not ticked
        and resume_before is not None
        and resume_before <= cursor.at_ms
        and as_of - journey.walked_to_ms < WALK_DEBOUNCE_MS
    ):
        due = journey.walked_to_ms + WALK_DEBOUNCE_MS
        state.journey = replace(
            journey,
            deferred_since=resume_before,
            next_due_ms=due if journey.next_due_ms is None else min(journey.next_due_ms, due),
        )
    else:
        state.journey = walk(state, model, lifecycle, as_of, resume_before=resume_before)


def _with_interests(triggers: list[dict[str, Any]], state: ContactState, model: Model, rules: InterestRules) -> None:
    """An abandoned cart's trigger carries the contact's top interests and the cart's products not
    bought (``interests``, outside what the trigger's id is made of: the same abandonment announced
    again keeps its id)."""
    gate = interest_gate(state.consent_log, model.consent)
    for trigger in triggers:
        if trigger["type"] == "cart.abandoned":
            trigger["interests"] = cart_payload(state.interests, rules, trigger["at_ms"], gate)


def _judge_segment(
    state: ContactState, contact_id: str, model: Model, segment_of: SegmentOf, triggers: list[dict[str, Any]]
) -> None:
    """Record the contact's RFM segment at its latest instant; a change is a trigger."""
    as_of = max(state.last_seen_ms or 0, state.ticked_ms or 0)
    segment = segment_of(state, as_of)
    if segment == state.rfm_segment:
        return
    triggers.append(
        make_trigger(
            "rfm.segment_changed",
            at_ms=as_of,
            model_version=model.version,
            contact_id=contact_id,
            before=state.rfm_segment,
            after=segment,
            rule="rfm-segments",
        )
    )
    state.rfm_segment = segment


def _judge_churn(
    state: ContactState, contact_id: str, model: Model, churn_of: ChurnOf, triggers: list[dict[str, Any]]
) -> int | None:
    """Record the contact's churn-risk band at its latest instant; a change is a
    ``customer.churn_risk_changed`` at the instant the band was entered (computed from the ledger
    and the fit, not from when the tick came: the same change has the same id). Returns the
    instant time alone moves the band on (the fold's due instant), None if never."""
    as_of = max(state.last_seen_ms or 0, state.ticked_ms or 0)
    judged = churn_of(state, as_of)
    band = None if judged is None else judged.band
    if band != state.churn_band:
        triggers.append(
            make_trigger(
                "customer.churn_risk_changed",
                at_ms=as_of if judged is None else judged.entered_ms,
                model_version=model.version,
                contact_id=contact_id,
                before=state.churn_band,
                after=band,
                rule="churn-risk-bands",
            )
        )
        state.churn_band = band
    return None if judged is None else judged.next_change_ms


def journey_at(state: ContactState, model: Model, now_ms: int) -> Journey | None:
    """The contact's journey at ``now_ms`` for a reader: the stored one, or walked on when something
    came due since (the worker's tick for it is at most a second away; the answer does not wait for
    it). The state is not changed and nothing is announced: the tick does that."""
    journey = state.journey
    if journey is None or model.lifecycle is None or state.merged_into is not None:
        return journey
    if journey.next_due_ms is not None and journey.next_due_ms <= now_ms:
        return walk(state, model, model.lifecycle, now_ms)
    return journey
