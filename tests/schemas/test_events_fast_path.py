"""The fast (msgspec) validator may only be stricter than the pydantic contract, never looser, and
whatever it accepts decodes to the same event."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.events import MESSAGE_ADAPTER, InvalidMessage, _Fast, _to_event, _validate
from tests.factories import OMIT, segment_json

RECORD_MS = 1_790_000_000_000

ids = st.one_of(
    st.text(min_size=0, max_size=3),
    st.text(min_size=1, max_size=20),
    st.just("x" * 256),
    st.just("x" * 257),
    st.integers(),
    st.none(),
)
timestamps = st.one_of(
    st.none(),
    st.just(OMIT),
    st.sampled_from(
        [
            "2026-09-22T14:18:20Z",
            "2026-09-22T14:18:20.123Z",
            "2026-09-22T14:18:20.1234567Z",
            "2026-09-22T14:18:20+02:00",
            "2026-09-22T14:18:20-0530",
            "2026-09-22T14:18:20",
            "2026-09-22 14:18:20Z",
            "2026-09-22t14:18:20z",
            "2026-09-22",
            "2026-02-30T00:00:00Z",
            "1999-12-31T23:59:59Z",
            "2026-09-22T24:00:00Z",
            "2026-09-22T14:18:60Z",
            "",
        ]
    ),
    st.integers(min_value=0, max_value=2_000_000_000_000),
    st.floats(allow_nan=False),
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=5),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=8,
)
objects = st.one_of(st.dictionaries(st.text(max_size=6), json_values, max_size=4), json_values, st.just(OMIT))


VALID: dict[str, st.SearchStrategy[Any]] = {
    "messageId": st.text(min_size=1, max_size=12),
    "userId": st.one_of(st.text(min_size=1, max_size=8), st.just(OMIT)),
    "anonymousId": st.text(min_size=1, max_size=8),
    "timestamp": st.sampled_from(["2026-09-22T14:18:20Z", "2026-09-22T14:18:20.123+01:00", "2026-09-21T00:00:00.5Z"]),
    "originalTimestamp": st.just(OMIT),
    "sentAt": st.just(OMIT),
    "context": st.dictionaries(st.text(max_size=6), json_values, max_size=3),
    "integrations": st.just(OMIT),
    "properties": st.dictionaries(st.sampled_from(["path", "total", "x"]), json_values, max_size=3),
    "traits": st.dictionaries(st.sampled_from(["email", "title", "y"]), json_values, max_size=3),
    "event": st.sampled_from(["Order Completed", "Email Opened", "x"]),
    "name": st.one_of(st.text(max_size=5), st.just(OMIT)),
    "groupId": st.text(min_size=1, max_size=5),
    "previousId": st.text(min_size=1, max_size=5),
    "version": st.one_of(st.integers(min_value=0, max_value=3), st.just(OMIT)),
    "extra": st.one_of(json_values, st.just(OMIT)),
}
EDGE: dict[str, st.SearchStrategy[Any]] = {
    "messageId": ids,
    "userId": ids,
    "anonymousId": st.one_of(ids, st.just(OMIT)),
    "timestamp": timestamps,
    "originalTimestamp": timestamps,
    "sentAt": timestamps,
    "context": objects,
    "integrations": objects,
    "properties": objects,
    "traits": objects,
    "event": st.one_of(ids, st.just("x" * 200), st.just("x" * 201), st.just(OMIT)),
    "name": st.one_of(ids, json_values),
    "groupId": st.one_of(ids, st.just(OMIT)),
    "previousId": st.one_of(ids, st.just(OMIT)),
    "version": st.one_of(st.integers(), st.text(max_size=3), st.booleans(), st.floats(), st.none()),
    "extra": json_values,
}


@st.composite
def messages(draw: st.DrawFn) -> bytes:
    """Mostly valid messages with one or two fields at an edge: where validators disagree, if anywhere."""
    kind = draw(
        st.sampled_from(["identify", "track", "page", "screen", "group", "alias", "identify", "track", "other"])
    )
    edges = draw(st.sets(st.sampled_from(sorted(VALID)), max_size=2))
    fields: dict[str, Any] = {"type": kind}
    for name in VALID:
        fields[name] = draw(EDGE[name] if name in edges else VALID[name])
    # the standard library's encoder: it also writes integers beyond 64 bits, and NaN/Infinity
    return json.dumps({k: v for k, v in fields.items() if v is not OMIT}).encode()


def _outcome(msg: Any) -> Any:
    try:
        return _to_event(msg, "web", RECORD_MS)
    except InvalidMessage as exc:
        return ("invalid", exc.reason)


@settings(max_examples=600, deadline=None)
@given(messages())
def test_what_the_fast_path_accepts_pydantic_accepts_with_the_same_event(raw: bytes) -> None:
    try:
        msg = _validate(raw)
    except InvalidMessage:
        return  # refused: the reason came from pydantic
    if not isinstance(msg, _Fast):
        return  # the fast path declined, pydantic decided
    slow = MESSAGE_ADAPTER.validate_json(raw)  # must not raise: the fast path is never looser
    assert _outcome(msg) == _outcome(slow)


@pytest.mark.parametrize("kind", ["identify", "track", "page", "screen", "group", "alias"])
def test_ordinary_messages_take_the_fast_path(kind: str) -> None:
    raw = segment_json(type=kind, properties={"path": "/pricing", "total": 12.5}, context={"ip": "1.2.3.4"})
    assert isinstance(_validate(raw), _Fast)


def test_timestamps_with_offsets_take_the_fast_path_and_agree() -> None:
    raw = orjson.dumps(
        {"type": "track", "event": "X", "messageId": "m", "userId": "u", "timestamp": "2026-09-22T16:18:20.5+02:00"}
    )
    fast = _validate(raw)
    assert isinstance(fast, _Fast)
    assert _outcome(fast) == _outcome(MESSAGE_ADAPTER.validate_json(raw))
