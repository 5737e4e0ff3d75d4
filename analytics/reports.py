"""Reads and reports over the ClickHouse archive: the SQL, and the shaping of its rows into the API
bodies (``schemas.api_analytics``). No HTTP here; :mod:`api.routers.reports` and :mod:`api.routers.contacts` serve them.

Rules the queries keep:

- Every table is a ReplacingMergeTree that may hold a record twice until parts merge, so a query
  reads ``FINAL`` (or aggregates with ``argMax`` over the key), and its answer does not depend on
  whether a re-read batch has merged yet. ``WHERE`` on a ``FINAL`` read filters the surviving row:
  an older version of a contact never matches a filter the latest one fails.
- Engagement is stored as of an instant (``contacts``: ``last_seen``; ``score_ledger``: ``at``) and
  decays with the active model's half-life, ``e * 2^(-(t - at) / H)`` (an instant before ``at``
  leaves it undecayed, as the core does for events stamped in the future). Filters and averages
  over engagement use it decayed to the request time, the number ``GET /v1/contacts/{id}`` shows.
- The sync list is ordered by the row's arrival in the archive (``contacts.inserted_at``, then the
  contact id), not by ``updated_at``: the sink may insert a change late (batches, a ClickHouse
  outage), and a cursor over ``updated_at`` would step over a change that arrives after the reader
  passed its time. Arrival order never puts a new row behind a cursor: a contact changed after a
  page was read comes again later, and no other is skipped or repeated. Arrival times come from
  the ClickHouse server's clock at insert; against a server, rows younger than ``settle_ms`` are
  held back so that an insert still in progress when a page was read cannot land behind it.
- A contact's history is of one model (``?model=``, default the active model's version): after a
  promotion ``score_ledger`` holds two namespaces' rows for the same period.
- Stage history: the initial stage is entered without a trigger (the core emits none for it), so
  entries into it are the contacts' ``first_seen`` (``contacts``); every other entry is a row of
  ``stage_transitions``. Several transitions at one instant (a chain) are ordered by following
  ``from_stage`` -> ``to_stage``.
"""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from analytics.client import Store
from analytics.errors import AnalyticsError
from schemas.api_analytics import (
    AsOfOut,
    ContactListOut,
    ContactRowOut,
    ForecastAccountsOut,
    ForecastAccountStageOut,
    ForecastAccountValueOut,
    ForecastOut,
    ForecastStageOut,
    ForecastValueOut,
    FunnelOut,
    FunnelStageOut,
    GroupScoreOut,
    HistoryOut,
    LedgerRowOut,
    PersonaCellOut,
    PersonasOut,
    RfmCellOut,
    RfmReportBoundariesOut,
    RfmReportOut,
    RfmSegmentOut,
    TransitionOut,
)
from schemas.times import DAY_MS
from schemas.times import at_of as _at
from schemas.times import dt_of as _dt
from scorestream import Model
from scorestream.identity import anonymous_contact_id
from scorestream.rfm import RfmBoundaries
from scorestream.rules.groups import ScoreGroup
from scorestream.rules.value import DEFAULT_SEGMENTS, SegmentRule, segment_of
from scorestream.scoring import band_of, grade, round_score
from scorestream.state import decay

CURSOR_VERSION = 1
MAX_MERGE_HOPS = 8
Rows = list[tuple[Any, ...]]


class InvalidParameter(AnalyticsError, ValueError):
    """A request parameter the reports cannot use; ``param`` names it (the API answers 422)."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(f"{param}: {message}")
        self.param = param


def _text(value: Any) -> str | None:
    """Empty strings (ClickHouse's "none" for String columns) as None."""
    return str(value) if value else None


def _days(ms: float | None) -> float | None:
    return None if ms is None or math.isnan(ms) else ms / DAY_MS


def decayed(engagement: float, at_ms: int | None, now_ms: int, half_life_ms: int) -> float:
    """``engagement`` stored as of ``at_ms``, decayed to ``now_ms`` (not grown when ``now_ms`` is
    earlier), rounded as the API shows scores. The SQL decays with the same formula."""
    if at_ms is None or now_ms <= at_ms:
        return round_score(engagement)
    return round_score(decay(engagement, at_ms, now_ms, half_life_ms))


def _decay_sql(engagement: str, at: str) -> str:
    """SQL of :func:`decayed` before rounding; parameters ``now`` and ``half_life``."""
    return (
        f"{engagement} * exp2(-greatest({{now:Int64}} - ifNull(toUnixTimestamp64Milli({at}), {{now:Int64}}), 0)"
        " / {half_life:Float64})"
    )


def model_filter_sql(column: str) -> str:
    """Rows of the model named by parameter ``model``: a version (``name@hash``) or a name (any of
    its versions); an empty ``model`` means every model."""
    return (
        f"({{model:String}} = '' OR {column} = {{model:String}} OR startsWith({column}, concat({{model:String}}, '@')))"
    )


# --- the sync list -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Position:
    """A place in the sync list: the arrival time of a row and its contact id (ties)."""

    at_ms: int
    contact_id: str


START = Position(0, "")


def encode_cursor(position: Position) -> str:
    """An opaque, URL-safe cursor for ``position`` (base64 of ``[version, at_ms, contact_id]``)."""
    raw = orjson.dumps([CURSOR_VERSION, position.at_ms, position.contact_id])
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def decode_cursor(cursor: str) -> Position:
    """The position of a cursor :func:`encode_cursor` made; :class:`InvalidParameter` otherwise."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        value = orjson.loads(raw)
    except (binascii.Error, ValueError, orjson.JSONDecodeError):
        raise InvalidParameter("cursor", "not a cursor of this list") from None
    if (
        not isinstance(value, list)
        or len(value) != 3
        or value[0] != CURSOR_VERSION
        or not isinstance(value[1], int)
        or isinstance(value[1], bool)
        or value[1] < 0
        or not isinstance(value[2], str)
    ):
        raise InvalidParameter("cursor", "not a cursor of this list")
    return Position(value[1], value[2])


@dataclass(frozen=True, slots=True)
class ContactFilter:
    """The sync list's filters; empty ones do not filter."""

    stages: tuple[str, ...] = ()
    min_engagement: float | None = None  # decayed to the request time
    segment: str | None = None  # the stored RFM segment
    flag: str | None = None
    updated_since_ms: int | None = None
    include_removed: bool = False  # also merged and deleted contacts
    rfm_r: int | None = None  # the R score (1-5) under ``rfm_boundaries``, as ``GET /v1/reports/rfm``'s grid
    rfm_f: int | None = None  # the F score (1-5), likewise
    rfm_boundaries: RfmBoundaries | None = None  # the population's current boundaries (needed by rfm_r / rfm_f)
    group: str | None = None  # a score group: contacts with points in it (see check_group)
    min_score: float | None = None  # the group's score decayed to the request time (clamped) at least this


def check_group(group: str | None, model: Model, param: str = "group") -> ScoreGroup | None:
    """The score group ``group`` names in ``model`` (None for none); :class:`InvalidParameter`
    naming the model's groups when it declares no such group."""
    if not group:
        return None
    found = model.group(group)
    if found is None:
        known = ", ".join(g.id for g in model.groups) or "none (it declares no engagement.groups)"
        raise InvalidParameter(param, f"unknown score group {group!r}; the model {model.version} has: {known}")
    return found


def group_filter(filters: ContactFilter, model: Model) -> ScoreGroup | None:
    """The score group the sync list filters by (:func:`check_group`); ``min_score`` needs one."""
    group = check_group(filters.group, model)
    if filters.min_score is not None and group is None:
        raise InvalidParameter("min_score", "is a score group's score: give `group` (min_engagement: the overall one)")
    return group


def group_score_sql(column: str, at: str) -> str:
    """SQL of a score group's score at ``{now}``: the raw score ``column[{group}]`` stored as of
    ``at``, decayed at ``{group_half_life}``, then clamped to ``[-{group_max}, {group_max}]``, as
    :func:`scorestream.scoring.group_scores` computes it (``deploy/clickhouse/0007_score_groups.sql``)."""
    raw = f"{column}[{{group:String}}]"
    decayed = (
        f"{raw} * exp2(-greatest({{now:Int64}} - ifNull(toUnixTimestamp64Milli({at}), {{now:Int64}}), 0)"
        " / {group_half_life:Float64})"
    )
    return f"least(greatest({decayed}, -{{group_max:Float64}}), {{group_max:Float64}})"


def group_parameters(group: ScoreGroup | None) -> dict[str, Any]:
    """The parameters of :func:`group_score_sql` (``group`` empty: none)."""
    return {
        "group": group.id if group is not None else "",
        "group_half_life": float(group.half_life_ms) if group is not None else 1.0,
        "group_max": group.max if group is not None and group.max is not None else math.inf,
    }


def groups_now(raw: Mapping[str, float], at_ms: int | None, model: Model, now_ms: int) -> list[GroupScoreOut]:
    """Every score group of ``model`` at ``now_ms`` from the raw scores stored as of ``at_ms``
    (decayed at each group's half-life, then clamped), in model order, as the contact route shows them."""
    out = []
    for group in model.groups:
        score = round_score(group.clamp(decayed(float(raw.get(group.id, 0.0)), at_ms, now_ms, group.half_life_ms)))
        out.append(GroupScoreOut(id=group.id, score=score, band=band_of(group.bands, score)))
    return out


# R and F as the core scores them (scorestream.rfm.score): 1 + the boundaries the value is above;
# of customers only (orders > 0 and a last order). Parameters: recency, frequency.
RFM_R_SQL = (
    "1 + arrayCount(b -> toFloat64(toUnixTimestamp64Milli(assumeNotNull(last_order_at))) > b, {recency:Array(Float64)})"
)
RFM_F_SQL = "1 + arrayCount(b -> toFloat64(orders) > b, {frequency:Array(Float64)})"


CONTACT_COLUMNS_SQL = f"""
    contact_id,
    toUnixTimestamp64Milli(inserted_at) AS position,
    toString(status),
    merged_into,
    user_id,
    email,
    account_id,
    stage,
    toUnixTimestamp64Milli(stage_since),
    persona,
    flags,
    engagement,
    {_decay_sql("engagement", "last_seen")} AS engagement_now,
    fit,
    fit_grade,
    rfm_segment,
    orders,
    revenue,
    toUnixTimestamp64Milli(first_order_at),
    toUnixTimestamp64Milli(last_order_at),
    toUnixTimestamp64Milli(first_seen),
    toUnixTimestamp64Milli(last_seen),
    toUnixTimestamp64Milli(updated_at),
    model_version,
    groups
"""

CONTACT_LIST = f"""
SELECT {CONTACT_COLUMNS_SQL}
FROM contacts FINAL
WHERE (inserted_at, contact_id) > (fromUnixTimestamp64Milli({{after_ms:Int64}}, 'UTC'), {{after_id:String}})
  AND inserted_at <= now64(3) - toIntervalMillisecond({{settle_ms:Int64}})
  AND ({{include_removed:UInt8}} = 1 OR status = 'active')
  AND (empty({{stages:Array(String)}}) OR has({{stages:Array(String)}}, toString(stage)))
  AND ({{flag:String}} = '' OR has(flags, {{flag:String}}))
  AND ({{segment:String}} = '' OR rfm_segment = {{segment:String}})
  AND updated_at >= fromUnixTimestamp64Milli({{since_ms:Int64}}, 'UTC')
  AND ({{use_min:UInt8}} = 0 OR engagement_now >= {{min_engagement:Float64}})
  AND ({{rfm_r:UInt8}} = 0 OR (orders > 0 AND last_order_at IS NOT NULL AND {RFM_R_SQL} = {{rfm_r:UInt8}}))
  AND ({{rfm_f:UInt8}} = 0 OR (orders > 0 AND last_order_at IS NOT NULL AND {RFM_F_SQL} = {{rfm_f:UInt8}}))
  AND ({{group:String}} = '' OR mapContains(groups, {{group:String}}))
  AND ({{use_min_score:UInt8}} = 0 OR {group_score_sql("groups", "last_seen")} >= {{min_score:Float64}})
ORDER BY inserted_at, contact_id
LIMIT {{limit:UInt32}}
"""  # noqa: S608 (constant fragments; values are bound as parameters)


def contact_row(row: Sequence[Any], model: Model, now_ms: int) -> ContactRowOut:
    """A row of :data:`CONTACT_LIST` as the list shows it (engagement decayed to ``now_ms``)."""
    (
        contact_id,
        _position,
        status,
        merged_into,
        user_id,
        email,
        account_id,
        stage,
        stage_since,
        persona,
        flags,
        engagement,
        engagement_now,
        fit,
        fit_grade,
        segment,
        orders,
        revenue,
        first_order,
        last_order,
        first_seen,
        last_seen,
        updated_at,
        model_version,
        groups,
    ) = row
    now_score = round_score(float(engagement_now))
    band = band_of(model.engagement_bands, now_score) if status == "active" else ""
    return ContactRowOut(
        contact_id=str(contact_id),
        status=str(status),
        merged_into=_text(merged_into),
        user_id=_text(user_id),
        email=_text(email),
        account_id=_text(account_id),
        stage=_text(stage),
        stage_since=_dt(stage_since),
        persona=_text(persona),
        flags=[str(f) for f in flags],
        engagement=now_score,
        engagement_band=band,
        engagement_at_last_seen=round_score(float(engagement)),
        fit=float(fit),
        fit_grade=str(fit_grade),
        grade=grade(str(fit_grade), band) if status == "active" else "",
        rfm_segment=_text(segment),
        orders=int(orders),
        revenue=float(revenue),
        first_order_at=_dt(first_order),
        last_order_at=_dt(last_order),
        first_seen=_dt(first_seen),
        last_seen=_dt(last_seen),
        updated_at=_at(int(updated_at)),
        model_version=str(model_version),
        groups=groups_now(groups, last_seen, model, now_ms) if status == "active" else [],
    )


def contact_list_parameters(
    model: Model, filters: ContactFilter, after: Position, limit: int, now_ms: int, settle_ms: int
) -> dict[str, Any]:
    """The parameters of :data:`CONTACT_LIST` (``limit + 1`` rows: the extra one says there is more)."""
    group = group_filter(filters, model)
    return {
        "after_ms": after.at_ms,
        "after_id": after.contact_id,
        "settle_ms": settle_ms,
        "include_removed": int(filters.include_removed),
        "stages": list(filters.stages),
        "flag": filters.flag or "",
        "segment": filters.segment or "",
        "since_ms": filters.updated_since_ms or 0,
        "use_min": int(filters.min_engagement is not None),
        "min_engagement": filters.min_engagement if filters.min_engagement is not None else 0.0,
        **rfm_filter_parameters(filters),
        **group_parameters(group),
        "use_min_score": int(filters.min_score is not None),
        "min_score": filters.min_score if filters.min_score is not None else 0.0,
        "now": now_ms,
        "half_life": float(model.half_life_ms),
        "limit": limit + 1,
    }


def rfm_filter_parameters(filters: ContactFilter) -> dict[str, Any]:
    """The R / F filter's parameters (0: no filter); a filter without boundaries is refused."""
    bounds = filters.rfm_boundaries
    if (filters.rfm_r or filters.rfm_f) and bounds is None:
        raise InvalidParameter("rfm_r" if filters.rfm_r else "rfm_f", "no RFM boundaries to score R and F against yet")
    return {
        "rfm_r": filters.rfm_r or 0,
        "rfm_f": filters.rfm_f or 0,
        "recency": list(bounds.last_order_ms) if bounds is not None else [],
        "frequency": list(bounds.frequency) if bounds is not None else [],
    }


def contact_page(rows: Rows, model: Model, after: Position, limit: int, now_ms: int) -> ContactListOut:
    """A page of the list from :data:`CONTACT_LIST`'s rows; the cursor is the last row's position
    (the request's own when the page is empty, so a sync polls on from where it was)."""
    page = rows[:limit]
    last = Position(int(page[-1][1]), str(page[-1][0])) if page else after
    return ContactListOut(
        data=[contact_row(r, model, now_ms) for r in page],
        next_cursor=encode_cursor(last),
        has_more=len(rows) > limit,
        as_of=_at(now_ms),
    )


async def contact_list(
    store: Store, model: Model, filters: ContactFilter, after: Position, limit: int, now_ms: int, settle_ms: int
) -> ContactListOut:
    rows = await store.query(CONTACT_LIST, contact_list_parameters(model, filters, after, limit, now_ms, settle_ms))
    return contact_page(rows, model, after, limit, now_ms)


# --- resolving an id ---------------------------------------------------------------------------

RESOLVE = """
SELECT contact_id, toString(status), merged_into, email
FROM contacts FINAL
WHERE has({ids:Array(String)}, contact_id) OR (email != '' AND email = {email:String})
"""


def resolved(ident: str, rows: Rows) -> str | None:
    """Which contact ``ident`` names among :data:`RESOLVE`'s rows, as the API's replica decides: a
    contact id, then an anonymous id, then an email (the most recently active if several)."""
    by_id = {str(r[0]): r for r in rows}
    for candidate in (ident, anonymous_contact_id(ident)):
        if candidate in by_id:
            return candidate
    email = ident.strip().casefold()
    owners = sorted(str(r[0]) for r in rows if r[3] == email and r[1] == "active")
    return owners[0] if owners else None


async def resolve_contact(store: Store, ident: str) -> str | None:
    """The contact id ``ident`` names in the archive (a contact id, an anonymous id or an email),
    following merges to the surviving contact; None when the archive has no such contact."""
    rows = await store.query(RESOLVE, {"ids": [ident, anonymous_contact_id(ident)], "email": ident.strip().casefold()})
    found = resolved(ident, rows)
    if found is None:
        return None
    return await follow_merges(store, found)


FOLLOW = "SELECT toString(status), merged_into FROM contacts FINAL WHERE contact_id = {id:String}"


async def follow_merges(store: Store, contact_id: str) -> str:
    """The contact ``contact_id`` was merged into, transitively (itself when not merged)."""
    current = contact_id
    for _ in range(MAX_MERGE_HOPS):
        rows = await store.query(FOLLOW, {"id": current})
        if not rows or rows[0][0] != "merged" or not rows[0][1]:
            return current
        current = str(rows[0][1])
    return current


# --- history -----------------------------------------------------------------------------------

# History is of one model (parameter ``model``, see :func:`model_filter_sql`; the API's default is
# the active model's version). After a promotion ``score_ledger`` holds the rows of two namespaces'
# changelogs for the same period (the sink reads the new one from its beginning): mixed, they would
# interleave two models' scores. The stage transitions (public triggers, each tagged with the model
# that announced it: the old one before the promotion's cut, the new one from it) are filtered the
# same way, so that the as-of stage never takes another model's move; the new model's stages before
# the cut are in its ledger rows.

LEDGER = f"""
SELECT toUnixTimestamp64Milli(at), toString(kind), toString(cause), engagement, engagement_band, fit, fit_grade,
       stage, rules, message_ids, merged_into, model_version, groups
FROM score_ledger FINAL
WHERE contact_id = {{id:String}} AND {model_filter_sql("model_version")}
  AND at >= fromUnixTimestamp64Milli({{from:Int64}}, 'UTC') AND at < fromUnixTimestamp64Milli({{to:Int64}}, 'UTC')
ORDER BY at, kafka_topic, kafka_partition, kafka_offset
LIMIT {{limit:UInt32}}
"""  # noqa: S608 (constant fragments; values are bound as parameters)

TRANSITIONS = f"""
SELECT toUnixTimestamp64Milli(at), from_stage, to_stage, rule, cause, model_version, trigger_id
FROM stage_transitions FINAL
WHERE subject_kind = 'contact' AND subject_id = {{id:String}} AND {model_filter_sql("model_version")}
  AND at >= fromUnixTimestamp64Milli({{from:Int64}}, 'UTC') AND at < fromUnixTimestamp64Milli({{to:Int64}}, 'UTC')
ORDER BY at, trigger_id
LIMIT {{limit:UInt32}}
"""  # noqa: S608 (constant fragments; values are bound as parameters)

# the last ledger row at or before an instant (duplicates of a row are the same row: no FINAL)
LEDGER_AS_OF = f"""
SELECT count(),
       argMax(tuple(toUnixTimestamp64Milli(at), toString(kind), engagement, fit, fit_grade, stage, model_version,
                    groups),
              tuple(at, kafka_offset))
FROM score_ledger
WHERE contact_id = {{id:String}} AND {model_filter_sql("model_version")}
  AND at <= fromUnixTimestamp64Milli({{as_of:Int64}}, 'UTC')
"""  # noqa: S608 (constant fragments; values are bound as parameters)

# the transitions at the last instant at or before one (a chain has several)
LAST_TRANSITIONS = f"""
SELECT toUnixTimestamp64Milli(at), from_stage, to_stage, rule, cause, model_version, trigger_id
FROM stage_transitions FINAL
WHERE subject_kind = 'contact' AND subject_id = {{id:String}} AND {model_filter_sql("model_version")}
  AND at = (SELECT max(at) FROM stage_transitions
            WHERE subject_kind = 'contact' AND subject_id = {{id:String}} AND {model_filter_sql("model_version")}
              AND at <= fromUnixTimestamp64Milli({{as_of:Int64}}, 'UTC'))
"""  # noqa: S608 (constant fragments; values are bound as parameters)


def chain_order(transitions: Iterable[TransitionOut]) -> list[TransitionOut]:
    """``transitions`` by time; those at one instant (a chain: lead -> mql -> sql at once) in the
    order they happened, each leaving the stage the previous one entered. Any that do not link up
    follow in ``trigger_id`` order."""
    out: list[TransitionOut] = []
    by_at: dict[datetime, list[TransitionOut]] = {}
    for t in transitions:
        by_at.setdefault(t.at, []).append(t)
    for at in sorted(by_at):
        group = sorted(by_at[at], key=lambda t: t.trigger_id)
        if len(group) > 1:
            entered = {t.to_stage for t in group}
            heads = [t for t in group if t.from_stage not in entered] or group[:1]
            chain = [heads[0]]
            rest = [t for t in group if t is not heads[0]]
            while rest:
                nxt = next((t for t in rest if t.from_stage == chain[-1].to_stage), rest[0])
                chain.append(nxt)
                rest.remove(nxt)
            group = chain
        out.extend(group)
    return out


def transition_out(row: Sequence[Any]) -> TransitionOut:
    at, from_stage, to_stage, rule, cause, model_version, trigger_id = row
    return TransitionOut(
        at=_at(int(at)),
        from_stage=_text(from_stage),
        to_stage=str(to_stage),
        rule=str(rule),
        cause=_text(cause),
        model_version=str(model_version),
        trigger_id=str(trigger_id),
    )


def ledger_out(row: Sequence[Any], model: Model | None = None) -> LedgerRowOut:
    """A row of :data:`LEDGER`; with ``model``, its score groups at ``at`` (clamped by their ``max``)."""
    at, kind, cause, engagement, band, fit, fit_grade, stage, rules, mids, merged_into, model_version, groups = row
    return LedgerRowOut(
        at=_at(int(at)),
        kind=str(kind),
        cause=str(cause),
        engagement=round_score(float(engagement)),
        engagement_band=str(band),
        fit=float(fit),
        fit_grade=str(fit_grade),
        stage=_text(stage),
        rules=[str(r) for r in rules],
        message_ids=[str(m) for m in mids],
        merged_into=_text(merged_into),
        model_version=str(model_version),
        groups=groups_now(groups, int(at), model, int(at)) if model is not None and kind == "score" else [],
    )


def as_of_view(as_of_ms: int, ledger: Rows, last_transitions: Sequence[TransitionOut], model: Model) -> AsOfOut | None:
    """The scores at ``as_of_ms`` from :data:`LEDGER_AS_OF`'s row and the transitions at the last
    instant by then: engagement decayed from the ledger row's ``at``; the stage of the ledger row,
    unless a transition came after it (time alone moves stages: decay, timers)."""
    if not ledger or int(ledger[0][0]) == 0:
        return None
    at, kind, engagement, fit, fit_grade, stage, model_version, groups = ledger[0][1]
    at = int(at)
    score = decayed(float(engagement), at, as_of_ms, model.half_life_ms) if kind == "score" else 0.0
    band = band_of(model.engagement_bands, score) if kind == "score" else ""
    current = _text(stage)
    chain = chain_order(last_transitions)
    if chain and chain[-1].at > _at(at):
        current = chain[-1].to_stage
    return AsOfOut(
        at=_at(as_of_ms),
        kind=str(kind),
        engagement=score,
        engagement_band=band,
        fit=float(fit),
        fit_grade=str(fit_grade),
        grade=grade(str(fit_grade), band) if kind == "score" else "",
        stage=current if kind == "score" else None,
        ledger_at=_at(at),
        model_version=str(model_version),
        groups=groups_now(groups, at, model, as_of_ms) if kind == "score" else [],
    )


async def history(
    store: Store,
    model: Model,
    contact_id: str,
    from_ms: int | None,
    to_ms: int,
    as_of_ms: int,
    limit: int,
    model_version: str | None = None,
) -> HistoryOut:
    """The contact's ledger rows and stage transitions in ``[from_ms, to_ms)`` (at most ``limit``
    of each, oldest first) and its scores as of ``as_of_ms``, all of the model ``model_version``
    (a version or a name; default: ``model``'s version). ``model`` decays and bands the as-of
    scores: the model the rows are of, when the caller has it."""
    chosen = model_version or model.version
    window = {"id": contact_id, "from": from_ms or 0, "to": to_ms, "limit": limit + 1, "model": chosen}
    ledger = await store.query(LEDGER, window)
    transitions = await store.query(TRANSITIONS, window)
    point = {"id": contact_id, "as_of": as_of_ms, "model": chosen}
    last = await store.query(LEDGER_AS_OF, point)
    at_last = [transition_out(r) for r in await store.query(LAST_TRANSITIONS, point)]
    return HistoryOut(
        contact_id=contact_id,
        model=chosen,
        **{"from": _dt(from_ms)},  # "from" is a Python keyword: the field is from_, aliased
        to=_at(to_ms),
        ledger=[ledger_out(r, model) for r in ledger[:limit]],
        transitions=chain_order(transition_out(r) for r in transitions[:limit]),
        truncated=len(ledger) > limit or len(transitions) > limit,
        as_of=as_of_view(as_of_ms, last, at_last, model),
    )


# --- stage entries (funnel, forecast) ----------------------------------------------------------

# Every entry into a stage: (contact, t, stage, from_stage). Parameters: model, initial.
STAGE_ENTRIES = f"""
SELECT subject_id AS contact, toUnixTimestamp64Milli(at) AS t, toString(to_stage) AS stage,
       toString(from_stage) AS from_stage
FROM stage_transitions FINAL
WHERE subject_kind = 'contact' AND {model_filter_sql("model_version")}
UNION ALL
SELECT contact_id AS contact, toUnixTimestamp64Milli(assumeNotNull(first_seen)) AS t, {{initial:String}} AS stage,
       '' AS from_stage
FROM contacts FINAL
WHERE first_seen IS NOT NULL AND {{initial:String}} != ''
"""  # noqa: S608 (constant fragments; values are bound as parameters)


def default_funnel(model: Model) -> list[str]:
    """The model's stages in order, from the first up to the customer stage (all but the
    disqualified stage when there is none)."""
    lc = model.lifecycle
    if lc is None:
        return []
    stages = [s for s in lc.stages if s != lc.disqualified]
    if lc.customer_stage is not None and lc.customer_stage in stages:
        stages = stages[: stages.index(lc.customer_stage) + 1]
    return stages


def check_stages(stages: Sequence[str], model: Model) -> None:
    """A funnel's stages: 1 to 20 distinct names, stages of the model when it has a lifecycle."""
    if not stages:
        raise InvalidParameter("stages", "name at least one stage (the model has no lifecycle)")
    if len(stages) > 20:
        raise InvalidParameter("stages", "at most 20 stages")
    if len(set(stages)) != len(stages):
        raise InvalidParameter("stages", "a stage is listed twice")
    if model.lifecycle is not None:
        unknown = [s for s in stages if s not in model.lifecycle.stages]
        if unknown:
            raise InvalidParameter(
                "stages", f"unknown stage(s) {', '.join(unknown)}; stages: {', '.join(model.lifecycle.stages)}"
            )


# How far each contact got: its entries into the funnel's stages in the window, in time order
# (entries at one instant in funnel order), folded into the times at which it reached step 1, 2,
# ... The same as windowFunnel(to - from)(t, cond_1, ..., cond_n) in its default mode, with
# cond_1 = "entered step 1" and cond_k = "entered step k" (sequential) or "entered step k or a
# later one" (cumulative); one entry can reach several steps at once in cumulative mode.
FUNNEL_STEPS = f"""
WITH {{stages:Array(String)}} AS funnel, {{sequential:UInt8}} AS seq
SELECT k, count() AS reached, quantileExactInclusive(0.5)(times[k] - times[1]) AS velocity
FROM (
    SELECT arrayFold(
               (acc, x) -> if(
                   if(length(acc) = 0, x.2 = 1, x.2 > length(acc) AND (seq = 0 OR x.2 = length(acc) + 1)),
                   arrayConcat(acc, arrayWithConstant(greatest(x.2, length(acc)) - length(acc), x.1)),
                   acc),
               arraySort(groupArray((t, indexOf(funnel, stage)))),
               CAST([], 'Array(Int64)')) AS times
    FROM ({STAGE_ENTRIES})
    WHERE t >= {{from:Int64}} AND t < {{to:Int64}} AND has(funnel, stage)
    GROUP BY contact
)
ARRAY JOIN arrayEnumerate(times) AS k
GROUP BY k
ORDER BY k
"""  # noqa: S608 (constant fragments; values are bound as parameters)

# Per stage: contacts that entered it in the window, and the stays that began then: ended (the
# first later transition out of the stage) or not, with the median length of the ended ones.
FUNNEL_STAYS = f"""
WITH {{stages:Array(String)}} AS funnel
SELECT stage, uniqExact(contact), countIf(exit_t >= 0), countIf(exit_t < 0),
       quantileExactInclusiveIf(0.5)(exit_t - t, exit_t >= 0)
FROM (
    SELECT contact, e.1 AS t, e.2 AS stage,
           arrayMap(x -> x.1, arrayFilter(x -> x.3 = e.2 AND x.1 >= e.1, entries)) AS exits,
           if(empty(exits), toInt64(-1), arrayMin(exits)) AS exit_t
    FROM (
        SELECT contact, groupArray((t, stage, from_stage)) AS entries
        FROM ({STAGE_ENTRIES})
        WHERE contact IN (
            SELECT contact FROM ({STAGE_ENTRIES})
            WHERE t >= {{from:Int64}} AND t < {{to:Int64}} AND has(funnel, stage)
        )
        GROUP BY contact
    )
    ARRAY JOIN entries AS e
    WHERE e.1 >= {{from:Int64}} AND e.1 < {{to:Int64}} AND has(funnel, e.2)
)
GROUP BY stage
"""  # noqa: S608 (constant fragments; values are bound as parameters)


def funnel_parameters(
    model: Model, stages: Sequence[str], from_ms: int, to_ms: int, sequential: bool, model_version: str | None
) -> dict[str, Any]:
    initial = model.lifecycle.initial if model.lifecycle is not None else ""
    return {
        "stages": list(stages),
        "sequential": int(sequential),
        "from": from_ms,
        "to": to_ms,
        "model": model_version or "",
        "initial": initial,
    }


def funnel_body(
    stages: Sequence[str],
    steps: Rows,
    stays: Rows,
    from_ms: int,
    to_ms: int,
    sequential: bool,
    model_version: str | None,
) -> FunnelOut:
    """The funnel from :data:`FUNNEL_STEPS` (step -> reached, velocity in ms) and
    :data:`FUNNEL_STAYS` (stage -> entered, ended stays, open stays, median stay in ms)."""
    reached = {int(k): (int(n), float(v)) for k, n, v in steps}
    per_stage = {str(s): (int(e), int(c), int(o), float(m)) for s, e, c, o, m in stays}
    first = reached.get(1, (0, 0.0))[0]
    out: list[FunnelStageOut] = []
    previous: int | None = None
    for k, stage in enumerate(stages, start=1):
        n, velocity = reached.get(k, (0, math.nan))
        entered, completed, open_, median = per_stage.get(stage, (0, 0, 0, math.nan))
        out.append(
            FunnelStageOut(
                stage=stage,
                entered=entered,
                reached=n,
                conversion=None if previous is None else (n / previous if previous else None),
                conversion_from_start=(n / first) if first else None,
                median_days_in_stage=_days(median) if completed else None,
                completed_stays=completed,
                open_stays=open_,
                median_days_from_start=_days(velocity) if n else None,
            )
        )
        previous = n
    return FunnelOut(
        model=model_version,
        mode="sequential" if sequential else "cumulative",
        **{"from": _at(from_ms)},
        to=_at(to_ms),
        stages=out,
    )


async def funnel(
    store: Store,
    model: Model,
    stages: Sequence[str],
    from_ms: int,
    to_ms: int,
    sequential: bool = False,
    model_version: str | None = None,
) -> FunnelOut:
    parameters = funnel_parameters(model, stages, from_ms, to_ms, sequential, model_version)
    steps = await store.query(FUNNEL_STEPS, parameters)
    stays = await store.query(FUNNEL_STAYS, parameters)
    return funnel_body(stages, steps, stays, from_ms, to_ms, sequential, model_version)


# --- RFM ---------------------------------------------------------------------------------------

# R and F as the core scores them (RFM_R_SQL, RFM_F_SQL; the sync list filters by the same).
RFM_GRID = f"""
SELECT r, f, count(), sum(revenue)
FROM (
    SELECT {RFM_R_SQL} AS r, {RFM_F_SQL} AS f, revenue
    FROM contacts FINAL
    WHERE status = 'active' AND orders > 0 AND last_order_at IS NOT NULL
)
GROUP BY r, f
"""  # noqa: S608 (constant fragments; values are bound as parameters)

RFM_STORED = """
SELECT rfm_segment, countIf(orders > 0), sumIf(revenue, orders > 0), countIf(orders = 0)
FROM contacts FINAL
WHERE status = 'active'
GROUP BY rfm_segment
"""


def rfm_body(
    grid_rows: Rows,
    stored_rows: Rows,
    bounds: RfmBoundaries | None,
    segments: Sequence[SegmentRule] = DEFAULT_SEGMENTS,
) -> RfmReportOut:
    """The R x F grid (R 5..1, F 1..5) and segment sizes under ``bounds``; without boundaries,
    the segments the contacts were last given (``stored_rows``: segment, customers, their
    revenue, non-customers)."""
    non_customers = sum(int(r[3]) for r in stored_rows)
    if bounds is None:
        sizes: dict[str, tuple[int, float]] = {}
        for segment, customers, revenue, _ in stored_rows:
            if int(customers):
                name = str(segment) or "(none)"
                n, v = sizes.get(name, (0, 0.0))
                sizes[name] = (n + int(customers), v + float(revenue))
        return _rfm(sizes, [], None, non_customers, "stored")
    cells = {(int(r), int(f)): (int(n), float(v)) for r, f, n, v in grid_rows}
    grid: list[RfmCellOut] = []
    sizes = {}
    for r in range(5, 0, -1):
        for f in range(1, 6):
            n, v = cells.get((r, f), (0, 0.0))
            name = segment_of(r, f, segments)
            grid.append(RfmCellOut(r=r, f=f, segment=name, contacts=n, revenue=v))
            total_n, total_v = sizes.get(name, (0, 0.0))
            sizes[name] = (total_n + n, total_v + v)
    boundaries = RfmReportBoundariesOut(
        last_order_at=[_at(int(b)) for b in bounds.last_order_ms],
        orders=list(bounds.frequency),
        customers=bounds.customers,
    )
    return _rfm(sizes, grid, boundaries, non_customers, "boundaries")


def _rfm(
    sizes: dict[str, tuple[int, float]],
    grid: list[RfmCellOut],
    boundaries: RfmReportBoundariesOut | None,
    non_customers: int,
    source: str,
) -> RfmReportOut:
    customers = sum(n for n, _ in sizes.values())
    revenue = math.fsum(v for _, v in sizes.values())
    segments = [
        RfmSegmentOut(segment=name, contacts=n, revenue=v, share=n / customers if customers else 0.0)
        for name, (n, v) in sorted(sizes.items(), key=lambda kv: (-kv[1][0], kv[0]))
    ]
    return RfmReportOut(
        customers=customers,
        revenue=revenue,
        non_customers=non_customers,
        boundaries=boundaries,
        grid=grid,
        segments=segments,
        segments_from=source,
    )


async def rfm(store: Store, model: Model, bounds: RfmBoundaries | None) -> RfmReportOut:
    stored = await store.query(RFM_STORED)
    grid: Rows = []
    if bounds is not None:
        parameters = {"recency": list(bounds.last_order_ms), "frequency": list(bounds.frequency)}
        grid = await store.query(RFM_GRID, parameters)
    return rfm_body(grid, stored, bounds, model.value.segments)


# --- personas ----------------------------------------------------------------------------------

PERSONAS = f"""
SELECT persona, stage, count(), avg(e), avg(fit), avg(g)
FROM (
    SELECT persona, stage, fit, {_decay_sql("engagement", "last_seen")} AS e, {group_score_sql("groups", "last_seen")} AS g
    FROM contacts FINAL
    WHERE status = 'active'
)
GROUP BY persona, stage
"""  # noqa: S608 (constant fragments; values are bound as parameters)


def _ordered(found: Iterable[str | None], known: Sequence[str]) -> list[str | None]:
    """``found`` in the order of ``known``, then the unknown ones by name, then None."""
    present = set(found)
    out: list[str | None] = [k for k in known if k in present]
    out += sorted(p for p in present if p is not None and p not in known)
    if None in present:
        out.append(None)
    return out


def personas_body(rows: Rows, model: Model, now_ms: int, group: ScoreGroup | None = None) -> PersonasOut:
    """The persona x stage matrix from :data:`PERSONAS`' rows, in the model's orders; with
    ``group``, each cell's mean score of that score group."""
    lc = model.lifecycle
    cells = {
        (_text(p), _text(s)): PersonaCellOut(
            persona=_text(p),
            stage=_text(s),
            contacts=int(n),
            avg_engagement=round_score(float(e)),
            avg_fit=float(f),
            avg_group_score=round_score(float(g)) if group is not None else None,
        )
        for p, s, n, e, f, g in rows
    }
    personas = _ordered((p for p, _ in cells), [p.id for p in lc.personas] if lc is not None else [])
    stages = _ordered((s for _, s in cells), list(lc.stages) if lc is not None else [])
    ordered = [cells[(p, s)] for p in personas for s in stages if (p, s) in cells]
    return PersonasOut(
        as_of=_at(now_ms),
        personas=personas,
        stages=stages,
        cells=ordered,
        contacts=sum(c.contacts for c in ordered),
        group=group.id if group is not None else None,
    )


async def personas(store: Store, model: Model, now_ms: int, group: ScoreGroup | None = None) -> PersonasOut:
    parameters = {"now": now_ms, "half_life": float(model.half_life_ms), **group_parameters(group)}
    rows = await store.query(PERSONAS, parameters)
    return personas_body(rows, model, now_ms, group)


# --- forecast ----------------------------------------------------------------------------------

# The forecast's totals are of the contacts pipeline only. The accounts pipeline is forecast beside
# it, the same way per account, and not added: an account becomes a customer when one of its
# members (a contact) orders, and its value is its members' order revenue, which the contacts
# pipeline already forecasts through those members; adding the two would count that money twice.

OPEN_CONTACTS = """
SELECT toString(stage), count() FROM contacts FINAL
WHERE status = 'active' AND has({open:Array(String)}, toString(stage))
GROUP BY stage
"""


def _stage_conversion_sql(entries: str, key: str) -> str:
    """Of the subjects (``key``: contacts, accounts) that entered an open stage in the lookback, how
    many entered a customer stage at or after (their first entry into it in the lookback)."""
    return f"""
SELECT e.stage, count(), countIf(w.last_won >= e.first_t)
FROM (
    SELECT {key}, stage, min(t) AS first_t
    FROM ({entries})
    WHERE t >= {{since:Int64}} AND t < {{now:Int64}} AND has({{open:Array(String)}}, stage)
    GROUP BY {key}, stage
) AS e
LEFT JOIN (
    SELECT {key}, max(t) AS last_won
    FROM ({entries})
    WHERE has({{won:Array(String)}}, stage)
    GROUP BY {key}
) AS w ON e.{key} = w.{key}
GROUP BY e.stage
"""  # noqa: S608 (constant fragments; values are bound as parameters)


STAGE_CONVERSION = _stage_conversion_sql(STAGE_ENTRIES, "contact")

CUSTOMER_VALUE = """
SELECT countIf(first_order_at >= fromUnixTimestamp64Milli({since:Int64}, 'UTC')),
       avgIf(revenue, first_order_at >= fromUnixTimestamp64Milli({since:Int64}, 'UTC')),
       count(), avg(revenue)
FROM contacts FINAL
WHERE status = 'active' AND orders > 0
"""

# Accounts have no summary table: an account's current stage is that of its latest row in
# ``account_changes`` (one per accounts changelog record; within a namespace ``at``, the latest
# member report, and the offset only grow), of one model: after a promotion the table holds both
# namespaces' rows. Duplicates of a row are the same row: no FINAL. An account whose members all
# left is not open (nobody in it can buy).
OPEN_ACCOUNTS = f"""
SELECT latest.1 AS stage, count()
FROM (
    SELECT account_id, argMax(tuple(toString(stage), members), tuple(at, kafka_offset)) AS latest
    FROM account_changes
    WHERE {model_filter_sql("model_version")}
    GROUP BY account_id
)
WHERE latest.2 > 0 AND has({{open:Array(String)}}, latest.1)
GROUP BY stage
"""  # noqa: S608 (constant fragments; values are bound as parameters)

# Every entry into an account stage: (account, t, stage). The initial stage is entered without a
# trigger (as for contacts), and the archive keeps no creation time for accounts: the account's
# first archived row stands for it (the changelog record written when it was created, unless
# compaction removed it before the sink read it). Parameters: model, initial.
ACCOUNT_STAGE_ENTRIES = f"""
SELECT subject_id AS account, toUnixTimestamp64Milli(at) AS t, toString(to_stage) AS stage
FROM stage_transitions FINAL
WHERE subject_kind = 'account' AND {model_filter_sql("model_version")}
UNION ALL
SELECT account_id AS account, min(toUnixTimestamp64Milli(at)) AS t, {{initial:String}} AS stage
FROM account_changes
WHERE {model_filter_sql("model_version")}
GROUP BY account_id
"""  # noqa: S608 (constant fragments; values are bound as parameters)

ACCOUNT_STAGE_CONVERSION = _stage_conversion_sql(ACCOUNT_STAGE_ENTRIES, "account")

# The value of a customer account: the net revenue to date of its active contacts (each counts for
# the account it belongs to now); new ones: their first member order in the lookback.
ACCOUNT_VALUE = """
SELECT countIf(first_order >= fromUnixTimestamp64Milli({since:Int64}, 'UTC')),
       avgIf(revenue, first_order >= fromUnixTimestamp64Milli({since:Int64}, 'UTC')),
       count(), avg(revenue)
FROM (
    SELECT account_id, sum(revenue) AS revenue, min(first_order_at) AS first_order
    FROM contacts FINAL
    WHERE status = 'active' AND orders > 0 AND account_id != ''
    GROUP BY account_id
)
"""


def forecast_stages(model: Model) -> tuple[list[str], list[str]]:
    """(open stages in model order, customer stages): open = neither a customer stage nor the
    disqualified one."""
    lc = model.lifecycle
    if lc is None:
        return [], []
    won = [s for s in lc.stages if s in lc.customer_stages]
    return [s for s in lc.stages if s not in lc.customer_stages and s != lc.disqualified], won


def account_forecast_stages(model: Model) -> tuple[list[str], list[str]]:
    """(open account stages, customer account stages), in the account graph's order: open = every
    stage that is not a customer one (``AccountsConfig.customer_stages``)."""
    config = model.accounts
    won = list(config.customer_stages)
    return [s for s in config.stages if s not in won], won


def customer_value(row: Sequence[Any]) -> ForecastValueOut:
    """The value of a new customer from :data:`CUSTOMER_VALUE`'s row."""
    new, new_avg, everyone, all_avg = row
    if int(new):
        return ForecastValueOut(per_customer=float(new_avg), customers=int(new), basis="new_customers")
    if int(everyone):
        return ForecastValueOut(per_customer=float(all_avg), customers=int(everyone), basis="all_customers")
    return ForecastValueOut(per_customer=0.0, customers=0, basis="none")


def account_value(row: Sequence[Any]) -> ForecastAccountValueOut:
    """The value of a new customer account from :data:`ACCOUNT_VALUE`'s row (as :func:`customer_value`)."""
    value = customer_value(row)
    return ForecastAccountValueOut(per_customer=value.per_customer, customers=value.customers, basis=value.basis)


@dataclass(frozen=True, slots=True)
class _Stage:
    stage: str
    open: int
    entered: int
    converted: int
    conversion: float | None
    expected_customers: float
    expected_revenue: float


def _pipeline(open_stages: Sequence[str], open_rows: Rows, conversion_rows: Rows, per_customer: float) -> list[_Stage]:
    """Per open stage: open now x conversion (0 when nobody entered it) x the value per customer."""
    open_now = {str(s): int(n) for s, n in open_rows}
    conversions = {str(s): (int(e), int(c)) for s, e, c in conversion_rows}
    out = []
    for stage in open_stages:
        entered, converted = conversions.get(stage, (0, 0))
        rate = converted / entered if entered else None
        expected = open_now.get(stage, 0) * (rate or 0.0)
        out.append(_Stage(stage, open_now.get(stage, 0), entered, converted, rate, expected, expected * per_customer))
    return out


def forecast_accounts_body(
    open_stages: Sequence[str],
    won: Sequence[str],
    open_rows: Rows,
    conversion_rows: Rows,
    value: ForecastAccountValueOut,
    model_version: str,
) -> ForecastAccountsOut:
    """The accounts pipeline: open accounts x conversion x the value of a new customer account."""
    stages = [
        ForecastAccountStageOut(
            stage=s.stage,
            open_accounts=s.open,
            entered=s.entered,
            converted=s.converted,
            conversion=s.conversion,
            expected_customers=s.expected_customers,
            expected_revenue=s.expected_revenue,
        )
        for s in _pipeline(open_stages, open_rows, conversion_rows, value.per_customer)
    ]
    return ForecastAccountsOut(
        model=model_version,
        customer_stages=list(won),
        value=value,
        stages=stages,
        expected_customers=math.fsum(s.expected_customers for s in stages),
        expected_revenue=math.fsum(s.expected_revenue for s in stages),
    )


def forecast_body(
    open_stages: Sequence[str],
    won: Sequence[str],
    open_rows: Rows,
    conversion_rows: Rows,
    value: ForecastValueOut,
    now_ms: int,
    lookback_ms: int,
    model_version: str | None,
    accounts: ForecastAccountsOut | None = None,
) -> ForecastOut:
    """Expected customers and revenue per open stage: open contacts x conversion x value; the
    totals are of these (``accounts``, default an empty pipeline, is beside them, not in them)."""
    stages = [
        ForecastStageOut(
            stage=s.stage,
            open_contacts=s.open,
            entered=s.entered,
            converted=s.converted,
            conversion=s.conversion,
            expected_customers=s.expected_customers,
            expected_revenue=s.expected_revenue,
        )
        for s in _pipeline(open_stages, open_rows, conversion_rows, value.per_customer)
    ]
    if accounts is None:
        none = account_value((0, math.nan, 0, math.nan))
        accounts = forecast_accounts_body([], [], [], [], none, model_version or "")
    return ForecastOut(
        as_of=_at(now_ms),
        lookback_days=lookback_ms / DAY_MS,
        model=model_version,
        customer_stages=list(won),
        value=value,
        stages=stages,
        expected_customers=math.fsum(s.expected_customers for s in stages),
        expected_revenue=math.fsum(s.expected_revenue for s in stages),
        accounts=accounts,
    )


async def forecast_accounts(
    store: Store, model: Model, now_ms: int, lookback_ms: int, model_version: str | None = None
) -> ForecastAccountsOut:
    """The accounts pipeline of :func:`forecast`: transitions of ``model_version`` (default: every
    model's, as for contacts); current stages from the account rows of ``model_version``, default
    ``model``'s version (the active model)."""
    open_stages, won = account_forecast_stages(model)
    current = model_version or model.version
    open_rows = await store.query(OPEN_ACCOUNTS, {"open": open_stages, "model": current})
    parameters = {
        "since": now_ms - lookback_ms,
        "now": now_ms,
        "open": open_stages,
        "won": won,
        "model": model_version or "",
        "initial": model.accounts.initial_stage,
    }
    conversion_rows = await store.query(ACCOUNT_STAGE_CONVERSION, parameters)
    value = account_value((await store.query(ACCOUNT_VALUE, {"since": now_ms - lookback_ms}))[0])
    return forecast_accounts_body(open_stages, won, open_rows, conversion_rows, value, current)


async def forecast(
    store: Store, model: Model, now_ms: int, lookback_ms: int, model_version: str | None = None
) -> ForecastOut:
    open_stages, won = forecast_stages(model)
    since = now_ms - lookback_ms
    open_rows = await store.query(OPEN_CONTACTS, {"open": open_stages})
    parameters = {
        "since": since,
        "now": now_ms,
        "open": open_stages,
        "won": won,
        "model": model_version or "",
        "initial": model.lifecycle.initial if model.lifecycle is not None else "",
    }
    conversion_rows = await store.query(STAGE_CONVERSION, parameters)
    value = customer_value((await store.query(CUSTOMER_VALUE, {"since": since}))[0])
    accounts = await forecast_accounts(store, model, now_ms, lookback_ms, model_version)
    return forecast_body(
        open_stages, won, open_rows, conversion_rows, value, now_ms, lookback_ms, model_version, accounts
    )
