"""The one rendering of a contact: the bodies of ``GET /v1/contacts/{id}`` and ``POST
/v1/contacts:batchGet``, built as plain dicts and encoded with orjson.

The bytes are those FastAPI would produce from the pydantic models in ``schemas/api.py``
(``ContactOut``, ``BatchGetOut``) holding the same values, serialised by pydantic's Rust core:
same fields, order, float and datetime formatting. The routes keep ``response_model=`` for the
OpenAPI document; ``tests/api/test_render.py`` checks that every body validates against
``ContactOut`` and that pydantic writes it back byte for byte, so the document cannot drift from
this renderer. Building the models and validating them on every request cost more than the
lookup itself. A body orjson cannot encode (a trait beyond 64 bits) goes through the models.

The renderer reads a contact's compact view (:class:`scorestream.view.ContactView`, what the
worker sends to ``<app>.views``), never the full state. What depends on the view only (identity,
traits, fit, timestamps) is computed once per decoded view and kept with it in the replica's cache
(``Decoded.derived``, dropped with the entry when the contact changes or is evicted). Engagement
decays with time, so it is computed on every request, at the request's time, from the view's
per-rule totals (:func:`scorestream.view.engagement_of_view`, which gives what
:func:`scorestream.scoring.engagement_at` gives on the full state). The journey is the view's:
when its ``next_change_at`` has passed, the worker's tick (at most ``SCORESTREAM_TIMER_INTERVAL_S``
later) sends the walked view; until it arrives the answer shows the stored journey.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import orjson
from pydantic import TypeAdapter

from api.replica import Decoded
from schemas.api import BatchGetOut, ContactOut
from schemas.times import DAY_MS
from schemas.times import dt_of as _dt
from scorestream import Model
from scorestream.adjustments import is_rule as is_adjustment_rule
from scorestream.adjustments import rule_id as adjustment_rule
from scorestream.scoring import Contribution, grade, round_score
from scorestream.state import decay
from scorestream.view import ContactView, JourneyView, engagement_of_view, fit_of_view, groups_of_view

_OPTIONS = orjson.OPT_UTC_Z  # pydantic writes UTC datetimes with "Z"
_contact_adapter = TypeAdapter(ContactOut)
_batch_adapter = TypeAdapter(BatchGetOut)
ValueBody = Callable[[ContactView, int], dict[str, Any]]
_NO_VALUE: dict[str, Any] = {"rfm": None, "clv": None}


def no_value(_view: ContactView, _now_ms: int) -> dict[str, Any]:
    return _NO_VALUE


def lifecycle_body(journey: JourneyView | None, now_ms: int) -> dict[str, Any]:
    """``stage``, ``flags`` and ``persona`` of a contact body (shapes of :class:`~schemas.api.ContactOut`)."""
    if journey is None:
        return {"stage": None, "flags": [], "persona": None}
    history = [
        {
            "stage": e.stage,
            "entered_at": _dt(e.entered_ms),
            "exited_at": _dt(e.exited_ms),
            "days": None if e.exited_ms is None else (e.exited_ms - e.entered_ms) / DAY_MS,
            "rule": e.rule,
            "cause": e.cause,
        }
        for e in journey.history
    ]
    return {
        "stage": {
            "name": journey.stage,
            "since": _dt(journey.since_ms),
            "days_in_stage": max(now_ms - journey.since_ms, 0) / DAY_MS,
            "history": history,
            "next_change_at": _dt(journey.next_due_ms),
        },
        "flags": [{"flag": k, "reason": v} for k, v in journey.flags.items()],
        "persona": journey.persona,
    }


def _contributions(
    items: tuple[Contribution, ...], view: ContactView | None = None, model: Model | None = None
) -> list[dict[str, Any]]:
    """Contributions as the body shows them; an adjustment's rule (``view`` given) lists the
    adjustments it sums (:func:`_adjustments`)."""
    out: list[dict[str, Any]] = []
    for c in items:
        item: dict[str, Any] = {"rule": c.rule_id, "points": float(c.points), "description": c.description}
        if view is not None and model is not None and view.adjustments and is_adjustment_rule(c.rule_id):
            item["adjustments"] = _adjustments(view, model, c.rule_id)
        out.append(item)
    return out


def _adjustments(view: ContactView, model: Model, rule: str, top: int = 5) -> list[dict[str, Any]]:
    """The newest ``top`` adjustments counting under ``rule`` (``adjustment``, or
    ``adjustment:<group>`` for a group of ``model``), not reverted: id, points as made, reason,
    who and when."""

    def rule_of(group: str | None) -> str:
        return adjustment_rule(group if group is not None and model.group(group) is not None else None)

    mine = [
        (aid, a)
        for aid, a in view.adjustments.items()
        if a.at_ms is not None and a.reverted is None and rule_of(a.group) == rule
    ]
    mine.sort(key=lambda item: (item[1].at_ms, item[0]), reverse=True)
    return [
        {"adjustment_id": aid, "points": a.points, "reason": a.reason, "by": a.by, "at": _dt(a.at_ms)}
        for aid, a in mine[:top]
    ]


def _machine(view: ContactView, model: Model, now_ms: int) -> list[dict[str, Any]]:
    """The rules some of whose kept e-mail events a machine made (:mod:`scorestream.machine`):
    the rule's current points (decayed as ``top`` shows them), how many, the latest's instant and
    why, e.g. ``email-clicked: 0 (machine: 4 links clicked within 3 s of delivery)``."""
    if not view.machine:
        return []
    totals = dict(view.engagement)
    ref = view.engagement_ms
    at = max(now_ms, ref)
    out: list[dict[str, Any]] = []
    for rule_id, hits, last_ms, reason in view.machine:
        rule = model.rule(rule_id)
        points = decay(totals.get(rule_id, 0.0), ref, at, model.half_life_ms)
        out.append(
            {
                "rule": rule_id,
                "description": rule.description if rule is not None else "",
                "points": round_score(points),
                "events": hits,
                "last_at": _dt(last_ms),
                "reason": reason,
            }
        )
    return out


class _Fixed:
    """The parts of a contact's body that do not depend on the time of the request."""

    __slots__ = ("consent", "first_seen", "fit", "fit_grade", "head", "last_seen", "model")

    def __init__(self, view: ContactView, model: Model) -> None:
        fit = fit_of_view(view, model)
        self.model = model
        self.head = {
            "contact_id": view.contact_id,
            "identity": {
                "user_id": view.user_id,
                "anonymous_ids": view.anonymous_ids,
                "email": view.email,
                "merged_ids": view.merged_ids,
            },
            "traits": view.traits,
        }
        self.fit = {"score": float(fit.score), "grade": fit.grade, "top": _contributions(fit.top)}
        self.fit_grade = fit.grade
        self.first_seen = _dt(view.first_seen_ms)
        self.last_seen = _dt(view.last_seen_ms)
        consent = view.consent
        self.consent = (
            {"categoryPreferences": consent.preferences, "at": _dt(consent.at_ms)} if consent is not None else None
        )


class ContactRenderer:
    """Turns decoded contacts into response bodies (dicts shaped like ``ContactOut``) and bytes."""

    def __init__(self, model: Model, value: ValueBody = no_value) -> None:
        self.model = model
        self.value = value
        self._half_life_days = model.half_life_ms / 86_400_000
        self._group_half_life_days = {g.id: g.half_life_ms / 86_400_000 for g in model.groups}

    def _fixed(self, entry: Decoded) -> _Fixed:
        fixed = entry.derived
        if not isinstance(fixed, _Fixed) or fixed.model is not self.model:
            fixed = entry.derived = _Fixed(entry.view, self.model)
        return fixed

    def body(self, entry: Decoded, now_ms: int) -> dict[str, Any]:
        """The ``ContactOut`` of ``entry`` at ``now_ms``, as a dict ready for orjson."""
        fixed = self._fixed(entry)
        view = entry.view
        engagement = engagement_of_view(view, self.model, now_ms)
        value = self.value(view, now_ms)
        return {
            **fixed.head,
            "engagement": {
                "score": float(engagement.score),
                "band": engagement.band,
                "as_of": datetime.fromtimestamp(now_ms / 1000, tz=UTC),
                "half_life_days": self._half_life_days,
                "top": _contributions(engagement.top, view, self.model),
                "machine": _machine(view, self.model, now_ms),
            },
            "groups": self._groups(view, now_ms),
            "fit": fixed.fit,
            "grade": grade(fixed.fit_grade, engagement.band),
            **lifecycle_body(view.journey, now_ms),
            "account_id": view.account_id,
            "rfm": value["rfm"],
            "clv": value["clv"],
            "first_seen": fixed.first_seen,
            "last_seen": fixed.last_seen,
            "model_version": view.model_version,
            "consent": fixed.consent,
        }

    def _groups(self, view: ContactView, now_ms: int) -> list[dict[str, Any]]:
        """The ``groups`` of a body: every score group decayed to ``now_ms`` (none without groups)."""
        if not self.model.groups:
            return []
        return [
            {
                "id": g.id,
                "score": float(g.score),
                "band": g.band,
                "half_life_days": self._group_half_life_days[g.id],
                "top": _contributions(g.top, view, self.model),
            }
            for g in groups_of_view(view, self.model, now_ms)
        ]

    def contact_json(self, entry: Decoded, now_ms: int) -> bytes:
        """The response body of ``GET /v1/contacts/{id}``."""
        try:
            return orjson.dumps(self.body(entry, now_ms), option=_OPTIONS)
        except orjson.JSONEncodeError:
            # a trait orjson cannot encode (e.g. an integer beyond 64 bits): the pydantic path
            return _contact_adapter.dump_json(_contact_adapter.validate_python(self.body(entry, now_ms)))

    def batch_json(self, entries: list[Decoded], not_found: list[str], now_ms: int) -> bytes:
        """The response body of ``POST /v1/contacts:batchGet``."""
        body = {"contacts": [self.body(e, now_ms) for e in entries], "not_found": not_found}
        try:
            return orjson.dumps(body, option=_OPTIONS)
        except orjson.JSONEncodeError:
            return _batch_adapter.dump_json(_batch_adapter.validate_python(body))
