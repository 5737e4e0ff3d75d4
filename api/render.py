"""The one rendering of a contact: the bodies of ``GET /v1/contacts/{id}`` and ``POST
/v1/contacts:batchGet``, built as plain dicts and encoded with orjson.

The bytes are those FastAPI would produce from the pydantic models in ``schemas/api.py``
(``ContactOut``, ``BatchGetOut``) holding the same values, serialised by pydantic's Rust core:
same fields, order, float and datetime formatting. The routes keep ``response_model=`` for the
OpenAPI document; ``tests/api/test_render.py`` checks that every body validates against
``ContactOut`` and that pydantic writes it back byte for byte, so the document cannot drift from
this renderer. Building the models and validating them on every request cost more than the
lookup itself. A body orjson cannot encode (a trait beyond 64 bits) goes through the models.

What depends on a contact's state only (identity, traits, fit, timestamps) is computed once per
decoded state and kept with it in the replica's cache (``Decoded.derived``, dropped with the entry
when the contact changes or is evicted). Engagement decays with time, so it is computed on every
request, at the request's time, by the core function: answers are the same as without the cache.
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
from scorestream import ContactState, Model, engagement_at, fit_of
from scorestream.fold import journey_at
from scorestream.journey import Journey
from scorestream.scoring import Contribution, grade

_OPTIONS = orjson.OPT_UTC_Z  # pydantic writes UTC datetimes with "Z"
_contact_adapter = TypeAdapter(ContactOut)
_batch_adapter = TypeAdapter(BatchGetOut)
ValueBody = Callable[[ContactState, int], dict[str, Any]]
_NO_VALUE: dict[str, Any] = {"rfm": None, "clv": None}


def no_value(_state: ContactState, _now_ms: int) -> dict[str, Any]:
    return _NO_VALUE


def lifecycle_body(journey: Journey | None, now_ms: int) -> dict[str, Any]:
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


def _contributions(items: tuple[Contribution, ...]) -> list[dict[str, Any]]:
    return [{"rule": c.rule_id, "points": float(c.points), "description": c.description} for c in items]


class _Fixed:
    """The parts of a contact's body that do not depend on the time of the request."""

    __slots__ = ("due_ms", "first_seen", "fit", "fit_grade", "head", "journey", "last_seen", "model")

    def __init__(self, state: ContactState, model: Model) -> None:
        fit = fit_of(state, model)
        self.model = model
        self.head = {
            "contact_id": state.contact_id,
            "identity": {
                "user_id": state.user_id,
                "anonymous_ids": state.anonymous_ids,
                "email": state.email,
                "merged_ids": state.merged_ids,
            },
            "traits": state.traits,
        }
        self.fit = {"score": float(fit.score), "grade": fit.grade, "top": _contributions(fit.top)}
        self.fit_grade = fit.grade
        self.first_seen = _dt(state.first_seen_ms)
        self.last_seen = _dt(state.last_seen_ms)
        self.journey = state.journey
        journey = state.journey
        self.due_ms = journey.next_due_ms if journey is not None else None


class ContactRenderer:
    """Turns decoded contacts into response bodies (dicts shaped like ``ContactOut``) and bytes."""

    def __init__(self, model: Model, value: ValueBody = no_value) -> None:
        self.model = model
        self.value = value
        self._half_life_days = model.half_life_ms / 86_400_000

    def _fixed(self, entry: Decoded) -> _Fixed:
        fixed = entry.derived
        if not isinstance(fixed, _Fixed) or fixed.model is not self.model:
            fixed = entry.derived = _Fixed(entry.state, self.model)
        return fixed

    def body(self, entry: Decoded, now_ms: int) -> dict[str, Any]:
        """The ``ContactOut`` of ``entry`` at ``now_ms``, as a dict ready for orjson."""
        fixed = self._fixed(entry)
        state = entry.state
        engagement = engagement_at(state, self.model, now_ms)
        due = fixed.due_ms
        journey = fixed.journey if due is None or due > now_ms else journey_at(state, self.model, now_ms)
        value = self.value(state, now_ms)
        return {
            **fixed.head,
            "engagement": {
                "score": float(engagement.score),
                "band": engagement.band,
                "as_of": datetime.fromtimestamp(now_ms / 1000, tz=UTC),
                "half_life_days": self._half_life_days,
                "top": _contributions(engagement.top),
            },
            "fit": fixed.fit,
            "grade": grade(fixed.fit_grade, engagement.band),
            **lifecycle_body(journey, now_ms),
            "account_id": state.account_id,
            "rfm": value["rfm"],
            "clv": value["clv"],
            "first_seen": fixed.first_seen,
            "last_seen": fixed.last_seen,
            "model_version": state.model_version,
        }

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
