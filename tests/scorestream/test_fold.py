"""The fold entry (``scorestream.fold.step``): what it decides for a contact, that the worker's
contacts agent sends exactly that, and that it depends on the set of messages, not their order or
batching."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import streams.agents
import streams.population_feed
from schemas.state import Envelope, decode_state, encode
from scorestream import ContactState, Event
from scorestream.fold import Folded, Message, SegmentOf, Tick, step
from scorestream.identity import MergeInto
from scorestream.population import (
    PopulationModel,
    build_partition_summary,
    build_population_model,
    contact_hash,
    customer_facts,
    segment_for,
)
from tests.factories import DAY, DEFAULT_MODEL, HOUR, T0, make_event
from tests.streams.test_agents_isolation import Worker, internal, record

MODEL = DEFAULT_MODEL
CEO = {"email": "ann@acme.com", "title": "CEO", "industry": "software", "employees": 200, "address": {"country": "US"}}


def identify(ts: int, user: str = "ann") -> Event:
    return make_event(kind="identify", event=None, user_id=user, timestamp_ms=ts, traits=dict(CEO))


def track(name: str, ts: int, user: str = "ann", **props: Any) -> Event:
    return make_event(event=name, user_id=user, timestamp_ms=ts, properties=props)


def page(path: str, ts: int, user: str = "ann") -> Event:
    return make_event(kind="page", event=None, user_id=user, path=path, timestamp_ms=ts)


def order(ts: int, order_id: str, total: float, user: str = "ann") -> Event:
    return track("Order Completed", ts, user, order_id=order_id, total=total)


# a well-fitting contact who becomes a lead, then an MQL, then buys
STORY = [
    identify(T0),
    track("Whitepaper Downloaded", T0 + HOUR),
    track("Webinar Registered", T0 + 2 * HOUR),
    page("/pricing", T0 + 3 * HOUR),
    page("/pricing/plans", T0 + 4 * HOUR),
    order(T0 + 2 * DAY, "o-1", 400.0),
]


def population() -> PopulationModel:
    """The population's cut from ten other customers, folded by the same entry."""
    facts = []
    for i in range(10):
        user = f"buyer-{i}"
        orders = [order(T0 - (30 - i - j) * DAY, f"{user}-{j}", 20.0 * (i + 1), user) for j in range(1 + i % 3)]
        state = step(None, user, orders, MODEL).state
        assert state is not None
        f = customer_facts(state.value)
        assert f is not None
        facts.append((contact_hash(user), f))
    now = T0 + DAY
    return build_population_model([build_partition_summary(0, facts, now, 10)], now, None, 10, 10_000)


def cut(model: PopulationModel) -> SegmentOf:
    def segment_of(state: ContactState, as_of_ms: int) -> str | None:
        return segment_for(state.value, as_of_ms, model, MODEL.value.segments)

    return segment_of


def kinds(folded: Folded) -> list[tuple[str, str | None, str | None]]:
    return [(t["type"], t["contact_id"], t["rule"]) for t in folded.triggers]


def moves(folded: Folded) -> list[tuple[Any, Any]]:
    return [(t["before"], t["after"]) for t in folded.triggers if t["type"] != "score.threshold_crossed"]


def test_the_fold_announces_stage_changes_and_the_rfm_segment_and_records_the_segment() -> None:
    segment_of = cut(population())
    engaged = step(None, "ann", STORY[:5], MODEL, segment_of)
    assert kinds(engaged) == [
        ("stage.changed", "ann", "identified"),
        ("stage.changed", "ann", "marketing-qualified"),
        ("score.threshold_crossed", "ann", "engagement-up-30"),
    ]
    assert moves(engaged) == [("subscriber", "lead"), ("lead", "mql")]
    assert engaged.state is not None and engaged.state.rfm_segment is None  # not a customer: no segment
    assert engaged.next_due_ms is not None and engaged.state.journey is not None
    assert engaged.next_due_ms == engaged.state.journey.next_due_ms

    bought = step(engaged.state, "ann", STORY[5:], MODEL, segment_of)
    assert bought.state is not None
    segment = bought.state.rfm_segment
    assert segment is not None  # recorded in the state, so the next fold does not announce it again
    assert kinds(bought) == [
        ("stage.changed", "ann", "completed-order"),
        ("score.threshold_crossed", "ann", "engagement-up-60"),
        ("rfm.segment_changed", "ann", "rfm-segments"),
    ]
    assert moves(bought) == [("mql", "customer"), (None, segment)]
    assert bought.triggers[-1]["at_ms"] == T0 + 2 * DAY and bought.triggers[-1]["rule"] == "rfm-segments"
    assert all(t["id"].startswith("trg_") and t["model_version"] == MODEL.version for t in bought.triggers)
    again = step(bought.state, "ann", [page("/docs", T0 + 2 * DAY + HOUR)], MODEL, segment_of)
    assert again.triggers == []


def test_without_a_cut_the_segment_is_neither_judged_nor_changed() -> None:
    state = step(None, "ann", STORY, MODEL, cut(population())).state
    assert state is not None and state.rfm_segment is not None
    kept = state.rfm_segment
    folded = step(state, "ann", [page("/docs", T0 + 3 * DAY)], MODEL)
    assert folded.state is not None and folded.state.rfm_segment == kept
    assert [t["type"] for t in folded.triggers] == []


def test_a_forwarding_record_passes_messages_on_with_no_triggers_and_nothing_due() -> None:
    anon = "anonymous:a-1"

    def visit(path: str, ts: int) -> Event:
        return make_event(kind="page", event=None, user_id=None, anonymous_id="a-1", path=path, timestamp_ms=ts)

    merged = step(None, anon, [visit("/", T0), MergeInto("ann", "link")], MODEL, cut(population()))
    assert merged.state is not None and merged.state.merged_into == "ann"
    assert [o.key for o in merged.outgoing] == ["ann"]  # its state, as an Absorb
    assert merged.triggers == [] and merged.next_due_ms is None
    pricing = visit("/pricing", T0 + HOUR)
    late = step(merged.state, anon, [pricing, Tick(T0 + DAY)], MODEL)
    assert [(o.key, o.item) for o in late.outgoing] == [("ann", pricing)]
    assert late.triggers == [] and late.next_due_ms is None
    assert step(None, "nobody", [Tick(T0)], MODEL) == Folded(None, [], [], None)  # a tick for no one


def test_the_contacts_agent_sends_what_the_fold_decides(monkeypatch: pytest.MonkeyPatch) -> None:
    feeds: list[Any] = []
    real = streams.population_feed.register_population

    def register_population(*args: Any) -> Any:
        feeds.append(real(*args))
        return feeds[-1]

    monkeypatch.setattr(streams.agents, "register_population", register_population)
    worker = Worker()
    (feed,) = feeds
    feed.model = population()
    halves = [STORY[:3], STORY[3:]]
    batches = [
        [record("t.contacts", i, internal("ann", *(Envelope(kind="event", event=e) for e in half)))]
        for i, half in enumerate(halves)
    ]
    worker.run("contacts", *batches)

    topics: list[Any] = [worker.topics["triggers"], worker.w.private_triggers]
    sent = [orjson.loads(s.value) for topic in topics for s in topic.sent]
    expected: list[dict[str, Any]] = []
    state: ContactState | None = None
    for half in halves:
        folded = step(state, "ann", half, MODEL, feed.segment_of)
        expected += folded.triggers
        state = folded.state
    assert [t["type"] for t in expected].count("stage.changed") == 3
    assert [t["type"] for t in expected][-1] == "rfm.segment_changed"
    assert sent == expected
    assert state is not None and decode_state(worker.tables["contacts"]["ann"]) == decode_state(encode(state))


# --- order independence ------------------------------------------------------------------------

AS_OF = T0 + 30 * DAY


def fold_all(batches: list[list[Event]]) -> tuple[bytes, list[dict[str, Any]]]:
    """Every batch folded in turn (through the wire format), then the clock at ``AS_OF``: the final
    state's bytes and every trigger announced on the way."""
    state: ContactState | None = None
    triggers: list[dict[str, Any]] = []
    inboxes: list[Sequence[Message]] = [*batches, [Tick(AS_OF)]]
    for inbox in inboxes:
        folded = step(state, "ann", inbox, MODEL)
        triggers += folded.triggers
        assert folded.state is not None
        state = decode_state(encode(folded.state))
    return encode(state), triggers


def changes(triggers: list[dict[str, Any]]) -> set[tuple[str, int, str, bytes]]:
    """What each trigger says happened (not the stage it came from)."""
    return {(t["type"], t["at_ms"], t["rule"], orjson.dumps(t["after"], option=orjson.OPT_SORT_KEYS)) for t in triggers}


def split(events: list[Event], cuts: set[int]) -> list[list[Event]]:
    edges = sorted(cuts)
    return [events[a:b] for a, b in zip([0, *edges], [*edges, len(events)], strict=True)]


CANONICAL = fold_all([STORY])


@settings(max_examples=40, deadline=None)
@given(st.permutations(list(range(len(STORY)))), st.sets(st.integers(1, len(STORY) - 1), max_size=3))
def test_a_shuffled_inbox_in_any_batches_folds_to_the_same_state_and_announces_every_trigger(
    order_: list[int], cuts: set[int]
) -> None:
    """The state is the same, and every change the one-batch fold announces is announced. An event
    older than the contact's history may rewrite it: a contact that became a lead by engagement
    before its earlier identify arrived became one by being identified, and a customer entered
    from ``lead`` was later seen entering from ``mql``. What was announced stays announced (a
    trigger is never taken back, and an entry already announced is not announced again with
    another ``before``), so a run holds these changes and may hold more, never fewer."""
    state, triggers = fold_all(split([STORY[i] for i in order_], cuts))
    assert state == CANONICAL[0]
    assert changes(triggers) >= changes(CANONICAL[1])


@settings(max_examples=20, deadline=None)
@given(st.sets(st.integers(1, len(STORY) - 1), max_size=4))
def test_an_inbox_in_time_order_in_any_batches_announces_exactly_the_same_triggers(cuts: set[int]) -> None:
    state, triggers = fold_all(split(STORY, cuts))
    assert state == CANONICAL[0]
    assert sorted(t["id"] for t in triggers) == sorted(t["id"] for t in CANONICAL[1])
    assert len(CANONICAL[1]) == 7  # lead, mql, customer; up 30, up 60; down 60, down 30 by the clock


@settings(max_examples=20, deadline=None)
@given(st.permutations(list(range(len(STORY)))))
def test_one_inbox_in_any_order_gives_the_same_triggers(order_: list[int]) -> None:
    shuffled = step(None, "ann", [STORY[i] for i in order_], MODEL)
    in_order = step(None, "ann", STORY, MODEL)
    assert shuffled.triggers == in_order.triggers and len(in_order.triggers) >= 3
    assert shuffled.state == in_order.state
