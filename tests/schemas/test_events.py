"""The Segment JSON contract (``schemas.events.decode``) and the binary state codecs (``schemas.state``)."""

from __future__ import annotations

import dataclasses
from collections import Counter

import msgspec
import orjson
import pytest

from schemas.events import MAX_DEPTH, MAX_MESSAGE_BYTES, InvalidMessage, decode
from schemas.state import (
    STATE_VERSION,
    Batch,
    Envelope,
    EventHead,
    Item,
    RawBatch,
    UnsupportedVersion,
    decode_batch,
    decode_heads,
    decode_link,
    decode_state,
    encode,
    raw_item,
)
from scorestream import ContactState, Event, IdentityLink, apply_events
from scorestream.fold import step
from scorestream.identity import MergeInto
from tests import hostile
from tests.factories import DAY, DEFAULT_MODEL, HOUR, OMIT, T0, iso, make_event, segment_json
from tests.hostile import build as hostile_build

RECORD_MS = T0 + 5 * 60_000


def ok(raw: bytes, channel: str = "web", record_ms: int = RECORD_MS) -> Event:
    return decode(raw, channel, record_ms)


def rejected(raw: bytes, record_ms: int = RECORD_MS) -> InvalidMessage:
    with pytest.raises(InvalidMessage) as info:
        decode(raw, "web", record_ms)
    assert str(info.value).startswith(info.value.reason + ": ")
    return info.value


# --- one valid example per type ------------------------------------------------------------------


def test_identify() -> None:
    event = ok(
        segment_json(type="identify", messageId="m-id", traits={"email": "Ada@Example.com", "title": "VP"}),
        channel="email",
    )
    assert event == Event(
        message_id="m-id",
        kind="identify",
        timestamp_ms=T0,
        channel="email",
        user_id="user-1",
        anonymous_id="anon-1",
        traits={"email": "Ada@Example.com", "title": "VP"},
    )


def test_track() -> None:
    event = ok(segment_json(type="track", event="Order Completed", properties={"total": 512.5, "items": [1, 2]}))
    assert event.kind == "track"
    assert event.event == "Order Completed"
    assert event.properties == {"total": 512.5, "items": [1, 2]}
    assert event.channel == "web"
    assert event.timestamp_ms == T0
    assert event.name is None
    assert event.path is None


def test_page_with_path_in_properties() -> None:
    event = ok(
        segment_json(type="page", name="Pricing", properties={"path": "/pricing", "url": "https://x.io/pricing"})
    )
    assert (event.kind, event.name, event.path) == ("page", "Pricing", "/pricing")
    assert event.properties["url"] == "https://x.io/pricing"


def test_page_with_path_in_context() -> None:
    event = ok(
        segment_json(type="page", name=None, properties={}, context={"page": {"path": "/demo", "title": "Demo"}})
    )
    assert (event.kind, event.name, event.path) == ("page", None, "/demo")


def test_page_properties_path_wins_over_context() -> None:
    event = ok(segment_json(type="page", properties={"path": "/a"}, context={"page": {"path": "/b"}}))
    assert event.path == "/a"


def test_page_without_any_path() -> None:
    assert ok(segment_json(type="page", properties={}, context={"page": "nope"})).path is None


def test_screen() -> None:
    event = ok(segment_json(type="screen", name="Settings", properties={"path": "/app/settings"}), channel="store")
    assert (event.kind, event.name, event.path, event.channel) == ("screen", "Settings", "/app/settings", "store")


def test_group() -> None:
    event = ok(segment_json(type="group", groupId="acct-42", traits={"industry": "software"}))
    assert (event.kind, event.group_id, event.traits) == ("group", "acct-42", {"industry": "software"})


def test_alias() -> None:
    event = ok(segment_json(type="alias", previousId="anon-77", userId="user-9", anonymousId=OMIT))
    assert (event.kind, event.previous_id, event.user_id, event.anonymous_id) == ("alias", "anon-77", "user-9", None)


def test_extra_fields_are_allowed() -> None:
    event = ok(segment_json(type="track", somethingNew={"x": 1}, integrations={"All": True}, version=2))
    assert event.kind == "track"


@pytest.mark.parametrize(
    ("user", "anon", "expected"),
    [
        (None, "anon-1", (None, "anon-1")),
        ("user-1", None, ("user-1", None)),
        (OMIT, "anon-1", (None, "anon-1")),
        ("user-1", OMIT, ("user-1", None)),
    ],
)
def test_explicit_null_or_missing_identity_fields(
    user: object, anon: object, expected: tuple[str | None, str | None]
) -> None:
    event = ok(segment_json(userId=user, anonymousId=anon))
    assert (event.user_id, event.anonymous_id) == expected


# --- timestamps ----------------------------------------------------------------------------------


def test_offset_converted_to_utc_ms() -> None:
    event = ok(segment_json(timestamp="2026-09-21T16:13:20.123+02:00"))
    assert event.timestamp_ms == T0 + 123
    assert ok(segment_json(timestamp=iso(T0 + 7, offset_hours=2))).timestamp_ms == T0 + 7
    assert ok(segment_json(timestamp=iso(T0, offset_hours=-5))).timestamp_ms == T0
    assert ok(segment_json(timestamp="2026-09-21T14:13:20Z")).timestamp_ms == T0


@pytest.mark.parametrize(
    ("text", "expected_ms"),
    [
        ("2026-09-21T14:13:20.001Z", T0 + 1),
        ("2026-09-21T16:13:20.999+02:00", T0 + 999),
        ("2004-05-12T20:36:25.195Z", 1_084_394_185_195),
        ("2004-05-12T22:36:25.195+02:00", 1_084_394_185_195),
    ],
)
def test_millisecond_precision_is_kept(text: str, expected_ms: int) -> None:
    assert ok(segment_json(timestamp=text), record_ms=0).timestamp_ms == expected_ms


def test_missing_timestamp_falls_back_to_record_time() -> None:
    assert ok(segment_json(timestamp=OMIT), record_ms=RECORD_MS).timestamp_ms == RECORD_MS
    assert ok(segment_json(timestamp=None), record_ms=RECORD_MS).timestamp_ms == RECORD_MS


def test_original_timestamp_used_when_timestamp_missing() -> None:
    event = ok(segment_json(timestamp=OMIT, originalTimestamp=iso(T0 - HOUR)))
    assert event.timestamp_ms == T0 - HOUR


def test_timestamp_up_to_a_day_ahead_is_accepted() -> None:
    assert ok(segment_json(timestamp=iso(RECORD_MS + DAY))).timestamp_ms == RECORD_MS + DAY


# --- rejections ----------------------------------------------------------------------------------


@pytest.mark.parametrize("raw", [b"{", b"not json", b"", b'{"type": "track",}'])
def test_invalid_json(raw: bytes) -> None:
    assert rejected(raw).reason == "invalid_json"


def test_too_large() -> None:
    big = segment_json(properties={"blob": "x" * MAX_MESSAGE_BYTES})
    assert len(big) > 32 * 1024
    error = rejected(big)
    assert error.reason == "too_large"
    assert str(len(big)) in error.detail


def test_just_under_the_size_limit_is_accepted() -> None:
    raw = segment_json(properties={"blob": ""})
    raw = segment_json(properties={"blob": "x" * (MAX_MESSAGE_BYTES - len(raw))})
    assert len(raw) == MAX_MESSAGE_BYTES
    assert ok(raw).properties["blob"].startswith("x")


@pytest.mark.parametrize(
    "raw",
    [
        segment_json(type="click"),
        segment_json(type=OMIT),
        segment_json(type=None),
    ],
)
def test_unknown_type(raw: bytes) -> None:
    assert rejected(raw).reason == "unknown_type"


@pytest.mark.parametrize(
    "raw",
    [
        segment_json(userId=None, anonymousId=None),
        segment_json(userId=OMIT, anonymousId=OMIT),
        segment_json(type="identify", userId=None, anonymousId=None),
    ],
)
def test_missing_identity(raw: bytes) -> None:
    assert rejected(raw).reason == "missing_identity"


@pytest.mark.parametrize(
    ("raw", "where"),
    [
        (segment_json(userId=42), "userId"),
        (segment_json(anonymousId=""), "anonymousId"),
        (segment_json(properties=[1, 2]), "properties"),
        (segment_json(timestamp="2026-09-21T14:13:20"), "timestamp"),
        (segment_json(timestamp="yesterday"), "timestamp"),
        (segment_json(messageId=OMIT), "messageId"),
        (segment_json(event=OMIT), "event"),
        (segment_json(event=""), "event"),
        (segment_json(type="group", groupId=OMIT), "groupId"),
        (segment_json(type="alias", previousId=OMIT), "previousId"),
        (segment_json(type="identify", traits="vip"), "traits"),
    ],
)
def test_invalid_field(raw: bytes, where: str) -> None:
    error = rejected(raw)
    assert error.reason == "invalid_field"
    assert where in error.detail


@pytest.mark.parametrize("raw", [b"[]", b"42", b'"track"', b"null"])
def test_not_an_object(raw: bytes) -> None:
    # schemas/events.py maps this case to the reason "invalid_message" ("a message must be a JSON object")
    assert rejected(raw).reason == "invalid_message"


@pytest.mark.parametrize(
    ("timestamp", "record_ms"),
    [
        ("1999-12-31T23:59:59Z", RECORD_MS),
        ("1999-06-01T00:00:00+02:00", 0),
        (iso(RECORD_MS + DAY + 1), RECORD_MS),
        (iso(RECORD_MS + 30 * DAY), RECORD_MS),
    ],
)
def test_bad_timestamp(timestamp: str, record_ms: int) -> None:
    assert rejected(segment_json(timestamp=timestamp), record_ms=record_ms).reason == "bad_timestamp"


def test_record_time_before_2000_is_a_bad_timestamp_when_the_message_has_none() -> None:
    assert rejected(segment_json(timestamp=OMIT), record_ms=1_000).reason == "bad_timestamp"


def test_decoded_event_is_the_core_type() -> None:
    event = ok(segment_json(messageId="same"))
    assert event == make_event(
        message_id="same", channel="web", anonymous_id="anon-1", timestamp_ms=T0, event="Email Opened"
    )


# --- binary state codecs -------------------------------------------------------------------------


def _rich_state() -> ContactState:
    events = [
        make_event(
            kind="identify",
            event=None,
            anonymous_id="anon-1",
            traits={"email": "Ada@Example.com", "title": "VP", "address": {"country": "US"}, "employees": 500},
        ),
        make_event(kind="page", event=None, channel="web", path="/pricing", timestamp_ms=T0 + 1),
        make_event(event="Demo Requested", channel="web", timestamp_ms=T0 + 2),
        make_event(kind="group", event=None, group_id="acct-1"),
    ]
    state = apply_events(None, "user-1", events, DEFAULT_MODEL)
    state.base = {"page-view": 1.5}
    state.base_ms = T0 - DAY
    state.base_once = ["signed-up"]
    state.folded_ids = ["old-1", "old-2"]
    state.merged_ids = ["anonymous:anon-0"]
    return state


def test_state_round_trip() -> None:
    state = _rich_state()
    assert state.hits
    decoded = decode_state(encode(state))
    assert decoded == state
    assert isinstance(decoded.trait_at["title"], tuple)
    assert decode_state(encode(decoded)) == decoded


def test_forwarding_state_round_trip() -> None:
    state = _rich_state()
    state.merged_into = "user-2"
    assert decode_state(encode(state)).merged_into == "user-2"


def test_state_with_a_newer_version_is_refused() -> None:
    state = dataclasses.replace(_rich_state(), v=STATE_VERSION + 1)
    with pytest.raises(UnsupportedVersion, match=f"contact state version {STATE_VERSION + 1}"):
        decode_state(encode(state))


def test_link_round_trip_and_version() -> None:
    link = IdentityLink(contact_id="user-1", linked_ms=T0, message_id="m")
    assert decode_link(encode(link)) == link
    with pytest.raises(UnsupportedVersion):
        decode_link(encode(IdentityLink(contact_id="user-1", linked_ms=T0, message_id="m", v=9)))


def _through_a_batch(envelope: Envelope) -> Envelope:
    return decode_batch(encode(Batch(items=[Item(key="k", env=envelope)]))).items[0].env


def test_event_round_trip() -> None:
    event = make_event(properties={"total": 12.5, "tags": ["a", "b"], "nested": {"x": None}}, anonymous_id="a")
    assert _through_a_batch(Envelope(kind="event", event=event)).event == event


@pytest.mark.parametrize(
    "envelope",
    [
        Envelope(kind="event", event=make_event(properties={"k": 1})),
        Envelope(kind="merge", merge=MergeInto(target="user-1", message_id="m"), hops=2),
        Envelope(kind="absorb", state=_rich_state(), hops=1),
    ],
)
def test_envelope_round_trip(envelope: Envelope) -> None:
    assert _through_a_batch(envelope) == envelope


def test_envelope_with_a_newer_version_is_refused() -> None:
    newer = Envelope(kind="merge", merge=MergeInto(target="u", message_id="m"), v=2)
    with pytest.raises(UnsupportedVersion, match="envelope version 2"):
        _through_a_batch(newer)


def test_event_head_fields_are_event_fields() -> None:
    event_fields = {f.name: f.type for f in dataclasses.fields(Event)}
    for name in EventHead.__struct_fields__:
        assert name in event_fields, f"EventHead.{name} is not an Event field: the decoder would never fill it"


def test_forwarded_envelopes_keep_their_bytes_and_heads_read_them() -> None:
    event = make_event(properties={"total": 3}, anonymous_id="a", user_id="u", kind="identify")
    merge = Envelope(kind="merge", merge=MergeInto(target="u", message_id="m"), hops=1)
    first = encode(Batch(items=[Item(key="a", env=Envelope(kind="event", event=event)), Item(key="x", env=merge)]))
    heads = decode_heads(first)
    key, raw, head = heads[0]
    assert (key, head.event and head.event.message_id, head.event and head.event.user_id) == (
        "a",
        event.message_id,
        "u",
    )
    assert head.event is not None and head.event.anonymous_id == "a" and head.event.timestamp_ms == event.timestamp_ms
    assert heads[1][2].kind == "merge" and heads[1][2].event is None and heads[1][2].hops == 1
    # forwarded as received, mixed with a newly built envelope: contacts read the same envelopes
    again = encode(RawBatch(items=[raw_item(key, raw), raw_item("x", merge)]))
    assert decode_batch(again) == decode_batch(first)


def test_heads_refuse_a_newer_envelope() -> None:
    newer = Envelope(kind="merge", merge=MergeInto(target="u", message_id="m"), v=2)
    with pytest.raises(UnsupportedVersion, match="envelope version 2"):
        decode_heads(encode(Batch(items=[Item(key="k", env=newer)])))


def test_garbage_state_bytes_raise() -> None:
    with pytest.raises(msgspec.ValidationError):
        decode_state(encode({"contact_id": 1}))
    with pytest.raises(msgspec.DecodeError):
        decode_state(orjson.dumps({"not": "msgpack"}))


# --- the JSON rules (schemas.events.check_json): one decision for every malformed input ----------


def _with_properties(text: bytes) -> bytes:
    raw = segment_json(type="track", properties={"x": "PLACEHOLDER"})
    return raw.replace(b'"PLACEHOLDER"', text)


def _nested(levels: int) -> bytes:
    """A message whose properties.x holds ``levels`` nested arrays (the message itself is level 1,
    properties level 2)."""
    return _with_properties(b"[" * levels + b"]" * levels)


def test_nesting_up_to_the_limit_is_accepted() -> None:
    assert ok(_nested(MAX_DEPTH - 2)).properties["x"]  # 1 + 1 + 30 = 32 levels


@pytest.mark.parametrize("levels", [MAX_DEPTH - 1, 100, 3000, 10_000])
def test_deeper_nesting_is_refused_before_any_parser(levels: int) -> None:
    raw = _nested(levels)
    assert len(raw) <= MAX_MESSAGE_BYTES  # not refused as too_large first
    error = rejected(raw)
    assert error.reason == "too_deep"
    assert str(MAX_DEPTH) in error.detail


def test_deep_objects_in_an_unknown_field_are_refused_too() -> None:
    # msgspec skips unknown fields recursively: it would raise RecursionError at ~1000 levels
    raw = segment_json(type="track").replace(b"{", b'{"zzz":' + b'{"a":' * 3000 + b"1" + b"}" * 3000 + b",", 1)
    assert rejected(raw).reason == "too_deep"


def test_brackets_inside_strings_do_not_count() -> None:
    raw = segment_json(type="track", properties={"x": "[" * 500 + "{" * 500, "y": 'q"[[[' * 20})
    assert ok(raw).properties["x"].startswith("[[")


@pytest.mark.parametrize("raw", [_with_properties(b"[" * 40 + b"}" * 40), _with_properties(b"[[[[" * 10 + b"]")])
def test_unbalanced_brackets_never_reach_a_parser(raw: bytes) -> None:
    assert rejected(raw).reason in ("invalid_json", "too_deep")


@pytest.mark.parametrize(
    "number",
    [
        b"9223372036854775808",
        b"-9223372036854775809",
        b"18446744073709551615",
        b"1234567890123456789012345678901234567890",
        b"-1234567890123456789012345678901234567890",
    ],
)
def test_integers_outside_signed_64_bits_are_refused(number: bytes) -> None:
    error = rejected(_with_properties(b'{"n": ' + number + b"}"))
    assert error.reason == "number_out_of_range"
    assert "properties.x.n" in error.detail


@pytest.mark.parametrize(
    "where",
    [b'"version": %s', b'"zzz": %s', b'"context": {"a": [%s]}', b'"traits": {"a": %s}'],
)
def test_big_integers_are_refused_in_any_field(where: bytes) -> None:
    raw = segment_json(type="track").replace(b"{", b"{" + where % b"123456789012345678901234567890" + b",", 1)
    assert rejected(raw).reason == "number_out_of_range"


@pytest.mark.parametrize("number", [9223372036854775807, -9223372036854775808, 0, 10**18])
def test_integers_at_the_bounds_are_accepted(number: int) -> None:
    event = ok(segment_json(type="track", properties={"n": number}))
    assert event.properties["n"] == number
    assert _through_a_batch(Envelope(kind="event", event=event)).event == event


def test_long_digit_runs_inside_strings_are_fine() -> None:
    raw = segment_json(type="track", messageId="1" * 40, properties={"card": "9" * 60, "t": "4e123"})
    assert ok(raw).message_id == "1" * 40


@pytest.mark.parametrize("number", [b"1e400", b"-1e400", b"1.5E+309", b"123456789e999"])
def test_numbers_past_a_double_are_refused(number: bytes) -> None:
    assert rejected(_with_properties(number)).reason == "number_out_of_range"
    unknown = segment_json(type="track").replace(b"{", b'{"zzz": ' + number + b",", 1)
    assert rejected(unknown).reason == "number_out_of_range"


def test_small_and_tiny_exponents_are_accepted() -> None:
    assert ok(_with_properties(b"1e308")).properties["x"] == 1e308
    assert ok(_with_properties(b"1e-400")).properties["x"] == 0.0


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity", b"nan", b"inf"])
@pytest.mark.parametrize("field", [b"properties", b"zzz", b"context"])
def test_nan_and_infinity_are_not_json(literal: bytes, field: bytes) -> None:
    raw = segment_json(type="track").replace(b"{", b'{"' + field + b'": {"a": ' + literal + b"},", 1)
    error = rejected(raw)
    assert error.reason == "invalid_json"
    assert ("NaN and Infinity are not JSON" in error.detail) == (literal in (b"NaN", b"Infinity", b"-Infinity"))


@pytest.mark.parametrize("bad", [b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"\xe2\x82"])
@pytest.mark.parametrize("field", [b"properties", b"zzz"])
def test_invalid_utf8_is_refused_anywhere(bad: bytes, field: bytes) -> None:
    raw = segment_json(type="track").replace(b"{", b'{"' + field + b'": {"a": "x' + bad + b'y"},', 1)
    error = rejected(raw)
    assert error.reason == "invalid_json"
    assert "UTF-8" in error.detail


@pytest.mark.parametrize("escape", [rb"\ud800", rb"\udfff", rb"\ud83dx", rb"\ude00\ud83d", rb"\ud800\u0041"])
@pytest.mark.parametrize("field", [b"properties", b"zzz"])
def test_lone_surrogate_escapes_are_refused(escape: bytes, field: bytes) -> None:
    raw = segment_json(type="track").replace(b"{", b'{"' + field + b'": {"a": "' + escape + b'"},', 1)
    error = rejected(raw)
    assert error.reason == "invalid_json"
    assert "surrogate" in error.detail


def test_surrogate_pairs_are_text() -> None:
    event = ok(_with_properties(rb'"\ud83d\ude00 \u00e9"'))
    assert event.properties["x"] == "\U0001f600 \u00e9"
    assert _through_a_batch(Envelope(kind="event", event=event)).event == event


def test_escaped_backslashes_before_quotes_are_read_as_json_reads_them() -> None:
    raw = _with_properties(rb'"a\\", "y": [[[[' + b"[" * 40 + b"]" * 44)
    assert rejected(raw).reason == "too_deep"  # the brackets are outside the string "a\\"
    assert ok(_with_properties(rb'"a\\\"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["')).properties["x"].startswith("a\\")


def test_duplicate_keys_last_wins_at_every_level() -> None:
    raw = (
        b'{"type": "track", "event": "A", "event": "Order Completed", "messageId": "m", "userId": "u1",'
        b' "userId": "u2", "timestamp": "2026-09-21T14:13:20Z", "properties": {"total": 1, "total": 2}}'
    )
    event = ok(raw)
    assert (event.event, event.user_id, event.properties) == ("Order Completed", "u2", {"total": 2})


def test_a_repeated_type_takes_the_last() -> None:
    raw = b'{"type": "track", "type": "page", "messageId": "m", "userId": "u", "timestamp": "2026-09-21T14:13:20Z"}'
    assert ok(raw).kind == "page"


# --- record timestamps ---------------------------------------------------------------------------


@pytest.mark.parametrize("record_ms", [-1, 0])
def test_a_message_without_timestamp_needs_a_record_timestamp(record_ms: int) -> None:
    error = rejected(segment_json(timestamp=OMIT), record_ms=record_ms)
    assert error.reason == "bad_timestamp"
    assert "no event time" in error.detail


def test_without_record_timestamp_the_event_time_is_checked_against_the_clock() -> None:
    raw = segment_json(timestamp=iso(T0 + DAY + 1))
    assert decode(raw, "web", -1, now_ms=T0 + 2).timestamp_ms == T0 + DAY + 1
    with pytest.raises(InvalidMessage) as info:
        decode(raw, "web", -1, now_ms=T0)
    assert info.value.reason == "bad_timestamp"
    assert "clock" in info.value.detail
    assert decode(raw, "web", -1).timestamp_ms == T0 + DAY + 1  # no clock given (a replay): not checked


def test_a_record_timestamp_far_ahead_of_the_clock_is_refused() -> None:
    raw = segment_json(timestamp=OMIT)
    assert decode(raw, "web", RECORD_MS + DAY, now_ms=RECORD_MS).timestamp_ms == RECORD_MS + DAY
    with pytest.raises(InvalidMessage) as info:
        decode(raw, "web", RECORD_MS + DAY + 1, now_ms=RECORD_MS)
    assert info.value.reason == "bad_timestamp"
    # the message's own timestamp does not make the record's acceptable
    with pytest.raises(InvalidMessage):
        decode(segment_json(timestamp=iso(RECORD_MS)), "web", RECORD_MS + 30 * DAY, now_ms=RECORD_MS)


def test_decode_is_deterministic_given_its_arguments() -> None:
    raw = segment_json(timestamp=iso(T0 + 3))
    assert decode(raw, "web", RECORD_MS, RECORD_MS) == decode(raw, "web", RECORD_MS, RECORD_MS)


@pytest.mark.parametrize("levels", [MAX_DEPTH - 1, MAX_DEPTH + 40])
def test_alternating_objects_and_arrays_count_every_level(levels: int) -> None:
    opening = b'{"a":[' * (levels // 2) + b"{" * (levels % 2)
    closing = b"}" * (levels % 2) + b"]}" * (levels // 2)
    assert rejected(_with_properties(opening + closing)).reason == "too_deep"
    shallow = b'{"a":[' * ((MAX_DEPTH - 2) // 2)
    assert ok(_with_properties(shallow + b"]}" * ((MAX_DEPTH - 2) // 2))).properties["x"]


# --- the hostile corpus (tests/hostile/) ---------------------------------------------------------

CORPUS = hostile.load()


def test_the_hostile_corpus_is_built_from_its_script_and_covers_every_kind() -> None:
    assert hostile.CORPUS.read_text() == hostile_build.build(), "run: python -m tests.hostile.build"
    reasons = Counter(case.reason for case in CORPUS)
    assert sum(n for reason, n in reasons.items() if reason != hostile.ACCEPTED) >= 50
    for reason in (
        "too_deep",
        "number_out_of_range",
        "invalid_json",
        "invalid_field",
        "invalid_message",
        "unknown_type",
        "missing_identity",
        "bad_timestamp",
        "too_large",
        hostile.ACCEPTED,
    ):
        assert reasons[reason], reason


def _history() -> ContactState:
    events = [make_event(timestamp_ms=T0 - DAY * i, message_id=f"old-{i}") for i in range(5)]
    return apply_events(None, "c", events, DEFAULT_MODEL)


@pytest.mark.parametrize("case", CORPUS, ids=[case.name for case in CORPUS])
def test_every_hostile_message_gets_its_decision(case: hostile.Case) -> None:
    if case.reason != hostile.ACCEPTED:
        error = rejected(case.raw)
        assert error.reason == case.reason, error.detail
        assert error.detail
        return
    event = ok(case.raw)
    assert event.user_id == case.user_id
    assert _through_a_batch(Envelope(kind="event", event=event)).event == event
    for before in (None, _history()):
        seen = before.last_seen_ms or 0 if before is not None else 0
        state, *_ = step(before, case.user_id, [event], DEFAULT_MODEL)  # the worker's fold: never raises
        assert state is not None and state.last_seen_ms == max(seen, event.timestamp_ms)
        assert decode_state(encode(state)) == state
