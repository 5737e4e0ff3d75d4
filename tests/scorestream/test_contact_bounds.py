"""The state's bounds (docs/architecture.md, "Bounds"): past them the fold is still a function of the
set of events, duplicates change nothing, and what the scores need is kept exactly.

Ledger: at most ``max_orders`` orders itemised, the older ones folded into an exact summary; the
facts (RFM, CLV inputs, the walk's purchase timeline) read from the bounded ledger equal those read
from the full list. Traits and account members: the most recent kept, whatever the arrival order.
"""

from __future__ import annotations

import dataclasses
import random
from bisect import bisect_right
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.accounts import decode_account
from schemas.accounts import encode as encode_account
from schemas.state import decode_state, encode
from scorestream import ContactState, Event, apply_events
from scorestream.accounts import MAX_MEMBERS, AccountState, MemberUpdate, apply_member_updates
from scorestream.contact import MAX_TRAIT_BYTES, MAX_TRAIT_KEY, MAX_TRAITS, read_traits
from scorestream.fold import step
from scorestream.rfm import (
    DAY_MS,
    CustomerValue,
    apply_purchase_events,
    clv_summary,
    facts_timeline,
    summary,
)
from scorestream.rules.value import ValueConfig
from scorestream.scoring import fit_of
from scorestream.state import STATE_VERSION
from tests.factories import DAY, DEFAULT_MODEL, HOUR, MINUTE, T0, make_event

PROPERTY = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

SMALL = ValueConfig(
    base_currency="EUR",
    rates={"USD": 0.5, "GBP": 1.17},
    max_orders=32,
    max_refunds_per_order=3,
    max_refunds=200,  # out of reach here: see test_the_refunds_of_itemised_orders_are_bounded_in_all
    max_pending_refunds=16,
)
FULL = dataclasses.replace(SMALL, max_orders=10**9)
WINDOW = 8  # how far an event may arrive from its place in event-time order (see _arrival)


def order(order_id: str, ts: int, **props: Any) -> Event:
    return make_event(
        event="Order Completed", channel="store", timestamp_ms=ts, properties={"order_id": order_id, **props}
    )


def refund(order_id: str, ts: int, **props: Any) -> Event:
    return make_event(
        event="Order Refunded", channel="store", timestamp_ms=ts, properties={"order_id": order_id, **props}
    )


def _history(rnd: random.Random, n: int) -> list[Event]:
    """``n`` orders in event-time order, some sharing an instant (one CLV transaction), free ones,
    unknown currencies, and refunds (full, partial, several) shortly after their order."""
    events: list[Event] = []
    ts = T0
    for i in range(n):
        if rnd.random() < 0.7:
            ts += rnd.choice([MINUTE, HOUR, DAY, 3 * DAY])
        amount = rnd.choice([0, 0.0, 9.99, 0.1, 1234.5, 7.3 ** rnd.randint(-3, 9), None])
        props: dict[str, Any] = {"currency": rnd.choice(["EUR", "EUR", "USD", "GBP", "XXX"])}
        if amount is not None:
            props["total"] = amount
        events.append(order(f"o{i}", ts, **props))
        for k in range(rnd.choice([0, 0, 0, 1, 1, 2, 4])):
            part = {"total": rnd.choice([1, 5.5, 10_000])} if rnd.random() < 0.7 else {}
            events.append(refund(f"o{i}", ts + (k + 1) * 1000, refund_id=f"r{i}-{k}", **part))
    return events


def _arrival(rnd: random.Random, events: list[Event], copies: int) -> list[Event]:
    """The events displaced by at most ``WINDOW`` places from event-time order, ``copies`` of them
    re-sent within the same distance (at-least-once delivery, a producer retry)."""
    keyed = [(i + rnd.uniform(0, WINDOW), e) for i, e in enumerate(events)]
    for _ in range(copies):
        i = rnd.randrange(len(events))
        keyed.append((i + rnd.uniform(0, WINDOW), events[i]))
    keyed.sort(key=lambda pair: pair[0])
    return [e for _, e in keyed]


def _batches(rnd: random.Random, events: list[Event]) -> list[list[Event]]:
    out, i = [], 0
    while i < len(events):
        size = rnd.choice([1, 1, 2, 3, 7, 20])
        out.append(events[i : i + size])
        i += size
    return out


def _ledger(batches: list[list[Event]], config: ValueConfig) -> CustomerValue:
    value: CustomerValue | None = None
    for batch in batches:
        value = apply_purchase_events(value, batch, config)
    assert value is not None
    return value


@PROPERTY
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(40, 160), copies=st.integers(0, 30))
def test_past_the_bound_the_ledger_is_a_function_of_the_set_and_its_facts_are_exact(
    seed: int, n: int, copies: int
) -> None:
    rnd = random.Random(seed)
    history = _history(rnd, n)
    calm = apply_purchase_events(None, history, SMALL)
    shuffled = _ledger(_batches(rnd, _arrival(rnd, history, copies)), SMALL)
    one_by_one = _ledger([[e] for e in history], SMALL)
    assert shuffled == calm == one_by_one
    assert len(calm.orders) <= SMALL.max_orders
    assert calm.folded is not None and calm.folded.orders == n - len(calm.orders)
    assert len(calm.refunds) <= SMALL.max_refunds + SMALL.max_pending_refunds

    full = apply_purchase_events(None, history, FULL)
    assert full.folded is None and len(full.orders) == n
    newest = max(e.timestamp_ms for e in history)
    for as_of in (newest, newest + 40 * DAY):
        assert summary(calm, as_of) == summary(full, as_of)
        for unit in (DAY_MS, 1):
            assert clv_summary(calm, as_of, unit) == clv_summary(full, as_of, unit)
    # the walk's purchase timeline: from the fold on, every step as the full ledger's, once the
    # refunds folded with their orders are due (they count from the fold: see "Bounds")
    steps, reference = facts_timeline(calm), facts_timeline(full)
    assert steps[0].key == calm.folded.until
    kept = {o.order_id for o in calm.orders}
    folded_refunds = [(e.timestamp_ms, e.message_id) for e in history if e.event == "Order Refunded"]
    folded_refunds = [
        k
        for k, e in zip(folded_refunds, [e for e in history if e.event == "Order Refunded"], strict=True)
        if e.properties["order_id"] not in kept
    ]
    due = max([calm.folded.until, *folded_refunds])
    compared = 0
    for s in steps:
        if s.key >= due:
            at = bisect_right(reference, s.key, key=lambda r: r.key) - 1
            assert (s.frequency, s.monetary) == (reference[at].frequency, reference[at].monetary)
            compared += 1
    assert compared >= 1 and steps[-1].key == reference[-1].key


def test_an_order_older_than_the_fold_is_taken_for_a_copy_and_ignored() -> None:
    history = [order(f"o{i}", T0 + i * HOUR, total=10) for i in range(100)]
    value = apply_purchase_events(None, history, SMALL)
    assert value.folded is not None and summary(value, T0 + 100 * HOUR).frequency == 100
    assert apply_purchase_events(value, [history[0], history[40]], SMALL) == value  # re-sent: no double count
    # a copy re-stamped later (a store system re-sending a web order) of a recently folded order
    assert apply_purchase_events(value, [order("o3", T0 + 150 * HOUR, total=10)], SMALL) == value
    # an order that late cannot be told from a copy: it is not counted (docs/architecture.md, Bounds)
    late = order("brand-new", T0 + 5 * HOUR + 1, total=99)
    assert apply_purchase_events(value, [late], SMALL) == value


def test_a_refund_arriving_after_its_order_folded_still_applies() -> None:
    history = [order(f"o{i}", T0 + i * HOUR, total=10 + i % 3, currency=("EUR", "USD")[i % 2]) for i in range(100)]
    value = apply_purchase_events(None, history, SMALL)
    assert value.folded is not None and {"o3", "o7", "o20"} <= {fo.order_id for fo in value.folded.recent}
    refunds = [
        refund("o3", T0 + 200 * HOUR),  # full
        refund("o7", T0 + 201 * HOUR, total=4, refund_id="a"),  # partial, then the rest
        refund("o7", T0 + 202 * HOUR, total=40, refund_id="b"),
        refund("o20", T0 + 203 * HOUR, total=2.5),  # partial: the order still counts
        refund("o99", T0 + 204 * HOUR, total=1),  # an itemised order
    ]
    late = apply_purchase_events(value, refunds, SMALL)
    full = apply_purchase_events(None, history + refunds, FULL)
    for as_of in (T0 + 202 * HOUR, T0 + 300 * HOUR):
        assert summary(late, as_of) == summary(full, as_of)
    # CLV: partial refunds exactly; a late refund that removes a folded order leaves its
    # transaction counted (one per instant: the summary does not know who else bought then)
    partial = [refunds[3], refunds[4]]
    assert clv_summary(apply_purchase_events(value, partial, SMALL), T0 + 300 * HOUR) == clv_summary(
        apply_purchase_events(None, history + partial, FULL), T0 + 300 * HOUR
    )
    clv_late, clv_full = clv_summary(late, T0 + 300 * HOUR), clv_summary(full, T0 + 300 * HOUR)
    assert clv_late is not None and clv_full is not None and clv_late.frequency == clv_full.frequency + 2
    steps, reference = facts_timeline(late), facts_timeline(full)
    for s in steps[1:]:  # each late refund at its own instant, as in the full ledger
        at = bisect_right(reference, s.key, key=lambda r: r.key) - 1
        assert (s.frequency, s.monetary) == (reference[at].frequency, reference[at].monetary)
    # copies of a refund change nothing, whether it came before the fold or after
    assert apply_purchase_events(late, refunds, SMALL) == late
    first_refund = refund("o1", T0 + 4 * HOUR)
    early = apply_purchase_events(None, [*history[:5], first_refund, *history[5:]], SMALL)
    assert early.folded is not None and apply_purchase_events(early, [first_refund], SMALL) == early
    # folding on: the refunded orders leave ``recent`` and their refunds stay applied in the summary
    more = [order(f"n{i}", T0 + (300 + i) * HOUR, total=1) for i in range(600)]
    later = apply_purchase_events(late, more, SMALL)
    assert later.folded is not None and "o7" not in {fo.order_id for fo in later.folded.recent}
    assert not [r for r in later.refunds if r.order_id in ("o3", "o7", "o20")]
    after = summary(apply_purchase_events(full, more, FULL), T0 + 1000 * HOUR)
    assert summary(later, T0 + 1000 * HOUR) == after
    # a refund of an order folded and forgotten cannot be valued: it is not applied
    assert summary(apply_purchase_events(later, [refund("o50", T0 + 999 * HOUR)], SMALL), T0 + 1000 * HOUR) == after


def test_an_over_long_order_id_is_kept_as_a_digest() -> None:
    long_id = "x" * 5000
    value = apply_purchase_events(None, [order(long_id, T0, total=1), order(long_id, T0 + 1, total=1)], SMALL)
    (only,) = value.orders
    assert only.order_id.startswith("#") and len(only.order_id) == 33
    cancelled = apply_purchase_events(value, [refund(long_id, T0 + HOUR)], SMALL)
    assert summary(cancelled, T0 + DAY).frequency == 0


def test_pending_refunds_and_refunds_per_order_are_bounded() -> None:
    first = order("o1", T0, total=10)
    strays = [refund(f"unknown-{i}", T0 + i, total=1) for i in range(100)]
    many = [refund("o1", T0 + HOUR + i, total=0.01, refund_id=f"r{i}") for i in range(50)]
    value = apply_purchase_events(None, [first, *strays, *many], SMALL)
    pending = [r for r in value.refunds if r.order_id != "o1"]
    assert [r.order_id for r in pending] == sorted(f"unknown-{i}" for i in range(84, 100))  # the latest 16
    kept = [r for r in value.refunds if r.order_id == "o1"]
    assert [r.key for r in kept] == ["r0", "r1", "r2"]  # the earliest, whatever the arrival
    assert apply_purchase_events(None, [first, *reversed(many), *strays[::-1]], SMALL) == value
    rnd = random.Random(5)
    arrival = [*strays, *many]
    rnd.shuffle(arrival)
    assert _ledger([[first], *(arrival[i : i + 9] for i in range(0, len(arrival), 9))], SMALL) == value


def test_the_refunds_of_itemised_orders_are_bounded_in_all() -> None:
    tight = dataclasses.replace(SMALL, max_refunds=10)
    history = [order(f"o{i}", T0 + i * HOUR, total=10) for i in range(8)]
    history += [
        refund(f"o{i}", T0 + 100 * HOUR + i * 10 + k, total=1, refund_id=f"r{k}") for i in range(8) for k in range(2)
    ]
    value = apply_purchase_events(None, history, tight)
    assert len(value.refunds) == 10  # the earliest ten by (timestamp, message id)
    assert {(r.order_id, r.key) for r in value.refunds} == {(f"o{i}", f"r{k}") for i in range(5) for k in range(2)}
    assert summary(value, T0 + 200 * HOUR).monetary == 80 - 10
    assert _ledger([[e] for e in reversed(history)], tight) == value


# --- the contact: the ledger's bound with the journey, traits, the wire size -------------------------


def _fold(batches: list[list[Event]], user: str = "big") -> ContactState:
    state: ContactState | None = None
    for batch in batches:
        state, *_ = step(state, user, batch, DEFAULT_MODEL)
    assert state is not None
    return state


def test_a_contact_with_thousands_of_orders_stays_small_and_counts_every_order() -> None:
    orders = [order(f"o{i}", T0 + i * MINUTE, total=1.25, currency="USD") for i in range(3000)]
    by_50 = _fold([orders[i : i + 50] for i in range(0, len(orders), 50)])
    by_7 = _fold([orders[i : i + 7] for i in range(0, len(orders), 7)])
    for state in (by_50, by_7):
        assert state.value is not None and state.value.folded is not None
        assert len(state.value.orders) <= DEFAULT_MODEL.value.max_orders
        facts = summary(state.value, T0 + DAY * 3)
        assert (facts.frequency, facts.first_order_ms, facts.last_order_ms) == (3000, T0, T0 + 2999 * MINUTE)
        assert facts.monetary == 3000 * 1.25 * DEFAULT_MODEL.value.rates["USD"]
        # the journey settled past every folded order: no walk starts before orders it cannot see
        assert state.journey is not None and state.journey.anchor is not None
        assert (state.journey.anchor.at_ms, state.journey.anchor.mid) >= state.value.folded.until
        assert state.journey.stage == "customer"
        assert len(encode(state)) < 256 * 1024
        assert decode_state(encode(state)) == state
    assert by_50.value == by_7.value
    assert by_50.journey is not None and by_7.journey is not None
    assert by_50.journey.history == by_7.journey.history


def identify(ts: int, traits: dict[str, Any], mid: str | None = None) -> Event:
    fields: dict[str, Any] = {"kind": "identify", "event": None, "timestamp_ms": ts, "traits": traits}
    if mid is not None:
        fields["message_id"] = mid
    return make_event(**fields)


def test_traits_past_the_bound_keep_the_most_recent_and_email() -> None:
    calls = [identify(T0, {"email": "ann@example.com"})]
    calls += [identify(T0 + (i + 1) * HOUR, {f"t{i:03}-{j:02}": i * 100 + j for j in range(50)}) for i in range(200)]
    state = apply_events(None, "u1", calls, DEFAULT_MODEL)
    assert len(state.traits) == MAX_TRAITS and state.traits_capped
    assert state.traits["email"] == "ann@example.com" and state.email == "ann@example.com"
    # the newest call's 50 keys, the one before, then the third newest by name
    assert {k for k in state.traits if k.startswith(("t199", "t198"))} == {
        f"t{i}-{j:02}" for i in (198, 199) for j in range(50)
    }
    assert sorted(k for k in state.traits if k.startswith("t197")) == [f"t197-{j:02}" for j in range(27)]
    assert set(state.trait_at) == set(state.traits)
    rnd = random.Random(7)
    shuffled = calls + calls[:20]
    rnd.shuffle(shuffled)
    again = apply_events(None, "u1", [], DEFAULT_MODEL)
    for i in range(0, len(shuffled), 13):
        again = apply_events(again, "u1", shuffled[i : i + 13], DEFAULT_MODEL)
    assert (again.traits, again.trait_at) == (state.traits, state.trait_at)


def test_traits_the_model_reads_are_kept_before_newer_ones_past_the_bound() -> None:
    read = read_traits(DEFAULT_MODEL)
    assert {"title", "employees", "industry", "address"} <= read  # fit rules' fields (top-level names)
    scored = {"title": "VP Marketing", "employees": 250, "industry": "saas", "address": {"country": "PL"}}
    calls = [identify(T0, {"email": "ann@example.com", **scored})]
    before = fit_of(apply_events(None, "u1", calls, DEFAULT_MODEL), DEFAULT_MODEL)
    calls += [identify(T0 + (i + 1) * HOUR, {f"t{i:03}-{j:02}": j for j in range(50)}) for i in range(10)]
    state = apply_events(None, "u1", calls, DEFAULT_MODEL)
    assert len(state.traits) == MAX_TRAITS and state.traits_capped
    assert {k: state.traits[k] for k in scored} == scored
    assert fit_of(state, DEFAULT_MODEL) == before and before.score > 0


def test_a_trait_past_the_size_bounds_is_left_out_with_a_flag() -> None:
    big = "é" * MAX_TRAIT_BYTES  # 2 bytes a character in UTF-8
    state = apply_events(
        None,
        "u1",
        [identify(T0, {"ok": "x" * (MAX_TRAIT_BYTES - 2), "big": big, "k" * (MAX_TRAIT_KEY + 1): 1, "n": {"a": [1]}})],
        DEFAULT_MODEL,
    )
    assert set(state.traits) == {"ok", "n"} and state.traits_capped
    group = make_event(kind="group", event=None, group_id="acme", traits={"name": "Acme", "logo": big})
    state = apply_events(None, "u2", [group], DEFAULT_MODEL)
    assert state.account_traits == {"name": "Acme"} and state.traits_capped
    assert not apply_events(None, "u3", [identify(T0, {"ok": 1})], DEFAULT_MODEL).traits_capped


_names = st.sampled_from([f"k{i}" for i in range(MAX_TRAITS + 60)] + ["email"])
_calls = st.lists(
    st.tuples(st.integers(0, 50), st.dictionaries(_names, st.integers(0, 3), min_size=1, max_size=40)),
    min_size=1,
    max_size=25,
)


@PROPERTY
@given(calls=_calls, data=st.data())
def test_kept_traits_do_not_depend_on_order_batching_or_duplicates(
    calls: list[tuple[int, dict[str, int]]], data: st.DataObject
) -> None:
    events = [identify(T0 + ts * MINUTE, traits, mid=f"m{i}") for i, (ts, traits) in enumerate(calls)]
    calm = apply_events(None, "u1", events, DEFAULT_MODEL)
    arrival = data.draw(st.permutations(events + data.draw(st.lists(st.sampled_from(events), max_size=10))))
    cut = data.draw(st.integers(1, max(1, len(arrival))))
    state = apply_events(None, "u1", arrival[:cut], DEFAULT_MODEL)
    state = apply_events(state, "u1", arrival[cut:], DEFAULT_MODEL)
    assert (state.traits, state.trait_at, state.traits_capped) == (calm.traits, calm.trait_at, calm.traits_capped)
    assert len(state.traits) <= MAX_TRAITS


# --- accounts -----------------------------------------------------------------------------------------


def member(i: int, at_ms: int, active: bool = True) -> MemberUpdate:
    return MemberUpdate(
        contact_id=f"c{i:05}",
        account_id="acme",
        at_ms=at_ms,
        evidence=1,
        role="influencer",
        score=10.0,
        fit=0.0,
        member=active,
    )


def _account(updates: list[MemberUpdate], batch: int) -> AccountState:
    state: AccountState | None = None
    for i in range(0, len(updates), batch):
        state, _ = apply_member_updates(state, "acme", updates[i : i + batch], DEFAULT_MODEL)
    assert state is not None
    return state


def test_an_account_keeps_its_most_recent_members_whatever_the_order() -> None:
    updates = [member(i, T0 + (i % 1500) * MINUTE) for i in range(1500)]
    updates += [member(i, T0 - DAY) for i in range(0, 1500, 3)]  # stale snapshots, late
    updates += [member(i, T0 + 2000 * MINUTE, active=False) for i in range(0, 200, 7)]  # recent departures
    calm = _account(updates, len(updates))
    assert len(calm.members) == MAX_MEMBERS and calm.members_capped
    left = [f"c{i:05}" for i in range(0, 200, 7)]
    assert all(not calm.members[c].active for c in left)
    expected = set(left) | {f"c{i:05}" for i in range(1500 - (MAX_MEMBERS - len(left)), 1500)}
    assert set(calm.members) == expected
    rnd = random.Random(3)
    shuffled = updates[:]
    rnd.shuffle(shuffled)
    again = _account(shuffled, 37)
    assert (again.members, again.traits) == (calm.members, calm.traits)
    assert len(encode_account(again)) < 256 * 1024


# --- versions: states written before the bounds still load ---------------------------------------------


def test_a_version_1_state_and_ledger_still_decode_and_are_written_at_the_new_version() -> None:
    state = apply_events(None, "u1", [order("o1", T0, total=5), identify(T0, {"email": "a@b.c"})], DEFAULT_MODEL)
    raw: dict[str, Any] = msgspec.msgpack.decode(encode(state))
    raw["v"] = 1
    del raw["traits_capped"]
    del raw["anonymous_at"]
    raw["value"]["v"] = 1
    del raw["value"]["folded"]
    old = decode_state(msgspec.msgpack.encode(raw))
    assert old.v == 1 and old.value is not None and old.value.v == 1 and old.value.folded is None
    assert summary(old.value, T0).frequency == 1
    new = apply_events(old, "u1", [order("o2", T0 + DAY, total=0)], DEFAULT_MODEL)
    assert new.v == STATE_VERSION and new.value is not None and new.value.v == 2
    assert summary(new.value, T0 + DAY).frequency == 2

    account, _ = apply_member_updates(None, "acme", [member(1, T0)], DEFAULT_MODEL)
    raw_account: dict[str, Any] = msgspec.msgpack.decode(encode_account(account))
    raw_account["v"] = 1
    del raw_account["members_capped"]
    assert decode_account(msgspec.msgpack.encode(raw_account)).members == account.members


@pytest.mark.parametrize("version", [STATE_VERSION + 1])
def test_a_newer_state_is_refused(version: int) -> None:
    from schemas.state import UnsupportedVersion

    raw: dict[str, Any] = msgspec.msgpack.decode(encode(apply_events(None, "u1", [], DEFAULT_MODEL)))
    raw["v"] = version
    with pytest.raises(UnsupportedVersion):
        decode_state(msgspec.msgpack.encode(raw))


def test_orders_sharing_one_message_id_and_instant_fold_together_and_the_ledger_goes_on() -> None:
    clash = [
        make_event(
            message_id="same",
            event="Order Completed",
            channel="store",
            timestamp_ms=T0,
            properties={"order_id": f"o{i}", "total": 1},
        )
        for i in range(40)
    ]
    value = apply_purchase_events(None, clash, SMALL)
    assert value.folded is not None and value.folded.orders == 40 and not value.orders
    later = [order(f"n{i}", T0 + (i + 1) * HOUR, total=2) for i in range(60)]
    for event in later:
        value = apply_purchase_events(value, [event], SMALL)
    assert 0 < len(value.orders) <= SMALL.max_orders
    facts = summary(value, T0 + 100 * HOUR)
    assert (facts.frequency, facts.monetary) == (100, 40 + 120)


def test_a_contact_keeps_its_most_recently_seen_anonymous_ids() -> None:
    from scorestream.contact import MAX_ANONYMOUS_IDS

    visits = [make_event(anonymous_id=f"device-{i:03}", timestamp_ms=T0 + i * MINUTE) for i in range(200)]
    visits += [make_event(anonymous_id="device-000", timestamp_ms=T0 + 500 * MINUTE)]  # an old device, back
    calm = apply_events(None, "u1", visits, DEFAULT_MODEL)
    newest = {f"device-{i:03}" for i in range(200 - MAX_ANONYMOUS_IDS + 1, 200)} | {"device-000"}
    assert set(calm.anonymous_ids) == newest and calm.anonymous_ids == sorted(newest)
    assert set(calm.anonymous_at) == newest
    shuffled = visits + visits[:30]
    random.Random(11).shuffle(shuffled)
    state: ContactState | None = None
    for i in range(0, len(shuffled), 17):
        state = apply_events(state, "u1", shuffled[i : i + 17], DEFAULT_MODEL)
    assert state is not None and (state.anonymous_ids, state.anonymous_at) == (calm.anonymous_ids, calm.anonymous_at)


def test_the_journey_of_a_contact_past_the_ledger_bound_is_the_one_of_the_full_ledger() -> None:
    """B2C stages read ``orders`` (repeat, loyal) and order timers (at risk after 90 days, lapsed
    after 180, won back by an order): folding orders must not change one stage entry."""
    from pathlib import Path

    from schemas.model_file import load_model

    b2c = load_model(Path(__file__).parents[2] / "schemas" / "models" / "b2c.yaml")
    unbounded = dataclasses.replace(b2c, value=dataclasses.replace(b2c.value, max_orders=10**9))
    rnd = random.Random(13)
    events: list[Event] = []
    ts = T0
    for i in range(1500):
        ts += rnd.choice([HOUR, DAY, 3 * DAY]) if i % 300 else 200 * DAY  # long gaps: at risk, lapsed, won back
        events.append(order(f"o{i}", ts, total=rnd.choice([0, 5, 50])))
        if i % 7 == 0:
            events.append(refund(f"o{i}", ts + MINUTE))
        if i % 5 == 0:
            events.append(make_event(kind="page", event=None, name="Home", timestamp_ms=ts - MINUTE))

    def journey_of(model: Any, size: int) -> Any:
        state: ContactState | None = None
        for i in range(0, len(events), size):
            state, *_ = step(state, "buyer", events[i : i + size], model)
        assert state is not None and state.journey is not None
        return state

    bounded, full = journey_of(b2c, 40), journey_of(unbounded, 40)
    assert bounded.value.folded is not None and full.value.folded is None
    assert bounded.journey.history == full.journey.history
    assert bounded.journey.fired == full.journey.fired
    assert bounded.journey.stage == full.journey.stage
    assert summary(bounded.value, ts) == summary(full.value, ts)


@PROPERTY
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(40, 250))
def test_refunds_arriving_long_after_their_orders_folded_count_as_in_the_full_list(seed: int, n: int) -> None:
    """Every refund held back until all orders are in (most of their orders folded by then):
    frequency, monetary and the purchase timeline from the fold on equal the full list's."""
    rnd = random.Random(seed)
    history = _history(rnd, n)
    orders = [e for e in history if e.event == "Order Completed"]
    refunds = [e for e in history if e.event == "Order Refunded"]
    rnd.shuffle(refunds)
    value = _ledger([orders, *(refunds[i : i + 5] for i in range(0, len(refunds), 5))], SMALL)
    full = apply_purchase_events(None, history, FULL)
    assert value.folded is not None and len(value.folded.recent) == min(n - len(value.orders), 256)
    as_of = max(e.timestamp_ms for e in history)
    got, want = summary(value, as_of), summary(full, as_of)
    assert (got.frequency, got.monetary, got.unvalued, got.aov) == (
        want.frequency,
        want.monetary,
        want.unvalued,
        want.aov,
    )
    steps, reference = facts_timeline(value), facts_timeline(full)
    assert steps[0].key == value.folded.until
    for s in steps:  # a refund stamped before the fold counts from the fold, as the full list has it there
        at = bisect_right(reference, s.key, key=lambda r: r.key) - 1
        assert (s.frequency, s.monetary) == (reference[at].frequency, reference[at].monetary)
