"""The console's front page from the archive: contacts per stage and the top movers (``GET
/v1/reports/overview``, :mod:`api.routers.overview`; the console's overview calls the same).

- Contacts per stage: the active contacts of ``contacts`` (``FINAL``: the latest row of each), by
  their current stage, in the model's stage order (stages it does not know after, by name; no
  stage last). Like the personas and forecast reports, every contact counts whichever model wrote
  its row last.
- Top movers: the contacts whose engagement rose most over the window (default the last hour).
  The rise is the engagement now (the ``contacts`` row's, decayed to now: what ``GET
  /v1/contacts/{id}`` shows) minus the engagement at the window's start (the last ``score_ledger``
  row of the active model at or before it, decayed to then; 0 for a contact with none, or whose
  last row then was a merge or a deletion). Only contacts with a scored ledger row of the active
  model inside the window are candidates: without one, engagement only decayed, and fell. Rises
  above 0 only, largest first (ties by contact id).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from analytics.client import Store
from analytics.reports import Rows, _decay_sql, _ordered, _text, group_parameters, group_score_sql, model_filter_sql
from schemas.api_overview import MoverOut, OverviewOut, StageCountOut
from schemas.times import at_of as _at
from schemas.times import dt_of as _dt
from scorestream import Model
from scorestream.rules.groups import ScoreGroup
from scorestream.scoring import band_of, grade, round_score

HOUR_MS = 3_600_000
DEFAULT_MOVERS = 10

STAGE_COUNTS = """
SELECT toString(stage), count()
FROM contacts FINAL
WHERE status = 'active'
GROUP BY stage
"""

ACTIVE_CONTACTS = "SELECT count() FROM contacts FINAL WHERE status = 'active'"

# contacts with a scored ledger row of the model in (since, now]
_RECENT = f"""
SELECT DISTINCT contact_id FROM score_ledger
WHERE at > fromUnixTimestamp64Milli({{since:Int64}}, 'UTC') AND at <= fromUnixTimestamp64Milli({{now:Int64}}, 'UTC')
  AND kind = 'score' AND {model_filter_sql("model_version")}
"""  # noqa: S608 (constant fragments; values are bound as parameters)

# A score group's score at the window's start from the last ledger row's raw score (b.last.4), as
# analytics.reports.group_score_sql decays and clamps the contacts row's.
_GROUP_THEN = (
    "if(b.last.3 = 'score', least(greatest(b.last.4[{group:String}] * exp2(-greatest({since:Int64} - b.last.2, 0)"
    " / {group_half_life:Float64}), -{group_max:Float64}), {group_max:Float64}), 0)"
)


def _movers_sql(by_group: bool) -> str:
    """The movers' query: ranked by the rise of engagement, or (``by_group``) of the score group
    named by parameter ``group`` (:func:`analytics.reports.group_parameters`)."""
    now_g = group_score_sql("c.groups", "c.last_seen") if by_group else "0"
    then_g = _GROUP_THEN if by_group else "0"
    rise = "now_g - then_g" if by_group else "now_e - then_e"
    return f"""
SELECT contact_id, user_id, email, stage, fit, fit_grade, last_seen_ms, now_e, then_e, {rise} AS rise, now_g, then_g
FROM (
    SELECT c.contact_id AS contact_id, c.user_id AS user_id, c.email AS email, toString(c.stage) AS stage,
           c.fit AS fit, c.fit_grade AS fit_grade, toUnixTimestamp64Milli(c.last_seen) AS last_seen_ms,
           {_decay_sql("c.engagement", "c.last_seen")} AS now_e,
           if(b.last.3 = 'score',
              b.last.1 * exp2(-greatest({{since:Int64}} - b.last.2, 0) / {{half_life:Float64}}), 0) AS then_e,
           {now_g} AS now_g, {then_g} AS then_g
    FROM (SELECT * FROM contacts FINAL WHERE status = 'active' AND contact_id IN ({_RECENT})) AS c
    LEFT JOIN (
        SELECT contact_id,
               argMax(tuple(engagement, toUnixTimestamp64Milli(at), toString(kind), groups),
                      tuple(at, kafka_offset)) AS last
        FROM score_ledger
        WHERE at <= fromUnixTimestamp64Milli({{since:Int64}}, 'UTC') AND {model_filter_sql("model_version")}
          AND contact_id IN ({_RECENT})
        GROUP BY contact_id
    ) AS b ON c.contact_id = b.contact_id
)
WHERE rise > 0
ORDER BY rise DESC, contact_id
LIMIT {{limit:UInt32}}
"""  # noqa: S608 (constant fragments; values are bound as parameters)


# A LEFT JOIN fills a contact without an earlier row with defaults: kind '' (engagement then 0).
MOVERS = _movers_sql(False)
GROUP_MOVERS = _movers_sql(True)


def stages_out(rows: Rows, model: Model) -> list[StageCountOut]:
    """:data:`STAGE_COUNTS`' rows in the model's stage order, with each one's share."""
    counts = {_text(stage): int(n) for stage, n in rows}
    known = list(model.lifecycle.stages) if model.lifecycle is not None else []
    total = sum(counts.values())
    return [
        StageCountOut(stage=stage, contacts=counts[stage], share=counts[stage] / total if total else 0.0)
        for stage in _ordered(counts, known)
    ]


def mover_out(row: Sequence[Any], model: Model, group: ScoreGroup | None = None) -> MoverOut:
    """A row of :data:`MOVERS` (:data:`GROUP_MOVERS` with ``group``) as the API shows it (scores
    rounded as the contact route rounds them)."""
    contact_id, user_id, email, stage, fit, fit_grade, last_seen, now_e, then_e, rise, now_g, then_g = row
    engagement = round_score(float(now_e))
    band = band_of(model.engagement_bands, engagement)
    return MoverOut(
        contact_id=str(contact_id),
        user_id=_text(user_id),
        email=_text(email),
        stage=_text(stage),
        engagement=engagement,
        engagement_band=band,
        engagement_before=round_score(float(then_e)),
        rise=round_score(float(rise)),
        fit=float(fit),
        fit_grade=str(fit_grade),
        grade=grade(str(fit_grade), band),
        last_seen=_dt(None if last_seen is None else int(last_seen)),
        group_score=round_score(float(now_g)) if group is not None else None,
        group_before=round_score(float(then_g)) if group is not None else None,
    )


def overview_body(
    stage_rows: Rows,
    mover_rows: Rows,
    model: Model,
    now_ms: int,
    window_ms: int = HOUR_MS,
    group: ScoreGroup | None = None,
) -> OverviewOut:
    stages = stages_out(stage_rows, model)
    return OverviewOut(
        as_of=_at(now_ms),
        model=model.version,
        contacts=sum(s.contacts for s in stages),
        stages=stages,
        since=_at(now_ms - window_ms),
        window_minutes=window_ms // 60_000,
        movers=[mover_out(r, model, group) for r in mover_rows],
        group=group.id if group is not None else None,
    )


async def active_contacts(store: Store) -> int:
    """The active contacts of the archive now: :class:`OverviewOut`'s ``contacts`` (the sum of its
    stages), counted alone (the console's live figure)."""
    rows = await store.query(ACTIVE_CONTACTS)
    return int(rows[0][0])


async def overview(
    store: Store,
    model: Model,
    now_ms: int,
    window_ms: int = HOUR_MS,
    limit: int = DEFAULT_MOVERS,
    group: ScoreGroup | None = None,
) -> OverviewOut:
    """Contacts per stage now, and the ``limit`` largest engagement rises (of ``group``'s score,
    when given) over ``window_ms`` up to ``now_ms`` in the ledger of ``model`` (the active model)."""
    stage_rows = await store.query(STAGE_COUNTS)
    parameters = {
        "now": now_ms,
        "since": now_ms - window_ms,
        "half_life": float(model.half_life_ms),
        "model": model.version,
        "limit": limit,
        **group_parameters(group),
    }
    mover_rows = await store.query(GROUP_MOVERS if group is not None else MOVERS, parameters)
    return overview_body(stage_rows, mover_rows, model, now_ms, window_ms, group)
