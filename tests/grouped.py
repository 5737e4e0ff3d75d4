"""A model with score groups for the surface's tests (the API, the archive, the console, the
dispatcher): the default model with two more groups of its own after the default's (whose rules
the lifecycle reads), so the tests do not depend on what the default's groups are.

- ``hardware``: half-life 30 days (not the overall 14), weight 1, thresholds 20 and 50;
- ``training``: half-life 7 days, weight 0 (apart from the overall score), ``max`` 30, its own bands,
  threshold 10.
"""

from __future__ import annotations

import copy
from typing import Any, Final

from scorestream import Model
from tests.factories import DEFAULT_MODEL

GROUPS: Final[list[dict[str, Any]]] = [
    {
        "id": "hardware",
        "description": "Interest in the hardware line",
        "half_life": "30d",
        "thresholds": [20, 50],
        "rules": [
            {
                "id": "hardware-page",
                "description": "Viewed a hardware page",
                "match": {"type": "page", "path": "/hardware*"},
                "points": 10,
            },
            {
                "id": "hardware-quote",
                "description": "Asked for a hardware quote",
                "match": {"type": "track", "event": "Hardware Quote Requested"},
                "points": 40,
            },
        ],
    },
    {
        "id": "training",
        "description": "Interest in training courses",
        "half_life": "7d",
        "weight": 0,
        "max": 30,
        "thresholds": [10],
        "bands": [{"label": "hot", "min": 20}, {"label": "warm", "min": 5}, {"label": "cold", "min": float("-inf")}],
        "rules": [
            {
                "id": "training-page",
                "description": "Viewed a training page",
                "match": {"type": "page", "path": "/training*"},
                "points": 8,
            },
        ],
    },
]


def grouped_model(name: str = "grouped") -> Model:
    """The default model named ``name`` with :data:`GROUPS` after its own score groups."""
    raw = copy.deepcopy(dict(DEFAULT_MODEL.source))
    raw["name"] = name
    raw["engagement"]["groups"] = [*raw["engagement"].get("groups", []), *copy.deepcopy(GROUPS)]
    return Model.from_dict(raw)


GROUPED_MODEL: Final[Model] = grouped_model()
