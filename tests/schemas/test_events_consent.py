"""Segment's consent object (``context.consent.categoryPreferences``) on the event contract: both
validators read it the same way, a malformed one is refused, the JSON Schemas describe it."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest

from schemas.events import _FAST, MESSAGE_ADAPTER, InvalidMessage, _to_event, decode
from schemas.generate import documents
from schemas.state import Batch, Envelope, Item, decode_batch, encode
from tests.factories import segment_json

RECORD_MS = 1_790_000_000_000


def both_paths(raw: bytes) -> list[Any]:
    """The event as the fast path and as pydantic give it."""
    return [
        _to_event(_FAST.decode(raw), "web", RECORD_MS),
        _to_event(MESSAGE_ADAPTER.validate_json(raw), "web", RECORD_MS),
    ]


def with_context(context: Any) -> bytes:
    return segment_json(context=context)


def test_the_categories_are_read_on_both_paths() -> None:
    raw = with_context({"consent": {"categoryPreferences": {"marketing": False, "analytics": True}}, "ip": "1.2.3.4"})
    for event in both_paths(raw):
        assert event.consent == {"analytics": True, "marketing": False}
    assert decode(raw, "web", RECORD_MS).consent == {"analytics": True, "marketing": False}


@pytest.mark.parametrize("context", [{}, {"ip": "1.2.3.4"}, {"consent": None}, {"consent": {"other": 1}}])
def test_no_consent_object_is_none(context: dict[str, Any]) -> None:
    for event in both_paths(with_context(context)):
        assert event.consent is None


def test_an_empty_object_is_a_consent_that_grants_nothing() -> None:
    assert decode(with_context({"consent": {"categoryPreferences": {}}}), "web", RECORD_MS).consent == {}


@pytest.mark.parametrize(
    "consent",
    [
        "yes",
        {"categoryPreferences": ["analytics"]},
        {"categoryPreferences": {"analytics": "true"}},
        {"categoryPreferences": {"analytics": 1}},
        {"categoryPreferences": {"": True}},
        {"categoryPreferences": {"x" * 101: True}},
        {"categoryPreferences": {f"c{i}": True for i in range(65)}},
    ],
)
def test_a_malformed_consent_is_refused(consent: Any) -> None:
    with pytest.raises(InvalidMessage) as caught:
        decode(with_context({"consent": consent}), "web", RECORD_MS)
    assert caught.value.reason == "invalid_field"
    assert "context.consent" in caught.value.detail


def test_the_event_with_its_consent_crosses_the_internal_topics() -> None:
    event = decode(with_context({"consent": {"categoryPreferences": {"analytics": False}}}), "web", RECORD_MS)
    again = decode_batch(encode(Batch(items=[Item(key="k", env=Envelope(kind="event", event=event))])))
    assert again.items[0].env.event == event


def test_the_json_schemas_describe_the_consent_object() -> None:
    docs = documents()
    for kind in ("track", "page", "identify"):
        context = docs[f"segment-{kind}.v1.json"]["properties"]["context"]
        preferences = context["properties"]["consent"]["properties"]["categoryPreferences"]
        assert preferences["additionalProperties"] == {"type": "boolean"}
    contact = docs["api-ContactOut.v1.json"]
    assert "consent" in contact["properties"]
    assert json.dumps(contact).count("categoryPreferences") >= 1


def test_segment_json_helper_keeps_the_context() -> None:
    raw = with_context({"consent": {"categoryPreferences": {"analytics": True}}})
    assert orjson.loads(raw)["context"]["consent"]["categoryPreferences"] == {"analytics": True}
