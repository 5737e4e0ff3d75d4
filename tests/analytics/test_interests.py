"""The rising-categories report over real chDB: interest points per category this window against
the previous one, checked against the same sums computed in plain Python from generated events."""

from __future__ import annotations

import random
from collections import defaultdict
from typing import Any

import pytest

from analytics.client import Store
from analytics.interests import rising, rising_body
from analytics.rows import EVENT_COLUMNS, event_row
from scorestream import Model
from scorestream.rules.interests import InterestRules
from tests.analytics.test_client import with_store
from tests.analytics.test_rows import rec
from tests.factories import DAY, HOUR, iso, segment_json

MODEL = Model.from_dict(
    {
        "name": "shop",
        "interests": {
            "events": {"Product Viewed": 1, "Product Added": 3, "Order Completed": 5},
            "paths": [
                {"path": "/shop/shoes*", "category": "shoes", "points": 2},
                {"path": "/shop/*", "category": "misc"},
            ],
        },
    }
)
_RULES = MODEL.interests
assert _RULES is not None
RULES: InterestRules = _RULES
NOW = 1_790_000_000_000
WEEK = 7 * DAY
CATEGORIES = ["shoes", "bags", "hats"]


def row(offset: int, at: int, person: str, **fields: Any) -> list[Any]:
    raw = segment_json(userId=person, anonymousId=None, timestamp=iso(at), **fields)
    found = event_row(rec(raw, "events.web", offset, timestamp=at), "web")
    assert found is not None
    return found


def generate(seed: int) -> tuple[list[list[Any]], dict[str, list[float]], dict[str, set[str]]]:
    """Events over three weeks (the oldest outside both windows) and the expected points per
    category: [this window, the previous one], and who counted this window."""
    rng = random.Random(seed)
    rows: list[list[Any]] = []
    points: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    people: dict[str, set[str]] = defaultdict(set)
    for i in range(300):
        at = NOW - rng.randint(1, 3 * WEEK - 1)
        person = f"u-{rng.randint(0, 20)}"
        window = 0 if at >= NOW - WEEK else 1 if at >= NOW - 2 * WEEK else None
        kind = rng.choice(["view", "add", "order", "page", "other"])
        gained: list[tuple[str, float]] = []
        if kind in ("view", "add"):
            category = rng.choice(CATEGORIES)
            name = "Product Viewed" if kind == "view" else "Product Added"
            rows.append(row(i, at, person, event=name, properties={"product_id": "p", "category": category}))
            gained.append((category, 1.0 if kind == "view" else 3.0))
        elif kind == "order":
            cats = [rng.choice(CATEGORIES) for _ in range(rng.randint(1, 3))]
            products = [{"product_id": f"p{j}", "category": c} for j, c in enumerate(cats)]
            rows.append(row(i, at, person, event="Order Completed", properties={"revenue": 0, "products": products}))
            gained.extend((c, 5.0) for c in cats)
        elif kind == "page":
            path = rng.choice(["/shop/shoes/x", "/shop/bags", "/about"])
            rows.append(row(i, at, person, type="page", name="Shop", properties={"path": path}))
            if path != "/about":
                gained.append(("shoes", 2.0) if "shoes" in path else ("misc", 1.0))
        else:
            rows.append(row(i, at, person, event="Email Opened", properties={"category": "shoes"}))
        if window is not None:
            for category, value in gained:
                points[category][window] += value
                if window == 0:
                    people[category].add(person)
    return rows, points, people


def test_the_report_sums_each_category_s_points_per_window(chdb_url: str) -> None:
    rows, points, people = generate(seed=5)

    async def body(store: Store) -> None:
        await store.insert("events", EVENT_COLUMNS, rows)
        await store.insert("events", EVENT_COLUMNS, rows[:40])  # a re-read, not merged yet
        report = await rising(store, RULES, NOW, WEEK)
        found = {c.category: c for c in report.categories}
        assert set(found) == {c for c, v in points.items() if v[0] or v[1]}
        for category, (now_points, before) in points.items():
            assert found[category].points == pytest.approx(now_points)
            assert found[category].previous == pytest.approx(before)
            assert found[category].change == pytest.approx(now_points - before)
            assert found[category].contacts == len(people[category])
        changes = [c.change for c in report.categories]
        assert changes == sorted(changes, reverse=True)
        assert report.window_days == 7

    with_store(chdb_url, body)


def test_a_message_sent_twice_counts_once(chdb_url: str) -> None:
    at = NOW - HOUR
    raw = {"event": "Product Added", "properties": {"category": "hats"}, "messageId": "m-twice"}

    async def body(store: Store) -> None:
        await store.insert("events", EVENT_COLUMNS, [row(1, at, "u-1", **raw), row(2, at, "u-1", **raw)])
        report = await rising(store, RULES, NOW, WEEK)
        assert [(c.category, c.points, c.previous, c.ratio) for c in report.categories] == [("hats", 3.0, 0.0, None)]

    with_store(chdb_url, body)


def test_the_body_orders_by_rise_and_gives_the_ratio() -> None:
    report = rising_body([("a", 2.0, 4.0, 1), ("b", 6.0, 2.0, 3), ("c", 1.0, 0.0, 1)], NOW, WEEK, limit=2)
    assert [(c.category, c.change, c.ratio) for c in report.categories] == [("b", 4.0, 3.0), ("c", 1.0, None)]
