"""The rising-categories report (``GET /v1/reports/interests``): interest points per product
category in a window against the window before it, from the event archive.

Points are the model's ``interests`` section applied to the archived events, as the core applies
them to a contact (:mod:`scorestream.interests`): a track event named in ``events`` gives its
points to the ``category`` of each product in ``products`` (else of its own properties), a page
view whose path matches a ``paths`` rule (the first) gives that rule's points to its category.
Undecayed: the report compares two windows of the same length, so decay would only scale both.
A message id counts once (a message sent twice is archived twice), and ``FINAL`` drops re-read
records.
"""

from __future__ import annotations

from analytics.client import Store
from schemas.api_interests import InterestsReportOut, RisingCategoryOut
from schemas.times import at_of
from scorestream.rules.interests import InterestRules, glob_regex

RISING = """
SELECT category, sumIf(points, current) AS now_points, sumIf(points, NOT current) AS before_points,
       uniqExactIf(person, current) AS people
FROM (
    SELECT event_time >= fromUnixTimestamp64Milli({start:Int64}, 'UTC') AS current,
           if(user_id != '', user_id, anonymous_id) AS person,
           arrayJoin(if(JSONType(properties, 'products') = 'Array',
                        arrayMap(p -> JSONExtractString(p, 'category'), JSONExtractArrayRaw(properties, 'products')),
                        [JSONExtractString(properties, 'category')])) AS category,
           transform(event, {names:Array(String)}, {weights:Array(Float64)}, toFloat64(0)) AS points
    FROM (
        SELECT event_time, user_id, anonymous_id, properties, event FROM events FINAL
        WHERE status = 'accepted' AND type = 'track' AND has({names:Array(String)}, event)
          AND event_time >= fromUnixTimestamp64Milli({from:Int64}, 'UTC')
          AND event_time < fromUnixTimestamp64Milli({to:Int64}, 'UTC')
        ORDER BY event_time, message_id LIMIT 1 BY message_id
    )
    UNION ALL
    SELECT current, person, {categories:Array(String)}[rule] AS category, {page_points:Array(Float64)}[rule] AS points
    FROM (
        SELECT event_time >= fromUnixTimestamp64Milli({start:Int64}, 'UTC') AS current,
               if(user_id != '', user_id, anonymous_id) AS person,
               arrayFirstIndex(r -> match(path, r), {patterns:Array(String)}) AS rule
        FROM (
            SELECT event_time, user_id, anonymous_id, path FROM events FINAL
            WHERE status = 'accepted' AND type = 'page' AND length({patterns:Array(String)}) > 0
              AND event_time >= fromUnixTimestamp64Milli({from:Int64}, 'UTC')
              AND event_time < fromUnixTimestamp64Milli({to:Int64}, 'UTC')
            ORDER BY event_time, message_id LIMIT 1 BY message_id
        )
    )
    WHERE rule > 0
)
WHERE category != '' AND points > 0
GROUP BY category
"""


def rising_body(rows: list[tuple[object, ...]], now_ms: int, window_ms: int, limit: int) -> InterestsReportOut:
    """The report from :data:`RISING`'s rows: the largest rises first (ties by category)."""
    found = []
    for category, now_points, before_points, people in rows:
        points, previous = float(str(now_points)), float(str(before_points))
        found.append(
            RisingCategoryOut(
                category=str(category),
                points=round(points, 6),
                previous=round(previous, 6),
                change=round(points - previous, 6),
                ratio=round(points / previous, 6) if previous > 0 else None,
                contacts=int(str(people)),
            )
        )
    found.sort(key=lambda c: (-c.change, c.category))
    return InterestsReportOut(
        as_of=at_of(now_ms),
        window_days=window_ms / 86_400_000,
        start=at_of(now_ms - window_ms),
        previous_start=at_of(now_ms - 2 * window_ms),
        categories=found[:limit],
    )


async def rising(
    store: Store, rules: InterestRules, now_ms: int, window_ms: int, limit: int = 50
) -> InterestsReportOut:
    """Categories by their rise in interest points over the window ending at ``now_ms``."""
    names = sorted(rules.events)
    rows = await store.query(
        RISING,
        {
            "from": now_ms - 2 * window_ms,
            "start": now_ms - window_ms,
            "to": now_ms,
            "names": names,
            "weights": [rules.events[n] for n in names],
            "patterns": [glob_regex(p.pattern) for p in rules.paths],
            "categories": [p.category for p in rules.paths],
            "page_points": [p.points for p in rules.paths],
        },
    )
    return rising_body(rows, now_ms, window_ms, limit)
