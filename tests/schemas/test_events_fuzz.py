"""Fuzzing the decode path: for any bytes, ``schemas.events.decode`` returns an event that
re-encodes (the ingest agent's envelope) and folds without raising, or raises ``InvalidMessage``,
the one refusal. Messages come from the published JSON Schemas (schemas/json/segment-*.json)
and are then mutated the ways producers and attackers break them: deep nesting, big integers,
NaN, bad UTF-8, lone surrogates, duplicate keys, wrong types, huge strings, truncation, random
bytes and byte flips.

hypothesis-jsonschema draws each field from its published schema; the message objects are put
together here, because hypothesis-jsonschema 0.23.1's object strategy calls a Hypothesis
internal (``many.more``) that the pinned Hypothesis no longer has.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis_jsonschema import from_schema

from schemas.events import InvalidMessage, decode
from schemas.state import Batch, Envelope, Item, decode_batch, decode_state, encode
from scorestream import ContactState, Event, apply_events
from scorestream.fold import step
from tests.factories import DAY, DEFAULT_MODEL, T0, iso, make_event

SCHEMAS = Path(__file__).parents[2] / "schemas" / "json"
TYPES = ("identify", "track", "page", "screen", "group", "alias")
RECORD_MS = T0 + 60_000
EXAMPLES = 400  # per property; the module runs in about 15 s on a shared 2-core machine
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
objects = st.dictionaries(st.text(max_size=10), json_values, max_size=5)


def _field_strategy(schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    """A field of a published schema: hypothesis-jsonschema for scalars, ours for objects."""
    if schema.get("type") == "object":
        return objects
    if any(option.get("format") == "date-time" for option in schema.get("anyOf", [])):
        # half the time an in-window instant, else whatever the schema allows (far past, far future)
        in_window = st.integers(min_value=T0 - 400 * DAY, max_value=RECORD_MS + DAY).map(iso)
        return st.one_of(in_window, from_schema(schema))
    return from_schema(schema)


def _message_strategy(kind: str) -> st.SearchStrategy[dict[str, Any]]:
    schema = json.loads((SCHEMAS / f"segment-{kind}.v1.json").read_text())
    required = set(schema.get("required", []))
    fields = {}
    for name, sub in schema["properties"].items():
        drawn = _field_strategy(sub)
        fields[name] = drawn if name in required else st.one_of(st.just(_ABSENT), drawn)
    identity = st.sampled_from([("u-1", None), (None, "a-1"), ("u-1", "a-1")])

    @st.composite
    def build(draw: st.DrawFn) -> dict[str, Any]:
        msg = {name: draw(strategy) for name, strategy in fields.items()}
        if draw(st.booleans()):  # most schema-valid messages should name someone, or few decode
            msg["userId"], msg["anonymousId"] = draw(identity)
        return {k: v for k, v in msg.items() if v is not _ABSENT}

    return build()


_ABSENT = object()
schema_messages = st.sampled_from(TYPES).flatmap(_message_strategy)


def _dumps(msg: Any) -> bytes:
    return json.dumps(msg, separators=(",", ":")).encode()


# --- mutations -----------------------------------------------------------------------------------


@st.composite
def deep(draw: st.DrawFn, msg: dict[str, Any]) -> bytes:
    levels = draw(st.sampled_from([1, 20, 29, 30, 31, 32, 33, 40, 200, 1000, 5000]))
    opener = draw(st.sampled_from([b"[", b'{"a":', b'[{"a":']))
    closer = {b"[": b"]", b'{"a":': b"}", b'[{"a":': b"}]"}[opener]
    field = draw(st.sampled_from(["properties", "traits", "context", "zzz", "integrations"]))
    msg = {**msg, field: "@@HOLE@@"}
    return _dumps(msg).replace(b'"@@HOLE@@"', opener * levels + b"1" + closer * levels, 1)


@st.composite
def big_numbers(draw: st.DrawFn, msg: dict[str, Any]) -> bytes:
    number = draw(
        st.one_of(
            st.integers(min_value=-(10**45), max_value=10**45),
            st.sampled_from([2**63 - 1, 2**63, -(2**63), -(2**63) - 1, 2**64 - 1, 2**64]),
        )
    )
    text = draw(st.sampled_from([str(number).encode(), b"1e400", b"-1e309", b"1.7976931348623157e308", b"4e-400"]))
    field = draw(st.sampled_from(["properties", "traits", "context", "zzz", "version"]))
    wrapper = draw(st.sampled_from([b"%s", b'{"n":%s}', b"[1,%s]"]))
    return _dumps({**msg, field: "@@HOLE@@"}).replace(b'"@@HOLE@@"', wrapper % text, 1)


@st.composite
def not_json_literals(draw: st.DrawFn, msg: dict[str, Any]) -> bytes:
    literal = draw(st.sampled_from([b"NaN", b"Infinity", b"-Infinity", b"nan", b"undefined", b"None", b"True"]))
    field = draw(st.sampled_from(["properties", "traits", "zzz", "timestamp"]))
    return _dumps({**msg, field: "@@HOLE@@"}).replace(b'"@@HOLE@@"', literal, 1)


@st.composite
def text_breaks(draw: st.DrawFn, msg: dict[str, Any]) -> bytes:
    """Bad UTF-8 bytes or lone surrogate escapes, at a random place in the bytes or in a string."""
    raw = _dumps(msg)
    bad = draw(
        st.sampled_from(
            [b"\xff", b"\xc0\xaf", b"\xed\xa0\x80", b"\xe2\x82", b"\xe9", rb"\ud800", rb"\udfff", rb"\ud83dx"]
        )
    )
    quotes = [i for i, c in enumerate(raw) if c == ord('"')]
    inside_a_string: bool = bool(quotes) and draw(st.booleans())
    at = draw(st.sampled_from(quotes)) + 1 if inside_a_string else draw(st.integers(0, len(raw)))
    return raw[:at] + bad + raw[at:]


@st.composite
def duplicate_keys(draw: st.DrawFn, msg: dict[str, Any]) -> bytes:
    raw = _dumps(msg)
    key = draw(st.sampled_from(sorted(msg))) if msg else "type"
    value = draw(json_values)
    return raw.replace(b"{", b"{" + _dumps(key) + b":" + _dumps(value) + b",", 1)


@st.composite
def wrong_types(draw: st.DrawFn, msg: dict[str, Any]) -> bytes:
    out = dict(msg)
    for name in draw(st.lists(st.sampled_from([*sorted(msg), "userId", "timestamp", "properties"]), max_size=3)):
        out[name] = draw(json_values)
    return _dumps(out)


@st.composite
def huge(draw: st.DrawFn, msg: dict[str, Any]) -> bytes:
    size = draw(st.sampled_from([1_000, 30_000, 40_000]))
    value = draw(st.sampled_from(["x" * size, list(range(size // 6)), {f"k{i}": i for i in range(size // 10)}]))
    field = draw(st.sampled_from(["properties", "traits", "context"]))
    return _dumps({**msg, field: {"big": value}})


@st.composite
def truncated(draw: st.DrawFn, msg: dict[str, Any]) -> bytes:
    raw = _dumps(msg)
    return raw[: draw(st.integers(0, max(0, len(raw) - 1)))]


@st.composite
def flipped(draw: st.DrawFn, msg: dict[str, Any]) -> bytes:
    raw = bytearray(_dumps(msg))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, max(0, len(raw) - 1)))
        choice = draw(st.integers(0, 2))
        byte = draw(st.integers(0, 255))
        if choice == 0 and raw:
            raw[at] = byte
        elif choice == 1:
            raw.insert(at, byte)
        elif raw:
            del raw[at]
    return bytes(raw)


_EXTREMES = st.sampled_from([1e308, -1e308, 1.7e308, -1.7e308, 1e15, 1e16, -0.0, 5e-324])
amounts = st.one_of(
    _EXTREMES,
    _EXTREMES,
    _EXTREMES,
    st.floats(allow_nan=False, allow_infinity=False),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.sampled_from(["12.5", "1e400", "-1e308", "x", ""]),
    json_values,
)


@st.composite
def orders(draw: st.DrawFn, msg: dict[str, Any]) -> bytes:
    """An order or a refund whose amounts are anything a number can be (the fold sums them)."""
    products = st.lists(st.fixed_dictionaries({}, optional={"price": amounts, "quantity": amounts}), max_size=6)
    properties = draw(
        st.fixed_dictionaries(
            {"order_id": st.sampled_from(["o-1", "o-2", 7])},
            optional={
                "total": amounts,
                "revenue": amounts,
                "products": products,
                "currency": st.sampled_from(["EUR", 5]),
            },
        )
    )
    event = draw(st.sampled_from(["Order Completed", "Order Refunded"]))
    return _dumps({**msg, "type": "track", "event": event, "userId": "u-1", "properties": properties})


MUTATIONS = [
    orders,
    orders,
    deep,
    big_numbers,
    not_json_literals,
    text_breaks,
    duplicate_keys,
    wrong_types,
    huge,
    truncated,
    flipped,
]
mutated = st.tuples(schema_messages, st.sampled_from(MUTATIONS)).flatmap(lambda pair: pair[1](pair[0]))
hostile_bytes = st.one_of(
    schema_messages.map(_dumps), mutated, mutated, mutated, st.binary(max_size=200), json_values.map(_dumps)
)


# --- the property --------------------------------------------------------------------------------

_HISTORY: ContactState = apply_events(
    None,
    "u-1",
    [make_event(timestamp_ms=T0 - DAY * i, message_id=f"old-{i}", user_id="u-1") for i in range(5)],
    DEFAULT_MODEL,
)
_BUYER: ContactState = apply_events(
    None,
    "u-1",
    [
        make_event(event="Order Completed", properties={"order_id": "o-1", "total": 1e15}, user_id="u-1"),
        make_event(event="Order Completed", properties={"order_id": "o-3", "revenue": 1.5e15}, user_id="u-1"),
    ],
    DEFAULT_MODEL,
)
seen = {"accepted": 0, "refused": 0}


def _holds(raw: bytes, record_ms: int, now_ms: int | None) -> None:
    try:
        event = decode(raw, "web", record_ms, now_ms)
    except InvalidMessage as refusal:
        assert refusal.reason and refusal.detail
        assert str(refusal).startswith(f"{refusal.reason}: ")
        seen["refused"] += 1
        return
    seen["accepted"] += 1
    assert isinstance(event, Event)
    wire = encode(Batch(items=[Item(key="k", env=Envelope(kind="event", event=event))]))
    assert decode_batch(wire).items[0].env.event == event
    key = event.user_id or event.anonymous_id or "x"
    for before in (None, _HISTORY, _BUYER):
        state, *_ = step(before, key, [event], DEFAULT_MODEL)
        if state is not None:
            assert decode_state(encode(state)) == state


@FUZZ
@given(raw=hostile_bytes, record_ms=st.sampled_from([RECORD_MS, -1, 0, RECORD_MS + 3 * DAY]))
def test_any_bytes_decode_to_an_event_that_reencodes_and_folds_or_are_refused(raw: bytes, record_ms: int) -> None:
    _holds(raw, record_ms, RECORD_MS)


@FUZZ
@given(msg=schema_messages)
def test_schema_valid_messages_in_the_window_are_decided_without_surprise(msg: dict[str, Any]) -> None:
    _holds(_dumps(msg), RECORD_MS, None)


@pytest.fixture(scope="module", autouse=True)
def _both_outcomes_happen() -> Any:
    yield
    # the fuzzing is honest only if both sides of the property were exercised
    assert seen["accepted"] > 50 and seen["refused"] > 50, seen
