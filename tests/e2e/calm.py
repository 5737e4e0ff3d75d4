"""The calm run the end-to-end recovery tests compare the live service with, field by field.

The calm run is the pure fold (``tests/reference.py``) over the same events; what the API serves
for each contact must equal what it would serve for the fold's state at the same instant: identity,
traits, engagement (score, band, contributions) at the response's ``as_of``, fit, stage, flags and
persona, account, RFM facts, first and last seen, model version. The population model's values
(RFM quintiles and segment, CLV) are not compared: they depend on when the workers last refreshed
it, not on the contact's events.
"""

from __future__ import annotations

import math
from dataclasses import replace
from datetime import datetime
from typing import Any

import orjson
import yaml

from api.render import ContactRenderer
from api.replica import Decoded
from schemas.model_file import DEFAULT_MODEL
from schemas.value import value_body
from scorestream import ContactState, Model
from scorestream.fold import journey_at
from scorestream.population import value_view
from scorestream.view import view_of
from tests.e2e.service import Service


def roomy_model() -> dict[str, Any]:
    """The default model with room for every hit of the heaviest generated contact, so the
    comparison stays inside the fold's exact (order-independent) bounds."""
    raw: dict[str, Any] = yaml.safe_load(DEFAULT_MODEL.read_text())
    raw["storage"]["max_hits_per_contact"] = 100_000
    if "interests" in raw:
        raw["interests"]["max_entries"] = 100_000  # the interest profile's events too
    return raw


ROOMY = roomy_model()
MODEL = Model.from_dict(ROOMY)
# values of the population model (quintiles, CLV), not facts of a contact
NOT_COMPARED = {"clv", "r", "f", "m", "segment"}


def as_of(body: dict[str, Any]) -> int:
    return round(datetime.fromisoformat(body["engagement"]["as_of"]).timestamp() * 1000)


def expected_body(state: ContactState, now_ms: int, model: Model = MODEL) -> dict[str, Any]:
    """What the API must answer for ``state`` at ``now_ms`` (RFM facts without a population model):
    the renderer's body of the view the worker sends, its journey walked to ``now_ms`` as the
    worker's tick walks it (the tick's view has reached the API by the time the tests compare)."""
    value = value_body(value_view(state.value, now_ms, None))
    renderer = ContactRenderer(model, lambda _view, _now: value)
    view = view_of(replace(state, journey=journey_at(state, model, now_ms)), model)
    out: dict[str, Any] = orjson.loads(renderer.contact_json(Decoded(b"", view), now_ms))
    return out


def differences(got: Any, want: Any, path: str = "") -> list[str]:
    """Field-by-field differences (floats within 1e-6; lists of ids as sets)."""
    if isinstance(want, dict) and isinstance(got, dict):
        keys = (set(want) | set(got)) - NOT_COMPARED
        return [d for k in sorted(keys) for d in differences(got.get(k), want.get(k), f"{path}.{k}")]
    if path.endswith(("anonymous_ids", "merged_ids")) and isinstance(got, list) and isinstance(want, list):
        return [] if sorted(got) == sorted(want) else [f"{path}: {got!r} != {want!r}"]
    if isinstance(want, list) and isinstance(got, list) and len(want) == len(got):
        return [d for i, (g, w) in enumerate(zip(got, want, strict=True)) for d in differences(g, w, f"{path}[{i}]")]
    if isinstance(want, float) and isinstance(got, int | float) and not isinstance(got, bool):
        return [] if math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-6) else [f"{path}: {got!r} != {want!r}"]
    return [] if got == want else [f"{path}: {got!r} != {want!r}"]


def compare(service: Service, expected: dict[str, ContactState], model: Model = MODEL) -> dict[str, list[str]]:
    """Contact id -> its differences from the calm run, for every contact that differs."""
    ids = sorted(expected)
    wrong: dict[str, list[str]] = {}
    with service.client() as http:
        for i in range(0, len(ids), 1000):
            body = http.post("/v1/contacts:batchGet", json={"ids": ids[i : i + 1000]}).json()
            got = {c["contact_id"]: c for c in body["contacts"]}
            for cid in ids[i : i + 1000]:
                if cid not in got:
                    wrong[cid] = ["missing"]
                    continue
                diff = differences(got[cid], expected_body(expected[cid], as_of(got[cid]), model))
                if diff:
                    wrong[cid] = diff
    return wrong
