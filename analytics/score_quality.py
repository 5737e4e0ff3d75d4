"""Does the score predict? (``GET /v1/reports/score-quality``, ``scorestream shadow``): for contacts
scored at instants t, the share that ordered (or reached a stage) within a horizon after t, by grade
cell, score decile and stage, with the lift over the base rate, ROC AUC and a calibration table;
for the active model and every live shadow beside it. Computed in ClickHouse.

Definitions the queries keep:

- **Snapshots**: t = from, from + every, ... before ``to``, and only instants whose whole horizon
  has passed (t + horizon <= now): an outcome not observable yet would count as a miss. ``every``
  defaults to the horizon, so a contact's order is counted at one snapshot only.
- **Scored at t**: a contact whose last ``score_ledger`` row of the model at or before t is a score
  (not merged or deleted). Its engagement is the row's, decayed with the model's half-life to t
  and rounded as the API shows it; its band and grade are the model's for that score, its fit
  grade and stage the row's. A pair (contact, t) is one observation; a contact may be one at
  several snapshots.
- **Outcome**: ``order``: an order event (the model's ``value.order_events``, ``Order Completed`` by
  default; any revenue, free orders included) of the
  person in (t, t + horizon]; ``stage:<name>``: an entry into the stage in (t, t + horizon]
  (``stage_transitions``, announced by any model: what happened is the same for the active model
  and its shadows); pairs already in that stage at t, or that entered it before, are left out.
  Events and transitions belong to the contact they finally merged into (as in
  :mod:`analytics.journey_facts`), and so do the scored contacts: a visitor scored at t who buys
  after identifying herself converted.
- **Deciles** by rank of the score (1: the lowest tenth, 10: the highest): pairs with one score
  share the decile of their lowest rank, so a decile may hold more or fewer than a tenth.
- **AUC** (Mann-Whitney): over the pairs, the chance that a positive one scored above a negative
  one, ties counted half: sum over scores s of positives(s) x (negatives below s + negatives(s) / 2),
  over positives x negatives.
- **Too little data**: a rate (and its lift) over fewer than ``min_n`` pairs is null with a note;
  the AUC needs ``min_class`` positives and as many negatives.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from analytics.client import Store
from analytics.journey_facts import EVENT_CONTACT_SQL, MERGES_WITH, survivor_sql
from analytics.reports import InvalidParameter, model_filter_sql
from schemas.api_quality import (
    CalibrationOut,
    QualityCellOut,
    QualityComparisonOut,
    QualityModelOut,
    ScoreQualityOut,
)
from schemas.times import DAY_MS
from schemas.times import at_of as _at
from scorestream import Model
from scorestream.rules.groups import ScoreGroup
from scorestream.scoring import grade

DEFAULT_MIN_N = 30
DEFAULT_MIN_CLASS = 10
MAX_SNAPSHOTS = 400
HOUR_MS = 3_600_000
DURATION = re.compile(r"^\s*(?P<n>\d+(?:\.\d+)?)\s*(?P<unit>[hdw])\s*$")
UNITS = {"h": HOUR_MS, "d": DAY_MS, "w": 7 * DAY_MS}
Rows = list[tuple[Any, ...]]


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a scored contact should do next: order, or enter ``stage``."""

    stage: str | None = None

    @property
    def name(self) -> str:
        return "order" if self.stage is None else f"stage:{self.stage}"


def parse_outcome(text: str, model: Model) -> Outcome:
    """``order`` or ``stage:<name>`` (a stage of ``model``'s lifecycle other than its first)."""
    if text == "order":
        return Outcome()
    if text.startswith("stage:"):
        stage = text.removeprefix("stage:")
        lc = model.lifecycle
        if lc is None:
            raise InvalidParameter("outcome", "the model has no lifecycle: use outcome=order")
        if stage not in lc.stages:
            raise InvalidParameter("outcome", f"unknown stage {stage!r}; stages: {', '.join(lc.stages)}")
        if stage == lc.initial:
            raise InvalidParameter("outcome", f"{stage} is the initial stage: every contact starts there")
        return Outcome(stage)
    raise InvalidParameter("outcome", "order or stage:<name>")


def parse_duration(param: str, text: str) -> int:
    """``30d``, ``12h``, ``2w`` in milliseconds (more than 0, at most ten years)."""
    found = DURATION.match(text)
    if found is None:
        raise InvalidParameter(param, "a duration such as 30d, 12h or 2w")
    ms = int(float(found["n"]) * UNITS[found["unit"]])
    if ms <= 0 or ms > 3650 * DAY_MS:
        raise InvalidParameter(param, "more than 0 and at most 3650 days")
    return ms


def snapshots(from_ms: int, to_ms: int, every_ms: int, horizon_ms: int, now_ms: int) -> list[int]:
    """The instants t: ``from_ms`` + k x ``every_ms`` before ``to_ms``, whose horizon has passed by ``now_ms``."""
    if (to_ms - from_ms) // every_ms >= MAX_SNAPSHOTS:
        raise InvalidParameter("every", f"at most {MAX_SNAPSHOTS} snapshots in the period")
    out = []
    t = from_ms
    while t < to_ms and t + horizon_ms <= now_ms:
        out.append(t)
        t += every_ms
    return out


# the persons' outcome instants, by outcome kind
ORDERS_SQL = f"""
    SELECT {survivor_sql(EVENT_CONTACT_SQL)} AS person, toUnixTimestamp64Milli(event_time) AS o
    FROM events FINAL
    WHERE status = 'accepted' AND type = 'track' AND has({{order_events:Array(String)}}, event)
      AND (user_id != '' OR anonymous_id != '')
"""  # noqa: S608 (constant fragments)
STAGE_ENTRIES_SQL = f"""
    SELECT {survivor_sql("subject_id")} AS person, toUnixTimestamp64Milli(at) AS o
    FROM stage_transitions FINAL
    WHERE subject_kind = 'contact' AND to_stage = {{stage:String}}
"""  # noqa: S608 (constant fragments; values are bound as parameters)

# The band of a score: the first (highest) band whose minimum it reaches, else the last (scoring.band_of).
BAND_SQL = (
    "{band_labels:Array(String)}[if(arrayFirstIndex(m -> score >= m, {band_mins:Array(Float64)}) = 0,"
    " length({band_labels:Array(String)}), arrayFirstIndex(m -> score >= m, {band_mins:Array(Float64)}))]"
)


def pairs_sql(outcome: Outcome) -> str:
    """(contact, t, score, fit_grade, band, stage, positive) of every pair scored at a snapshot
    (parameters: ts, model, half_life, horizon, band_mins, band_labels; stage for a stage outcome;
    group, group_half_life, group_max: a score group's score instead of the overall engagement, its
    raw value at the row decayed at the group's half-life and clamped, as the core computes it)."""
    outcomes = ORDERS_SQL if outcome.stage is None else STAGE_ENTRIES_SQL
    fresh = "" if outcome.stage is None else "AND p.stage != {stage:String} AND NOT arrayExists(x -> x <= p.t, o.os)"
    return f"""
    SELECT p.contact AS contact, p.t AS t, p.score AS score, p.fit_grade AS fit_grade, {BAND_SQL} AS band,
           p.stage AS stage, arrayExists(x -> x > p.t AND x <= p.t + {{horizon:Int64}}, o.os) AS positive
    FROM (
        SELECT contact_id AS contact, {survivor_sql("contact_id")} AS person, t,
               round(if({{group:String}} = '', s.3 * exp2(-greatest(t - s.1, 0) / {{half_life:Float64}}),
                        least(greatest(s.6 * exp2(-greatest(t - s.1, 0) / {{group_half_life:Float64}}),
                                       -{{group_max:Float64}}), {{group_max:Float64}})), 6) AS score,
               s.4 AS fit_grade, s.5 AS stage
        FROM (
            SELECT contact_id, t,
                   argMax(tuple(toUnixTimestamp64Milli(at), toString(kind), engagement, toString(fit_grade),
                                toString(stage), groups[{{group:String}}]), tuple(at, kafka_offset)) AS s
            FROM score_ledger
            ARRAY JOIN {{ts:Array(Int64)}} AS t
            WHERE {model_filter_sql("model_version")} AND toUnixTimestamp64Milli(at) <= t
            GROUP BY contact_id, t
        )
        WHERE s.2 = 'score'
    ) AS p
    LEFT JOIN (SELECT person, groupArray(o) AS os FROM ({outcomes}) GROUP BY person) AS o ON p.person = o.person
    WHERE 1 {fresh}
    """  # noqa: S608 (constant fragments; values are bound as parameters)


# One pass per model: every pair once, with its decile (by rank of the score) and its share of the
# Mann-Whitney U (a positive pair: the negatives scored below it, and half of those scored the same,
# by window sums over the scores), then summed per group: every pair (kind 'all', with the distinct
# contacts), per grade (fit grade and band), per stage, per decile.
def quality_sql(outcome: Outcome) -> str:
    """(kind, key, n, positives, mean score, min, max, U, contacts) per group of :func:`pairs_sql`."""
    return f"""
    WITH {MERGES_WITH}
    SELECT g.1 AS kind, g.2 AS key, count(), countIf(positive), avg(score), min(score), max(score),
           sum(u_part), uniqExact(contact)
    FROM (
        SELECT contact, score, fit_grade, band, stage, positive,
               intDiv(10 * (rank() OVER (ORDER BY score) - 1), count() OVER ()) + 1 AS decile,
               if(positive,
                  (sum(toFloat64(NOT positive)) OVER (ORDER BY score)
                   - sum(toFloat64(NOT positive)) OVER (PARTITION BY score))
                  + sum(toFloat64(NOT positive)) OVER (PARTITION BY score) / 2,
                  0) AS u_part
        FROM ({pairs_sql(outcome)})
    )
    ARRAY JOIN [('all', ''), ('grade', concat(fit_grade, '\t', band)), ('stage', stage),
                ('decile', toString(decile))] AS g
    GROUP BY kind, key
    """  # noqa: S608 (constant fragments; values are bound as parameters)


def parameters(
    model: Model, version: str, ts: Sequence[int], horizon_ms: int, outcome: Outcome, group: ScoreGroup | None = None
) -> dict[str, Any]:
    bands = group.bands if group is not None else model.engagement_bands
    limit = group.max if group is not None and group.max is not None else None
    return {
        "group": group.id if group is not None else "",
        "group_half_life": float(group.half_life_ms) if group is not None else 1.0,
        "group_max": float(limit) if limit is not None and math.isfinite(limit) else 1e308,
        "ts": list(ts),
        "model": version,
        "half_life": float(model.half_life_ms),
        "horizon": horizon_ms,
        "band_mins": [float(b.min) if math.isfinite(b.min) else -1e308 for b in bands],  # the last: -inf
        "band_labels": [b.label for b in bands],
        "stage": outcome.stage or "",
        "order_events": list(model.value.order_events),
    }


@dataclass(frozen=True, slots=True)
class Evaluated:
    """A model to evaluate: the ledger rows of ``version`` (a version or a name), scored by ``model``."""

    version: str
    model: Model
    namespace: str | None
    role: str
    group: ScoreGroup | None = None  # a score group of ``model``: its score instead of the overall one


def _rate(positives: int, n: int, base: float | None, min_n: int) -> tuple[float | None, float | None, str | None]:
    if n < min_n:
        return None, None, f"{n} pairs, fewer than {min_n}: no rate"
    rate = positives / n
    return rate, (rate / base if base else None), None


def model_body(
    evaluated: Evaluated, rows: Rows, min_n: int = DEFAULT_MIN_N, min_class: int = DEFAULT_MIN_CLASS
) -> QualityModelOut:
    """One model's answer from the rows of :func:`quality_sql`."""
    groups: dict[str, dict[str, tuple[Any, ...]]] = {}
    for kind, key, *values in rows:
        groups.setdefault(str(kind), {})[str(key)] = tuple(values)
    n, pos, _, _, _, u, contacts = groups.get("all", {}).get("", (0, 0, 0.0, 0.0, 0.0, 0.0, 0))
    n, positives = int(n), int(pos)
    negatives = n - positives
    notes: list[str] = []
    base = positives / n if n >= min_n else None
    if base is None:
        notes.append(f"{n} scored pairs, fewer than {min_n}: no base rate, rates or lifts")
    auc = None
    if positives >= min_class and negatives >= min_class:
        auc = float(u) / (positives * negatives)
    else:
        notes.append(f"{positives} positive and {negatives} negative pairs (at least {min_class} of each): no AUC")

    def cell(key: str, size: int, hits: int, **extra: Any) -> QualityCellOut:
        rate, lift, note = _rate(hits, size, base, min_n)
        return QualityCellOut(key=key, n=size, positives=hits, rate=rate, lift=lift, note=note, **extra)

    bands = evaluated.group.bands if evaluated.group is not None else evaluated.model.engagement_bands
    order = [b.label for b in bands]

    def grade_order(key: str) -> tuple[str, int]:
        fit_grade, _, band = key.partition("\t")
        return fit_grade, order.index(band) if band in order else len(order)

    found = groups.get("grade", {})
    grades = [
        cell(grade(*key.split("\t", 1)), int(found[key][0]), int(found[key][1]), mean_score=float(found[key][2]))
        for key in sorted(found, key=grade_order)
    ]
    lc = evaluated.model.lifecycle
    known = list(lc.stages) if lc is not None else []
    found = groups.get("stage", {})
    stages = [
        cell(key or "(none)", int(found[key][0]), int(found[key][1]), mean_score=float(found[key][2]))
        for key in sorted(found, key=lambda k: (known.index(k) if k in known else len(known), k))
    ]
    found = groups.get("decile", {})
    deciles = [
        cell(key, int(v[0]), int(v[1]), mean_score=float(v[2]), min_score=float(v[3]), max_score=float(v[4]))
        for key, v in sorted(found.items(), key=lambda kv: int(kv[0]))
    ]
    calibration = [
        CalibrationOut(decile=int(c.key), mean_score=c.mean_score or 0.0, observed_rate=c.rate, n=c.n) for c in deciles
    ]
    return QualityModelOut(
        model=evaluated.version,
        namespace=evaluated.namespace,
        role=evaluated.role,
        n=n,
        contacts=int(contacts),
        positives=positives,
        base_rate=base,
        auc=auc,
        grades=grades,
        deciles=deciles,
        stages=stages,
        calibration=calibration,
        notes=notes,
    )


def _pct(rate: float) -> str:
    return f"{100 * rate:.1f}%"


def comparison(active: QualityModelOut, shadow: QualityModelOut, group: str) -> QualityComparisonOut:
    """The shadow's rate beside the active model's for ``group`` (a stage at the snapshots, or
    ``all`` for the AUC), in words: "the shadow's mqls convert 1.4x better (12.1% against 8.6%)"."""
    name = shadow.namespace or shadow.model
    if group == "all":
        a, s = active.auc, shadow.auc
        ratio = s / a if a and s is not None else None
        if a is None or s is None:
            text = f"AUC: not enough data ({active.n} and {shadow.n} pairs)"
        else:
            text = f"the shadow's scores rank buyers {'better' if s > a else 'no better'}: AUC {s:.3f} against {a:.3f}"
        return QualityComparisonOut(
            shadow=name,
            group=group,
            active_rate=a,
            shadow_rate=s,
            ratio=ratio,
            active_n=active.n,
            shadow_n=shadow.n,
            text=text,
        )
    mine = {c.key: c for c in active.stages}.get(group)
    theirs = {c.key: c for c in shadow.stages}.get(group)
    a_rate = mine.rate if mine else None
    s_rate = theirs.rate if theirs else None
    a_n, s_n = (mine.n if mine else 0), (theirs.n if theirs else 0)
    if a_rate is None or s_rate is None:
        text = f"the shadow's {group}s: not enough data ({s_n} pairs against {a_n})"
        ratio = None
    elif a_rate == 0 or s_rate == 0:
        ratio = None if a_rate == 0 else 0.0
        text = f"the shadow's {group}s convert at {_pct(s_rate)} against {_pct(a_rate)}"
    else:
        ratio = s_rate / a_rate
        verdict = "better" if ratio >= 1 else "worse"
        factor = ratio if ratio >= 1 else 1 / ratio
        text = f"the shadow's {group}s convert {factor:.1f}x {verdict} ({_pct(s_rate)} against {_pct(a_rate)})"
    return QualityComparisonOut(
        shadow=name,
        group=group,
        active_rate=a_rate,
        shadow_rate=s_rate,
        ratio=ratio,
        active_n=a_n,
        shadow_n=s_n,
        text=text,
    )


def comparisons(models: Sequence[QualityModelOut]) -> list[QualityComparisonOut]:
    """Each shadow beside the first model: per stage both scored contacts in, then the AUC."""
    if len(models) < 2:
        return []
    active = models[0]
    out: list[QualityComparisonOut] = []
    for shadow in models[1:]:
        theirs = {c.key for c in shadow.stages}
        out += [comparison(active, shadow, c.key) for c in active.stages if c.key in theirs]
        out.append(comparison(active, shadow, "all"))
    return out


async def evaluate(
    store: Store,
    evaluated: Evaluated,
    ts: Sequence[int],
    horizon_ms: int,
    outcome: Outcome,
    min_n: int = DEFAULT_MIN_N,
    min_class: int = DEFAULT_MIN_CLASS,
) -> QualityModelOut:
    """One model's scores against the outcome at the snapshots ``ts``."""
    p = parameters(evaluated.model, evaluated.version, ts, horizon_ms, outcome, evaluated.group)
    rows = await store.query(quality_sql(outcome), p)
    return model_body(evaluated, rows, min_n, min_class)


async def score_quality(
    store: Store,
    models: Sequence[Evaluated],
    outcome: Outcome,
    from_ms: int,
    to_ms: int,
    horizon_ms: int,
    every_ms: int,
    now_ms: int,
    min_n: int = DEFAULT_MIN_N,
    min_class: int = DEFAULT_MIN_CLASS,
) -> ScoreQualityOut:
    """The report for ``models`` (the active or chosen one first, then the shadows)."""
    ts = snapshots(from_ms, to_ms, every_ms, horizon_ms, now_ms)
    notes = [] if ts else ["no snapshot in the period whose horizon has passed: choose an earlier period"]
    out = [await evaluate(store, m, ts, horizon_ms, outcome, min_n, min_class) for m in models] if ts else []
    return ScoreQualityOut(
        **{"from": _at(from_ms)},
        to=_at(to_ms),
        horizon_days=horizon_ms / DAY_MS,
        every_days=every_ms / DAY_MS,
        outcome=outcome.name,
        group=models[0].group.id if models and models[0].group is not None else None,
        snapshots=[_at(t) for t in ts],
        min_n=min_n,
        models=out,
        comparisons=comparisons(out),
        notes=notes,
    )
