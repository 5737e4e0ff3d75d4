"""Journey facts from the event archive: how many touches a person needs before buying, and how long
from the first touch to the first order (``GET /v1/contacts/{id}/journey``, ``GET /v1/reports/journey``).

Definitions the queries keep (all from ``events``, every accepted event, exactly):

- A **touch** is an accepted event of type ``track``, ``page`` or ``screen``, on its channel (web,
  email, store; not ``crm``, where manual score adjustments arrive: sales' word is no contact).
  ``identify``, ``group`` and ``alias`` are not touches: they say who someone is, not that they
  were in contact. A message id is one touch however many times it was archived
  (the core dedupes by message id as well).
- The **first order** is the first order event of the person (the model's ``value.order_events``,
  ``Order Completed`` by default), whatever its revenue: a free
  order (revenue 0) is an order here, although the ``contacts`` summary counts orders of a net
  value above 0 only. Touches **before** it are those strictly earlier (the order is not one of
  them); the time to it runs from the first touch (the order itself when it came first).
- **Whose** event: the contact the worker gave it to, as :mod:`scorestream.identity` decides: the
  ``userId`` when there is one, else ``anonymous:<anonymousId>``; a contact merged into another
  (``contacts.status = 'merged'``) counts as the contact it merged into, transitively. A
  visitor's events before identifying herself are therefore hers.
- Persona and stage are the contact's current ones (``contacts``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from analytics.client import Store
from schemas.api_quality import (
    BucketOut,
    ChannelTouchesOut,
    DistributionOut,
    JourneyGroupOut,
    JourneyOut,
    JourneyReportOut,
    OfflineFirstOut,
    TouchesOut,
)
from schemas.times import DAY_MS
from schemas.times import at_of as _at
from scorestream.identity import ANONYMOUS_PREFIX

MAX_MERGE_HOPS = 8
CHANNELS = ("web", "email", "store")
# the channels a person is in contact on: not ``crm`` (a manual adjustment is sales' word, not a touch)
TOUCH_CHANNELS_SQL = "(" + ", ".join(f"'{c}'" for c in CHANNELS) + ")"
OFFLINE = "store"
ORDER_EVENTS: tuple[str, ...] = ("Order Completed",)  # the model's value.order_events by default
DEFAULT_MIN_N = 5
TOUCH_BUCKETS: tuple[float, ...] = (0, 1, 2, 3, 5, 10, 20, 50)
DAY_BUCKETS: tuple[float, ...] = (0, 1, 7, 14, 30, 60, 90, 180, 365)
Rows = list[tuple[Any, ...]]

# ``merges``: (merged contact ids, the contact each finally merged into); survivor_sql(x) reads it.
MERGES_WITH = f"""
    (SELECT (groupArray(contact_id), groupArray(merged_into)) FROM contacts FINAL
     WHERE status = 'merged' AND merged_into != '') AS merge_pairs,
    arrayMap(x -> arrayFold((acc, i) -> transform(acc, merge_pairs.1, merge_pairs.2, acc),
                            range({MAX_MERGE_HOPS}), x), merge_pairs.2) AS merge_targets
"""  # noqa: S608 (constant fragments)


def survivor_sql(expr: str) -> str:
    """SQL of the contact ``expr`` (a contact id) finally merged into (itself when not merged);
    the query must declare :data:`MERGES_WITH`."""
    return f"transform({expr}, merge_pairs.1, merge_targets, {expr})"


# the contact id the worker gives an event (scorestream.identity: the user, else the visitor)
EVENT_CONTACT_SQL = "if(user_id != '', user_id, concat('anonymous:', anonymous_id))"


def touches_sql(where: str = "") -> str:
    """Each person's touches: one row per message id (the earliest copy), with the person it
    belongs to; ``where``: a further condition on the archived rows."""
    return f"""
    SELECT {survivor_sql("raw_contact")} AS person, message_id, t, channel, is_order
    FROM (
        SELECT {EVENT_CONTACT_SQL} AS raw_contact, message_id,
               min(toUnixTimestamp64Milli(event_time)) AS t,
               argMin(toString(channel), toUnixTimestamp64Milli(event_time)) AS channel,
               max(type = 'track' AND has({{order_events:Array(String)}}, event)) AS is_order
        FROM events FINAL
        WHERE status = 'accepted' AND type IN ('track', 'page', 'screen')
          AND toString(events.channel) IN {TOUCH_CHANNELS_SQL}
          AND (user_id != '' OR anonymous_id != '') {where}
        GROUP BY raw_contact, message_id
    )
    """  # noqa: S608 (constant fragments)


# Per person: the first order, the first touch and its channel, and the touches by channel (all of
# them and those before the first order).
def per_person_sql(where: str = "") -> str:
    return f"""
    SELECT person,
           minIf(t, is_order) AS first_order,
           countIf(is_order) AS orders,
           min(t) AS first_touch,
           argMin(channel, (t, channel)) AS first_channel,
           [{", ".join(f"countIf(channel = '{c}')" for c in CHANNELS)}] AS all_touches,
           groupArray((t, channel)) AS touches
    FROM ({touches_sql(where)})
    GROUP BY person
    """  # noqa: S608 (constant fragments)


PER_PERSON = per_person_sql()

ONE = f"""
WITH {MERGES_WITH}
SELECT first_order, orders, first_touch, first_channel, all_touches,
       arrayMap(c -> arrayCount(x -> x.1 < first_order AND x.2 = c, touches), {list(CHANNELS)}) AS before
FROM ({per_person_sql("AND (user_id IN {ids:Array(String)} OR anonymous_id IN {anonymous:Array(String)})")})
WHERE person = {{id:String}}
"""  # noqa: S608 (constant fragments; values are bound as parameters)

# The buyers whose first order is in the window: touches before it by channel, days to it, the
# first touch's channel, and the contact's current persona and stage.
BUYERS = f"""
    SELECT b.person AS person, b.before AS before, arraySum(b.before) AS touches,
           (b.first_order - b.first_touch) / {DAY_MS} AS days, b.first_channel AS first_channel,
           c.persona AS persona, c.stage AS stage
    FROM (
        SELECT person, first_order, first_touch, first_channel,
               arrayMap(ch -> arrayCount(x -> x.1 < first_order AND x.2 = ch, touches), {list(CHANNELS)}) AS before
        FROM ({PER_PERSON})
        WHERE orders > 0 AND first_order >= {{from:Int64}} AND first_order < {{to:Int64}}
    ) AS b
    LEFT JOIN (
        SELECT contact_id, toString(persona) AS persona, toString(stage) AS stage
        FROM contacts FINAL WHERE status = 'active'
    ) AS c ON b.person = c.contact_id
"""  # noqa: S608 (constant fragments; values are bound as parameters)


def _distribution_sql(value: str, bounds: Sequence[float]) -> str:
    """count, mean, p25, median, p75, p90 and the histogram (counts per bucket ``[b_i, b_i+1)``,
    the last one unbounded) of ``value``."""
    edges = [*bounds[1:], None]
    counts = ", ".join(
        f"countIf({value} >= {lower})" if upper is None else f"countIf({value} >= {lower} AND {value} < {upper})"
        for lower, upper in zip(bounds, edges, strict=True)
    )
    return f"count(), avg({value}), quantilesExactInclusive(0.25, 0.5, 0.75, 0.9)({value}), [{counts}]"


TOUCH_DIST = _distribution_sql("touches", TOUCH_BUCKETS)
DAY_DIST = _distribution_sql("days", DAY_BUCKETS)

# one row per group: (group kind, key, touches' distribution, days' distribution); kind 'all' is
# every buyer, 'first_channel', 'persona' and 'stage' the groups
REPORT = f"""
WITH {MERGES_WITH}
SELECT kind, key, {TOUCH_DIST}, {DAY_DIST}
FROM (
    SELECT person, touches, days, first_channel, persona, stage FROM ({BUYERS})
)
ARRAY JOIN [('all', ''), ('first_channel', first_channel), ('persona', persona), ('stage', stage)] AS g
GROUP BY g.1 AS kind, g.2 AS key
"""  # noqa: S608 (constant fragments; values are bound as parameters)

# per channel: the distribution of that channel's touches before the first order, per buyer
CHANNEL_REPORT = f"""
WITH {MERGES_WITH}
SELECT ch.1 AS channel, {_distribution_sql("ch.2", TOUCH_BUCKETS)}, sum(ch.2)
FROM ({BUYERS})
ARRAY JOIN arrayZip({list(CHANNELS)}, before) AS ch
GROUP BY channel
"""  # noqa: S608 (constant fragments; values are bound as parameters)


# the contacts merged into one, transitively (their events are its own)
MERGED_INTO = f"""
WITH {MERGES_WITH}
SELECT arrayFilter((x, y) -> y = {{id:String}}, merge_pairs.1, merge_targets)
"""


def _touches(counts: Sequence[Any]) -> TouchesOut:
    web, email, store = (int(n) for n in counts)
    return TouchesOut(web=web, email=email, store=store, total=web + email + store)


def journey_body(contact_id: str, rows: Rows) -> JourneyOut:
    """One contact's journey from :data:`ONE`'s row (none: no touch archived)."""
    if not rows:
        return JourneyOut(
            contact_id=contact_id,
            first_touch_at=None,
            first_touch_channel=None,
            first_order_at=None,
            touches_before_first_order=None,
            touches=_touches((0, 0, 0)),
            days_to_first_order=None,
        )
    first_order, orders, first_touch, first_channel, all_touches, before = rows[0]
    ordered = int(orders) > 0
    return JourneyOut(
        contact_id=contact_id,
        first_touch_at=_at(int(first_touch)),
        first_touch_channel=str(first_channel) or None,
        first_order_at=_at(int(first_order)) if ordered else None,
        touches_before_first_order=_touches(before) if ordered else None,
        touches=_touches(all_touches),
        days_to_first_order=(int(first_order) - int(first_touch)) / DAY_MS if ordered else None,
    )


async def journey(store: Store, contact_id: str, order_events: Sequence[str] = ORDER_EVENTS) -> JourneyOut:
    """The journey of ``contact_id`` (a surviving contact: its merged contacts' events are its own)."""
    merged = [str(m) for m in (await store.query(MERGED_INTO, {"id": contact_id}))[0][0]]
    ids = [contact_id, *merged]
    anonymous = [i.removeprefix(ANONYMOUS_PREFIX) for i in ids if i.startswith(ANONYMOUS_PREFIX)]
    parameters = {"id": contact_id, "ids": ids, "anonymous": anonymous, "order_events": list(order_events)}
    rows = await store.query(ONE, parameters)
    return journey_body(contact_id, rows)


def _finite(value: Any) -> float | None:
    number = float(value)
    return None if math.isnan(number) else number


def distribution(
    n: Any, mean: Any, quantiles: Sequence[Any], counts: Sequence[Any], bounds: Sequence[float]
) -> DistributionOut:
    """A distribution from :func:`_distribution_sql`'s columns (nothing but the histogram under 1)."""
    size = int(n)
    p25, median, p75, p90 = (_finite(q) if size else None for q in quantiles)
    buckets = [
        BucketOut(lower=lower, upper=bounds[i + 1] if i + 1 < len(bounds) else None, count=int(counts[i]))
        for i, lower in enumerate(bounds)
    ]
    return DistributionOut(
        n=size, mean=_finite(mean) if size else None, p25=p25, median=median, p75=p75, p90=p90, histogram=buckets
    )


def _empty(bounds: Sequence[float]) -> DistributionOut:
    return distribution(0, math.nan, [math.nan] * 4, [0] * len(bounds), bounds)


def _group(key: str | None, row: Sequence[Any] | None, min_n: int) -> JourneyGroupOut:
    if row is None:
        return JourneyGroupOut(key=key, buyers=0, touches=_empty(TOUCH_BUCKETS), days=_empty(DAY_BUCKETS))
    n, t_mean, t_q, t_counts, _, d_mean, d_q, d_counts = row
    touches = distribution(n, t_mean, t_q, t_counts, TOUCH_BUCKETS)
    days = distribution(n, d_mean, d_q, d_counts, DAY_BUCKETS)
    if int(n) < min_n:  # too few to say anything: counts only
        hidden = {"mean": None, "p25": None, "median": None, "p75": None, "p90": None}
        note = f"{int(n)} buyers, fewer than {min_n}: no distribution"
        return JourneyGroupOut(
            key=key,
            buyers=int(n),
            touches=touches.model_copy(update=hidden),
            days=days.model_copy(update=hidden),
            note=note,
        )
    return JourneyGroupOut(key=key, buyers=int(n), touches=touches, days=days)


def journey_report_body(
    rows: Rows, channel_rows: Rows, from_ms: int, to_ms: int, min_n: int = DEFAULT_MIN_N
) -> JourneyReportOut:
    """The report from :data:`REPORT`'s rows (kind, key, 8 distribution columns) and
    :data:`CHANNEL_REPORT`'s (channel, 4 distribution columns, total touches)."""
    groups: dict[str, dict[str, Sequence[Any]]] = {}
    for kind, key, *values in rows:
        groups.setdefault(str(kind), {})[str(key)] = values
    everyone = _group(None, groups.get("all", {}).get(""), 1)
    buyers = everyone.buyers
    per_channel = {str(r[0]): r for r in channel_rows}
    total_touches = sum(int(r[5]) for r in channel_rows)
    by_channel = []
    for channel in CHANNELS:
        row = per_channel.get(channel)
        touches = distribution(row[1], row[2], row[3], row[4], TOUCH_BUCKETS) if row else _empty(TOUCH_BUCKETS)
        share = int(row[5]) / total_touches if row is not None and total_touches else None
        by_channel.append(ChannelTouchesOut(channel=channel, touches=touches, share_of_touches=share))

    def grouped(kind: str) -> list[JourneyGroupOut]:
        found = groups.get(kind, {})
        return [_group(key or None, found[key], min_n) for key in sorted(found, key=lambda k: (k == "", k))]

    offline = int(groups.get("first_channel", {}).get(OFFLINE, (0,))[0])
    notes = [] if buyers else ["no first order in the window"]
    return JourneyReportOut(
        **{"from": _at(from_ms)},
        to=_at(to_ms),
        buyers=buyers,
        touches=everyone.touches,
        days=everyone.days,
        by_channel=by_channel,
        by_first_channel=grouped("first_channel"),
        by_persona=grouped("persona"),
        by_stage=grouped("stage"),
        offline_first=OfflineFirstOut(buyers=buyers, offline=offline, share=offline / buyers if buyers else None),
        min_n=min_n,
        notes=notes,
    )


async def journey_report(
    store: Store, from_ms: int, to_ms: int, min_n: int = DEFAULT_MIN_N, order_events: Sequence[str] = ORDER_EVENTS
) -> JourneyReportOut:
    """Distributions of the journey facts of the buyers whose first order is in ``[from_ms, to_ms)``."""
    parameters = {"from": from_ms, "to": to_ms, "order_events": list(order_events)}
    rows = await store.query(REPORT, parameters)
    channel_rows = await store.query(CHANNEL_REPORT, parameters)
    return journey_report_body(rows, channel_rows, from_ms, to_ms, min_n)
