"""Response bodies of the contact routes, built as plain dicts and encoded with orjson.

The bytes are exactly those FastAPI would produce from the pydantic models in ``schemas/api.py``
(``ContactOut`` via :func:`schemas.api.contact_out`, serialised by pydantic's Rust core):
same fields, order, float and datetime formatting (``tests/api/test_render.py`` compares them).
Building the models and validating them on every request cost more than the lookup itself; the
routes keep ``response_model=`` for the OpenAPI document.

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
from schemas.api import BatchGetOut, ContactOut, contact_out, current_journey, lifecycle_body
from schemas.times import dt_of as _dt
from scorestream import ContactState, Model, engagement_at, fit_of
from scorestream.scoring import Contribution

_OPTIONS = orjson.OPT_UTC_Z  # pydantic writes UTC datetimes with "Z"
_contact_adapter = TypeAdapter(ContactOut)
_batch_adapter = TypeAdapter(BatchGetOut)
ValueBody = Callable[[ContactState, int], dict[str, Any]]
_NO_VALUE: dict[str, Any] = {"rfm": None, "clv": None}


def no_value(_state: ContactState, _now_ms: int) -> dict[str, Any]:
    return _NO_VALUE


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
        journey = fixed.journey if due is None or due > now_ms else current_journey(state, self.model, now_ms)
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
            "grade": f"{fixed.fit_grade}{engagement.band}",
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
            value = self.value(entry.state, now_ms)
            return _contact_adapter.dump_json(contact_out(entry.state, self.model, now_ms, value))

    def batch_json(self, entries: list[Decoded], not_found: list[str], now_ms: int) -> bytes:
        """The response body of ``POST /v1/contacts:batchGet``."""
        try:
            return orjson.dumps(
                {"contacts": [self.body(e, now_ms) for e in entries], "not_found": not_found}, option=_OPTIONS
            )
        except orjson.JSONEncodeError:
            found = [contact_out(e.state, self.model, now_ms, self.value(e.state, now_ms)) for e in entries]
            return _batch_adapter.dump_json(BatchGetOut(contacts=found, not_found=not_found))
