"""Writes ``tests/hostile/corpus.jsonl``: hostile messages, each with the reason the contract gives.

One JSON object a line: ``name``, ``reason`` (a dead-letter reason code, or ``accepted`` for a
message that is odd but valid: it must be scored, and the fold must not fail on it), and the
message as ``text`` (UTF-8) or ``base64`` (bytes that are not UTF-8). Run ``python -m
tests.hostile.build`` after changing a case; tests/schemas/test_events.py reads the file and
fails when it is stale (``test_the_hostile_corpus_is_built_from_its_script``).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

CORPUS = Path(__file__).with_name("corpus.jsonl")
WHEN = "2026-09-01T00:00:00Z"  # before every clock the tests use (the collector's in-process one is 2026-09-21)


def _msg(case: str, /, **fields: Any) -> dict[str, Any]:
    """A valid track message of its own user (``hostile-<case>``), changed by ``fields``."""
    base: dict[str, Any] = {
        "type": "track",
        "event": "Product Viewed",
        "messageId": f"h-{case}",
        "userId": f"hostile-{case}",
        "timestamp": WHEN,
        "properties": {"product_id": "sku-1", "price": 10.0},
    }
    base.update(fields)
    return {k: v for k, v in base.items() if v is not _DROP}


_DROP = object()


def _json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def _splice(case: str, field: str, text: bytes, **fields: Any) -> bytes:
    """The message with ``field`` set to ``text``, raw bytes that json.dumps could not write."""
    raw = _json(_msg(case, **{field: "@@HOLE@@"}, **fields))
    assert raw.count(b'"@@HOLE@@"') == 1
    return raw.replace(b'"@@HOLE@@"', text)


def cases() -> Iterator[tuple[str, str, bytes]]:
    # nesting (limit: 32 levels, the message being the first)
    yield "deep-3000-arrays", "too_deep", _splice("deep-3000-arrays", "properties", b"[" * 3000 + b"]" * 3000)
    deep_obj = b'{"a":' * 3000 + b"1" + b"}" * 3000
    yield "deep-3000-objects-context", "too_deep", _splice("deep-3000-objects-context", "context", deep_obj)
    yield "deep-3000-unknown-field", "too_deep", _splice("deep-3000-unknown-field", "zzz", deep_obj)
    yield "deep-33-levels", "too_deep", _splice("deep-33-levels", "properties", b'{"x":' + b"[" * 31 + b"]" * 31 + b"}")
    alternating = b'{"a":[' * 40 + b"]}" * 40
    yield "deep-alternating-80", "too_deep", _splice("deep-alternating-80", "traits", alternating, type="identify")
    yield "deep-top-level-array", "too_deep", b"[" * 1000 + b"]" * 1000
    yield (
        "deep-32-levels-ok",
        "accepted",
        _splice("deep-32-levels-ok", "properties", b'{"x":' + b"[" * 30 + b"]" * 30 + b"}"),
    )
    yield "unbalanced-brackets", "invalid_json", _splice("unbalanced-brackets", "properties", b"[[[[" * 10 + b"]")

    # numbers
    for name, field, text in [
        ("int-40-digits", "properties", b'{"n":1234567890123456789012345678901234567890}'),
        ("int-2-63", "properties", b'{"total":9223372036854775808}'),
        ("int-below-i64", "properties", b'{"total":-9223372036854775809}'),
        ("int-u64-max", "traits", b'{"employees":18446744073709551615}'),
        ("int-in-unknown-field", "zzz", b"123456789012345678901234567890"),
        ("int-in-array", "context", b'{"ids":[1,2,99999999999999999999999]}'),
        ("int-version", "version", b"100000000000000000000"),
        ("float-1e400", "properties", b'{"revenue":1e400}'),
        ("float-minus-1e400", "properties", b'{"revenue":-1e400}'),
        ("float-in-unknown-field", "zzz", b"1.5E+309"),
    ]:
        yield (
            name,
            "number_out_of_range",
            _splice(name, field, text, **({"type": "identify"} if field == "traits" else {})),
        )
    yield (
        "int-i64-max-ok",
        "accepted",
        _splice("int-i64-max-ok", "properties", b'{"n":9223372036854775807,"m":-9223372036854775808}'),
    )

    # NaN and Infinity are not JSON
    for name, field, text in [
        ("nan-properties", "properties", b'{"revenue":NaN}'),
        ("infinity-traits", "traits", b'{"score":Infinity}'),
        ("minus-infinity-context", "context", b'{"x":-Infinity}'),
        ("nan-unknown-field", "zzz", b"NaN"),
        ("nan-lowercase", "properties", b'{"revenue":nan}'),
    ]:
        yield name, "invalid_json", _splice(name, field, text, **({"type": "identify"} if field == "traits" else {}))

    # text that is not UTF-8
    for name, bad in [
        ("utf8-ff", b"\xff"),
        ("utf8-overlong-slash", b"\xc0\xaf"),
        ("utf8-encoded-surrogate", b"\xed\xa0\x80"),
        ("utf8-truncated-sequence", b"\xe2\x82"),
        ("utf8-latin1-e-acute", b"caf\xe9"),
    ]:
        yield name, "invalid_json", _splice(name, "properties", b'{"name":"x' + bad + b'y"}')
    yield "utf8-bad-key", "invalid_json", _splice("utf8-bad-key", "zzz", b'{"k\xfe":1}')

    # lone surrogate escapes
    for name, field, text in [
        ("surrogate-high-alone", "properties", rb'{"name":"\ud800"}'),
        ("surrogate-low-alone", "properties", rb'{"name":"\udfff x"}'),
        ("surrogate-high-then-letter", "properties", rb'{"name":"\ud83dA"}'),
        ("surrogate-reversed-pair", "properties", rb'{"name":"\ude00\ud83d"}'),
        ("surrogate-in-key", "zzz", rb'{"\udc00":1}'),
        ("surrogate-in-user-id", "userId", rb'"u\ud800"'),
    ]:
        yield name, "invalid_json", _splice(name, field, text)
    yield (
        "surrogate-pair-ok",
        "accepted",
        _splice("surrogate-pair-ok", "properties", rb'{"name":"\ud83d\ude00 caf\u00e9"}'),
    )

    # wrong types at every field
    wrong: list[tuple[str, str, Any, dict[str, Any]]] = [
        ("user-id-number", "userId", 42, {}),
        ("anonymous-id-list", "anonymousId", ["a"], {}),
        ("message-id-object", "messageId", {"id": 1}, {}),
        ("message-id-number", "messageId", 5, {}),
        ("traits-list", "traits", [1, 2], {"type": "identify"}),
        ("traits-string", "traits", "vip", {"type": "identify"}),
        ("context-string", "context", "web", {}),
        ("properties-list", "properties", [1, 2], {}),
        ("properties-string", "properties", "x", {}),
        ("timestamp-number", "timestamp", 1_790_000_000_000, {}),
        ("timestamp-bool", "timestamp", True, {}),
        ("event-number", "event", 5, {}),
        ("event-null", "event", None, {}),
        ("event-empty", "event", "", {}),
        ("event-too-long", "event", "E" * 201, {}),
        ("group-id-number", "groupId", 7, {"type": "group"}),
        ("previous-id-list", "previousId", ["a"], {"type": "alias"}),
        ("page-name-object", "name", {"x": 1}, {"type": "page"}),
        ("version-object", "version", {"v": 1}, {}),
        ("integrations-list", "integrations", ["All"], {}),
        ("sent-at-number", "sentAt", 12, {}),
        ("original-timestamp-bool", "originalTimestamp", False, {"timestamp": _DROP}),
        ("user-id-too-long", "userId", "u" * 257, {}),
    ]
    for name, field, value, extra in wrong:
        yield name, "invalid_field", _json(_msg(name, **{field: value, **extra}))
    yield "top-level-array", "invalid_message", b"[1,2,3]"
    yield "top-level-string", "invalid_message", b'"track"'
    yield "top-level-null", "invalid_message", b"null"
    yield "top-level-number", "invalid_message", b"42"

    # identity and type
    yield "identity-missing", "missing_identity", _json(_msg("identity-missing", userId=_DROP))
    yield "identity-null", "missing_identity", _json(_msg("identity-null", userId=None, anonymousId=None))
    yield "type-unknown", "unknown_type", _json(_msg("type-unknown", type="click"))
    yield "type-missing", "unknown_type", _json(_msg("type-missing", type=_DROP))
    yield "type-number", "unknown_type", _json(_msg("type-number", type=5))
    yield "type-uppercase", "unknown_type", _json(_msg("type-uppercase", type="TRACK"))
    yield "empty-object", "unknown_type", b"{}"

    # timestamps
    for name, value in [
        ("timestamp-1999", "1999-12-31T23:59:59Z"),
        ("timestamp-epoch", "1970-01-01T00:00:00Z"),
        ("timestamp-year-2999", "2999-01-01T00:00:00Z"),
    ]:
        yield name, "bad_timestamp", _json(_msg(name, timestamp=value))
    yield (
        "original-timestamp-1999",
        "bad_timestamp",
        _json(_msg("original-timestamp-1999", timestamp=_DROP, originalTimestamp="1999-01-01T00:00:00+02:00")),
    )
    for name, value in [
        ("timestamp-no-zone", "2026-09-01T00:00:00"),
        ("timestamp-text", "yesterday"),
        ("timestamp-feb-30", "2026-02-30T00:00:00Z"),
    ]:
        yield name, "invalid_field", _json(_msg(name, timestamp=value))

    # not JSON
    valid = _json(_msg("x"))
    yield "truncated-half", "invalid_json", valid[: len(valid) // 2]
    yield "truncated-last-brace", "invalid_json", valid[:-1]
    yield "trailing-comma", "invalid_json", valid[:-1] + b",}"
    yield "single-quotes", "invalid_json", valid.replace(b'"', b"'")
    yield "byte-order-mark", "invalid_json", b"\xef\xbb\xbf" + _json(_msg("byte-order-mark"))
    yield "trailing-garbage", "invalid_json", _json(_msg("trailing-garbage")) + b"xyz"
    yield "two-objects", "invalid_json", _json(_msg("two-objects")) + _json(_msg("two-objects"))
    yield "control-char-in-string", "invalid_json", _splice("control-char-in-string", "properties", b'{"a":"x\x01y"}')
    yield "comment", "invalid_json", b"/* hi */" + _json(_msg("comment"))
    yield "hex-number", "invalid_json", _splice("hex-number", "properties", b'{"total":0x10}')
    yield "leading-zero", "invalid_json", _splice("leading-zero", "properties", b'{"total":012}')
    yield "random-bytes", "invalid_json", bytes(range(256)) * 4
    yield "empty-value", "invalid_json", b""
    yield "whitespace-only", "invalid_json", b" \n\t "

    # size
    yield "too-large", "too_large", _json(_msg("too-large", properties={"blob": "x" * (33 * 1024)}))

    # odd but valid: scored, and the fold does not fail on them
    accepted: list[tuple[str, dict[str, Any]]] = [
        ("revenue-string", {"event": "Order Completed", "properties": {"order_id": "o1", "revenue": "12.5"}}),
        ("revenue-object", {"event": "Order Completed", "properties": {"order_id": "o2", "revenue": {"v": 1}}}),
        ("revenue-bool", {"event": "Order Completed", "properties": {"order_id": "o3", "revenue": True}}),
        ("revenue-negative-huge", {"event": "Order Completed", "properties": {"order_id": "o4", "total": -1e308}}),
        ("order-id-missing", {"event": "Order Completed", "properties": {"total": 5}}),
        ("order-id-number", {"event": "Order Completed", "properties": {"order_id": 7, "total": 5}}),
        ("products-string", {"event": "Order Completed", "properties": {"order_id": "o5", "products": "many"}}),
        ("products-of-numbers", {"event": "Order Completed", "properties": {"order_id": "o6", "products": [1, 2]}}),
        ("refund-of-nothing", {"event": "Order Refunded", "properties": {"order_id": "never", "total": "x"}}),
        ("traits-odd-values", {"type": "identify", "traits": {"email": 5, "employees": "many", "address": "PL"}}),
        ("page-path-number", {"type": "page", "properties": {"path": 5}, "context": {"page": ["x"]}}),
        ("context-user-agent-object", {"context": {"userAgent": {"ua": 1}, "channel": 5}}),
        ("big-array", {"properties": {"items": list(range(5000))}}),
        ("long-string", {"properties": {"note": "y" * 30_000}}),
        ("many-keys", {"properties": {f"k{i}": i for i in range(2000)}}),
        ("unicode-everywhere", {"event": "Produkt \u00e9\u4e2d\U0001f600", "properties": {"\u00e9": "\u4e2d"}}),
        ("group-odd-traits", {"type": "group", "groupId": "acct-odd", "traits": {"employees": [1], "industry": {}}}),
        ("version-string", {"version": "two"}),
        (
            "products-overflowing",
            {
                "event": "Order Completed",
                "properties": {
                    "order_id": "o7",
                    "products": [
                        {"price": 1e308, "quantity": 1e308},
                        {"price": -1e308, "quantity": 1e308},
                        {"price": 1.7e308},
                    ],
                },
            },
        ),
        (
            "amounts-at-the-double-limit",
            {"event": "Order Completed", "properties": {"order_id": "o8", "total": 1.7e308}},
        ),
        ("amount-numeric-strings", {"event": "Order Completed", "properties": {"order_id": "o9", "revenue": "1e400"}}),
    ]
    for name, fields in accepted:
        yield name, "accepted", _json(_msg(name, **fields))
    dup = _json(_msg("duplicate-keys"))
    yield "duplicate-keys", "accepted", dup.replace(b'"event":', b'"event":"Ignored","event":', 1)


def line(name: str, reason: str, raw: bytes) -> str:
    entry: dict[str, str] = {"name": name, "reason": reason}
    try:
        entry["text"] = raw.decode()
    except UnicodeDecodeError:
        entry["base64"] = base64.b64encode(raw).decode()
    return json.dumps(entry, ensure_ascii=True)


def build() -> str:
    names = set()
    out = []
    for name, reason, raw in cases():
        assert name not in names, name
        names.add(name)
        out.append(line(name, reason, raw))
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    CORPUS.write_text(build())
    print(f"{CORPUS}: {len(CORPUS.read_text().splitlines())} messages")
