"""The score groups report (``GET /v1/reports/groups``): per score group of the active model, how
its active contacts spread over the group's bands now.

A group's score now is the ``contacts`` row's raw score (``groups``, as of ``last_seen``) decayed
at the group's half-life to the request time, then clamped by the group's ``max``: what ``GET
/v1/contacts/{id}`` shows (:func:`analytics.reports.group_score_sql`). Contacts without points in a
group are counted apart (``without_points``), not in its lowest band. Like the other reports over
``contacts``, every contact counts whichever model wrote its row last.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from analytics.client import Store
from analytics.reports import Rows, group_parameters, group_score_sql
from schemas.api_analytics import GroupBandOut, GroupReportOut, GroupsReportOut
from schemas.times import at_of as _at
from scorestream import Model
from scorestream.rules.groups import ScoreGroup
from scorestream.scoring import round_score

LOWEST = -1e308  # a band without a lower bound (-inf) as a bound ClickHouse's parameters take

_ACTIVE = """
    status = 'active'
    AND (empty({stages:Array(String)}) OR has({stages:Array(String)}, toString(stage)))
"""

ACTIVE_CONTACTS = f"SELECT count() FROM contacts FINAL WHERE {_ACTIVE}"  # noqa: S608 (constant fragments)

# per band of the group (its index in the group's bands, 1-based; bounds highest first): contacts, mean score
GROUP_BANDS = f"""
SELECT arrayFirstIndex(m -> s >= m, {{mins:Array(Float64)}}) AS band, count(), avg(s)
FROM (
    SELECT {group_score_sql("groups", "last_seen")} AS s
    FROM contacts FINAL
    WHERE {_ACTIVE} AND mapContains(groups, {{group:String}})
)
GROUP BY band
"""  # noqa: S608 (constant fragments; values are bound as parameters)


def group_report(group: ScoreGroup, rows: Rows) -> GroupReportOut:
    """A group's part of the report from :data:`GROUP_BANDS`' rows (every band listed, empty ones too)."""
    found: dict[int, tuple[int, float]] = {}
    for index, n, mean in rows:
        i = int(index) - 1 if int(index) > 0 else len(group.bands) - 1  # below every bound: the last band
        count, total = found.get(i, (0, 0.0))
        found[i] = (count + int(n), total + float(mean) * int(n))
    contacts = sum(n for n, _ in found.values())
    bands = []
    for i, band in enumerate(group.bands):
        n, total = found.get(i, (0, 0.0))
        bands.append(
            GroupBandOut(
                band=band.label,
                min=band.min if math.isfinite(band.min) else None,
                contacts=n,
                share=n / contacts if contacts else 0.0,
                avg_score=round_score(total / n) if n else 0.0,
            )
        )
    mean = math.fsum(total for _, total in found.values()) / contacts if contacts else 0.0
    return GroupReportOut(
        id=group.id,
        description=group.description,
        half_life_days=group.half_life_ms / 86_400_000,
        contacts=contacts,
        avg_score=round_score(mean),
        bands=bands,
    )


async def groups_report(store: Store, model: Model, now_ms: int, stages: Sequence[str] = ()) -> GroupsReportOut:
    """Every score group of ``model`` over the active contacts (of ``stages``, when given) at ``now_ms``."""
    where = {"stages": list(stages)}
    active = int((await store.query(ACTIVE_CONTACTS, where))[0][0])
    groups = []
    for group in model.groups:
        mins = [b.min if math.isfinite(b.min) else LOWEST for b in group.bands]
        rows = await store.query(GROUP_BANDS, {**where, **group_parameters(group), "mins": mins, "now": now_ms})
        report = group_report(group, rows)
        groups.append(report.model_copy(update={"without_points": active - report.contacts}))
    return GroupsReportOut(as_of=_at(now_ms), model=model.version, contacts=active, stages=list(stages), groups=groups)
