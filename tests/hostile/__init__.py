"""The hostile corpus (``corpus.jsonl``, written by ``build.py``): every kind of malformed or odd
message, each with the reason the contract gives it (``accepted`` for odd but valid ones)."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CORPUS = Path(__file__).with_name("corpus.jsonl")
ACCEPTED = "accepted"
ROUTES = ("track", "identify", "page", "screen", "group", "alias")


@dataclass(frozen=True)
class Case:
    name: str
    reason: str  # a dead-letter reason code, or ACCEPTED
    raw: bytes

    @property
    def user_id(self) -> str:
        return f"hostile-{self.name}"

    @property
    def route_type(self) -> str | None:
        """The collector route that keeps this message's own ``type`` (a single-message route
        sets the type): its type when it is one of the six, else None (send it in a batch)."""
        try:
            parsed: Any = json.loads(self.raw)
        except (ValueError, RecursionError):
            return "track"  # not JSON: any single route refuses the body as the worker does
        if not isinstance(parsed, dict):
            return "track"
        kind = parsed.get("type")
        return kind if isinstance(kind, str) and kind in ROUTES else None


def load() -> list[Case]:
    cases = []
    for line in CORPUS.read_text().splitlines():
        entry = json.loads(line)
        raw = entry["text"].encode() if "text" in entry else base64.b64decode(entry["base64"])
        cases.append(Case(entry["name"], entry["reason"], raw))
    return cases
