"""Journey facts against real chDB, on a hand-built archive written with the sink's own row code: a
store-first buyer, a visitor who buys (a free order) after identifying herself through two merges,
a walk-in whose first touch is the order, someone who never ordered; re-reads, a duplicate message,
a rejected record and identify events that are no touches. Every expected figure is worked out by
hand in the comments."""

from __future__ import annotations

import asyncio
import random
import statistics
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import pytest

from analytics import journey_facts
from analytics.client import Store
from analytics.migrations import migrate
from analytics.rows import CONTACT_COLUMNS, EVENT_COLUMNS, deadletter_row, event_row
from schemas.events import deadletter_headers
from tests.analytics.archive import Contact
from tests.analytics.test_rows import CHANNELS, rec
from tests.factories import DAY, HOUR, T0, iso, segment_json

T = TypeVar("T")
TOPICS = {"web": "events.web", "email": "events.email", "store": "events.store"}
FROM, TO = T0 - DAY, T0 + 30 * DAY


def run(coro: Any) -> Any:
    return asyncio.run(coro)


class Events:
    def __init__(self) -> None:
        self.rows: list[list[Any]] = []
        self.offset = 0

    def add(self, channel: str, at: int, user: str | None, anon: str | None = None, **fields: Any) -> list[Any]:
        self.offset += 1
        raw = segment_json(userId=user, anonymousId=anon, timestamp=iso(at), **fields)
        row = event_row(rec(raw, {**TOPICS, "crm": "events.crm"}[channel], self.offset, timestamp=at + 5), channel)
        assert row is not None
        self.rows.append(row)
        return row


def order(revenue: float, order_id: str) -> dict[str, Any]:
    return {"event": "Order Completed", "properties": {"order_id": order_id, "revenue": revenue, "currency": "EUR"}}


def contact(cid: str, persona: str = "", stage: str = "customer", offset: int = 1, **kw: Any) -> list[Any]:
    base = Contact(cid, T0, T0, stage, T0, T0, offset, user_id=cid, persona=persona)
    return replace(base, **kw).row()


def build() -> tuple[list[list[Any]], list[list[Any]]]:
    e = Events()
    # ann, store first: store visit (day 0), web page (day 1), e-mail open (day 2), a web page on day 2
    # archived twice under one message id (one touch), the order on day 5 (web), a page after it
    e.add("store", T0, "ann", event="Store Visit")
    e.add("web", T0 + DAY, "ann", type="page")
    e.add("email", T0 + 2 * DAY, "ann", event="Email Opened")
    e.add("crm", T0 - HOUR, "ann", event="Score Adjusted", properties={"points": 10})  # sales' word: no (first) touch
    twice = e.add("web", T0 + 2 * DAY + HOUR, "ann", type="page", messageId="ann-page-2")
    e.add("web", T0 + 5 * DAY, "ann", **order(120.0, "o-ann"))
    e.add("web", T0 + 6 * DAY, "ann", type="page")
    e.add("web", T0 + 6 * DAY, "ann", type="identify", traits={"email": "ann@example.com"})  # no touch
    dup = list(twice)
    dup[EVENT_COLUMNS.index("kafka_offset")] = 999  # the same message again, at another offset
    e.rows.append(dup)
    # bea: an anonymous visitor (two web pages), identified as bea-old, merged into bea; a free order
    # (revenue 0) on day 2 by e-mail; her identify and alias are no touches
    e.add("web", T0, None, "anon-b", type="page")
    e.add("web", T0 + HOUR, None, "anon-b", type="page")
    e.add("web", T0 + 2 * HOUR, "bea-old", "anon-b", type="identify", traits={})
    e.add("email", T0 + 2 * DAY, "bea", **order(0.0, "o-bea"))
    # dan walks into a store and buys: the order is his first touch (0 touches before, 0 days)
    e.add("store", T0 + 10 * DAY, "dan", **order(50.0, "o-dan"))
    e.add("store", T0 + 12 * DAY, "dan", **order(70.0, "o-dan-2"))
    # cat never orders
    e.add("web", T0, "cat", type="page")
    e.add("email", T0 + DAY, "cat", event="Email Clicked")
    e.add("web", T0 + 3 * DAY, "cat", event="Purchase", properties={"revenue": 5.0})  # an order only when configured
    # an order before the window: eve's first order is not in [FROM, TO)
    e.add("web", T0 - 3 * DAY, "eve", **order(10.0, "o-eve"))
    rejected = deadletter_row(
        rec(
            b'{"type":"track","userId":"ann","event":"Store Vis',
            "events.deadletter",
            500,
            headers=tuple(deadletter_headers("invalid_json", "cut short", "events.store", 0, 1)),
        ),
        CHANNELS,
    )
    contacts = [
        contact("ann", "shopper", offset=10),
        contact("bea", "shopper", offset=11),
        contact("bea-old", status="merged", merged_into="bea", offset=12),
        contact("anonymous:anon-b", status="merged", merged_into="bea-old", offset=13),
        contact("dan", "", offset=14),
        contact("cat", "executive", stage="lead", offset=15),
        contact("eve", "shopper", offset=16),
    ]
    return [*e.rows, rejected], contacts


@pytest.fixture(scope="module")
def store(chdb_path: Path) -> Iterator[Store]:
    s = Store(f"chdb://{chdb_path}?database=journey_{uuid.uuid4().hex[:8]}")
    events, contacts = build()

    async def setup() -> None:
        await migrate(s)
        await s.insert("events", EVENT_COLUMNS, events)
        await s.insert("events", EVENT_COLUMNS, events[:5])  # a re-read, not merged yet
        await s.insert("contacts", CONTACT_COLUMNS, contacts)

    run(setup())
    yield s
    s.close_sync()


def test_a_store_first_buyer_counts_each_message_once_and_not_the_order_itself(store: Store) -> None:
    j = run(journey_facts.journey(store, "ann"))
    assert j.first_touch_channel == "store"
    assert j.touches_before_first_order is not None
    # store visit; web page day 1 and day 2 (the twice-archived one once); e-mail open
    assert j.touches_before_first_order.model_dump() == {"web": 2, "email": 1, "store": 1, "total": 4}
    assert j.days_to_first_order == 5.0
    # and all touches: the 4, the order and the page after it (the identify is none)
    assert j.touches.total == 6


def test_a_free_order_after_merges_is_the_survivors_first_order(store: Store) -> None:
    j = run(journey_facts.journey(store, "bea"))
    assert j.first_order_at is not None and j.first_order_at.timestamp() * 1000 == T0 + 2 * DAY
    assert j.touches_before_first_order is not None
    assert j.touches_before_first_order.model_dump() == {"web": 2, "email": 0, "store": 0, "total": 2}
    assert j.days_to_first_order == 2.0 and j.first_touch_channel == "web"


def test_a_walk_in_and_a_contact_without_order(store: Store) -> None:
    dan = run(journey_facts.journey(store, "dan"))
    assert dan.touches_before_first_order is not None and dan.touches_before_first_order.total == 0
    assert dan.days_to_first_order == 0.0 and dan.first_touch_channel == "store"
    cat = run(journey_facts.journey(store, "cat"))
    assert cat.first_order_at is None and cat.touches_before_first_order is None and cat.touches.total == 3
    nobody = run(journey_facts.journey(store, "nobody"))
    assert nobody.first_touch_at is None and nobody.touches.total == 0


def test_the_report_distributions_and_offline_share(store: Store) -> None:
    r = run(journey_facts.journey_report(store, FROM, TO, min_n=2))
    # buyers with a first order in the window: ann (4 touches, 5 days), bea (2, 2), dan (0, 0); eve's is before
    assert r.buyers == 3
    t = r.touches
    # touches [0, 2, 4]: mean 2, inclusive quantiles at positions 0.5, 1, 1.5, 1.8 of the sorted list
    assert (t.mean, t.p25, t.median, t.p75, t.p90) == (2.0, 1.0, 2.0, 3.0, pytest.approx(3.6))
    # buckets 0, 1, 2, 3, 5, ...: 0 -> [0, 1), 2 -> [2, 3), 4 -> [3, 5)
    assert [b.count for b in t.histogram][:5] == [1, 0, 1, 1, 0]
    assert sum(b.count for b in t.histogram) == 3
    d = r.days
    assert (d.median, d.p25, d.p75) == (2.0, 1.0, 3.5)
    # days [0, 2, 5]: 0 -> [0, 1), 2 -> [1, 7), 5 -> [1, 7)
    assert [b.count for b in d.histogram][:3] == [1, 2, 0]
    # store first: ann and dan
    assert (r.offline_first.offline, r.offline_first.share) == (2, pytest.approx(2 / 3))
    first = {g.key: g.buyers for g in r.by_first_channel}
    assert first == {"store": 2, "web": 1}
    personas = {g.key: g for g in r.by_persona}
    assert set(personas) == {"shopper", None}
    assert personas["shopper"].buyers == 2 and personas["shopper"].touches.median == 3.0  # ann 4, bea 2
    assert personas[None].buyers == 1 and personas[None].note is not None and personas[None].touches.median is None
    assert [g.key for g in r.by_stage] == ["customer"]
    channels = {c.channel: c for c in r.by_channel}
    # web: ann 2, bea 2, dan 0; e-mail: ann 1; store: ann 1 (of 6 touches before first orders)
    assert channels["web"].touches.mean == pytest.approx(4 / 3) and channels["web"].share_of_touches == pytest.approx(
        4 / 6
    )
    assert channels["store"].touches.median == 0.0 and channels["email"].share_of_touches == pytest.approx(1 / 6)


def test_the_models_order_events_are_the_orders(store: Store) -> None:
    cat = run(journey_facts.journey(store, "cat", ("Order Completed", "Purchase")))
    assert cat.touches_before_first_order is not None and cat.touches_before_first_order.total == 2
    assert cat.days_to_first_order == 3.0
    r = run(journey_facts.journey_report(store, FROM, TO, order_events=("Order Completed", "Purchase")))
    assert r.buyers == 4


def test_an_empty_window_says_so(store: Store) -> None:
    r = run(journey_facts.journey_report(store, TO, TO + DAY))
    assert r.buyers == 0 and r.touches.median is None and r.offline_first.share is None and r.notes


# --- generated: the report against the same facts computed in Python ----------------------------


def generated(seed: int) -> tuple[list[list[Any]], list[list[Any]], dict[str, tuple[list[int], float]]]:
    """People with touches on random channels, some first seen anonymously (merged into their user
    later), some with a free order, some never ordering; every fifth event archived twice (another
    offset, same message id), rows shuffled. Returns the rows and, per buyer with a first order in
    the window, (touches before it per channel, days to it), computed here from the facts."""
    rng = random.Random(seed)
    e = Events()
    contacts: list[list[Any]] = []
    expect: dict[str, tuple[list[int], float]] = {}
    offset = 100
    for i in range(150):
        user = f"p{i}"
        anon = f"v{i}" if rng.random() < 0.4 else None
        touches: list[tuple[int, str]] = []
        for _ in range(rng.randint(1, 12)):
            at = T0 + rng.randint(0, 20 * DAY)
            channel = rng.choice(list(TOPICS))
            as_visitor = anon is not None and rng.random() < 0.5
            row = e.add(channel, at, None if as_visitor else user, anon if as_visitor else None, type="page")
            touches.append((at, channel))
            if rng.random() < 0.2:
                again = list(row)
                again[EVENT_COLUMNS.index("kafka_offset")] = 10_000 + e.offset
                e.rows.append(again)
        first_order = None
        if rng.random() < 0.6:
            first_order = T0 + rng.randint(0, 25 * DAY)
            e.add(rng.choice(list(TOPICS)), first_order, user, **order(rng.choice([0.0, 30.0]), f"o-{i}"))
            e.add("web", first_order + DAY, user, **order(10.0, f"o-{i}-2"))
            touches.append((first_order, "order"))
        if anon is not None:
            offset += 1
            contacts.append(contact(f"anonymous:{anon}", status="merged", merged_into=user, offset=offset))
        offset += 1
        contacts.append(contact(user, "shopper" if i % 2 else "executive", offset=offset))
        if first_order is not None:
            before = [sum(1 for at, ch in touches if at < first_order and ch == c) for c in TOPICS]
            start = min(at for at, _ in touches)
            expect[user] = (before, (first_order - start) / DAY)
    rows = list(e.rows)
    rng.shuffle(rows)
    return rows, contacts, expect


def test_the_report_equals_the_facts_computed_in_python(chdb_path: Path) -> None:
    rows, contacts, expect = generated(5)
    s = Store(f"chdb://{chdb_path}?database=journey_gen_{uuid.uuid4().hex[:8]}")

    async def fill() -> None:
        await migrate(s)
        half = len(rows) // 2
        await s.insert("events", EVENT_COLUMNS, rows[half:])  # in two batches, the later half first
        await s.insert("events", EVENT_COLUMNS, rows[:half])
        await s.insert("contacts", CONTACT_COLUMNS, contacts)

    try:
        run(fill())
        r = run(journey_facts.journey_report(s, T0, T0 + 30 * DAY))
        sample = sorted(expect)[:5]
        one = {u: run(journey_facts.journey(s, u)) for u in sample}
    finally:
        s.close_sync()
    touches = sorted(sum(b) for b, _ in expect.values())
    days = sorted(d for _, d in expect.values())
    assert r.buyers == len(expect) > 50
    assert r.touches.median == pytest.approx(statistics.median(touches))
    assert [r.touches.p25, r.touches.p75] == pytest.approx(statistics.quantiles(touches, n=4, method="inclusive")[::2])
    assert r.days.median == pytest.approx(statistics.median(days)) and r.days.mean == pytest.approx(
        statistics.mean(days)
    )
    for channel, k in zip(TOPICS, range(3), strict=True):
        got = next(c for c in r.by_channel if c.channel == channel)
        assert got.touches.mean == pytest.approx(statistics.mean(b[k] for b, _ in expect.values()))
    for user, j in one.items():
        assert j.touches_before_first_order is not None
        before, to_order = expect[user]
        assert [
            j.touches_before_first_order.web,
            j.touches_before_first_order.email,
            j.touches_before_first_order.store,
        ] == before
        assert j.days_to_first_order == pytest.approx(to_order)
