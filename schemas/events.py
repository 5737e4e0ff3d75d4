"""The event contract: Segment Spec messages published to ``events.web|email|store``.

``decode`` turns raw Kafka bytes into the core's :class:`scorestream.Event` or raises
:class:`InvalidMessage` with a reason code and a readable detail, which the worker puts on the
dead-letter topic with the original bytes. It never raises anything else, for any bytes, and what
it returns re-encodes (``schemas.state.encode``). The HTTP collector runs the same two functions
(:func:`check_json` on a request body, :func:`decode` on each message it would publish), so both
doors make one decision for one message.

The JSON rules (:func:`check_json`), checked on the bytes before any parser reads them: UTF-8
text; objects and arrays nested at most :data:`MAX_DEPTH` levels (the message is the first), so no
recursive parser can run out of stack; integers within the signed 64-bit range and numbers a double
can hold. ``NaN``/``Infinity`` and lone surrogate escapes are not JSON and every parser here refuses
them (``invalid_json``). Duplicate keys: the last one wins, as in every parser here (msgspec,
pydantic, orjson), so both doors read the same event.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar, Literal

import msgspec
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from schemas.errors import ContractError
from scorestream import Event

CONTRACT_VERSION = "1"
MAX_MESSAGE_BYTES = 32 * 1024
# Event time outside these bounds is treated as a producer bug, not as data.
MIN_TIMESTAMP = datetime(2000, 1, 1, tzinfo=UTC)
MAX_FUTURE_SKEW_MS = 24 * 3600 * 1000
# Objects and arrays nested deeper than this are refused before a parser sees them (``too_deep``).
MAX_DEPTH = 32
# Integers outside the signed 64-bit range are refused (``number_out_of_range``): the binary
# codecs, orjson and ClickHouse hold no more.
MIN_INT, MAX_INT = -(2**63), 2**63 - 1

Id = Annotated[str, Field(min_length=1, max_length=256)]
Props = dict[str, Any]


# What the JSON Schemas say of ``context``: free, but for Segment's consent object, which the
# worker reads (:func:`consent_preferences`, on both paths: the check is in ``_to_event``)
CONTEXT_SCHEMA: dict[str, Any] = {
    "description": "Segment's context. `consent.categoryPreferences` decides what may be scored (docs/model.md).",
    "properties": {
        "consent": {
            "type": "object",
            "properties": {
                "categoryPreferences": {
                    "type": "object",
                    "description": "Consent category -> granted. Absent: the contact's consent at the event's time.",
                    "additionalProperties": {"type": "boolean"},
                    "maxProperties": 64,
                    "propertyNames": {"minLength": 1, "maxLength": 100},
                }
            },
        }
    },
}


class _Message(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True, populate_by_name=True)

    messageId: Id = Field(description="Unique per message; re-sent or redelivered ids count once.")
    timestamp: AwareDatetime | None = Field(
        default=None,
        description="Event time, ISO 8601 with 'Z' or an offset. When absent, the Kafka record's CreateTime is used.",
    )
    userId: Id | None = None
    anonymousId: Id | None = None
    context: Props = Field(default_factory=dict, json_schema_extra=CONTEXT_SCHEMA)
    integrations: Props = Field(default_factory=dict)
    sentAt: AwareDatetime | None = None
    receivedAt: AwareDatetime | None = None
    originalTimestamp: AwareDatetime | None = None
    version: int | str | None = None

    @model_validator(mode="after")
    def _needs_identity(self) -> _Message:
        if not self.userId and not self.anonymousId:
            raise ValueError("missing_identity: one of userId or anonymousId is required")
        return self


class Identify(_Message):
    """Who the person is: ``traits`` (email, name, title, company, ...)."""

    type: Literal["identify"]
    traits: Props = Field(default_factory=dict)


class Track(_Message):
    """Something the person did: e-commerce, email and custom event names."""

    type: Literal["track"]
    event: Annotated[str, Field(min_length=1, max_length=200)]
    properties: Props = Field(default_factory=dict)


class Page(_Message):
    """A web page view; the path comes from ``properties.path`` or ``context.page.path``."""

    type: Literal["page"]
    name: str | None = None
    category: str | None = None
    properties: Props = Field(default_factory=dict)


class Screen(_Message):
    """A mobile app screen view."""

    type: Literal["screen"]
    name: str | None = None
    category: str | None = None
    properties: Props = Field(default_factory=dict)


class Group(_Message):
    """The person belongs to an account (B2B)."""

    type: Literal["group"]
    groupId: Id
    traits: Props = Field(default_factory=dict)


class Alias(_Message):
    """``previousId`` (an anonymous or former user id) is now ``userId``."""

    type: Literal["alias"]
    previousId: Id
    userId: Id


SegmentMessage = Annotated[Identify | Track | Page | Screen | Group | Alias, Field(discriminator="type")]


# --- The fast path ---------------------------------------------------------------------------
# The same contract as msgspec structs: about five times cheaper than pydantic per message, which
# was a fifth of the worker's time. It may only be stricter, never looser: whatever it refuses
# goes to the pydantic models above, which accept it or explain the refusal (the reason codes
# come from there). tests/schemas/test_events.py checks that both give the same event.
_FastId = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
_FastTime = Annotated[datetime, msgspec.Meta(tz=True)]


class _Fast(msgspec.Struct, tag_field="type"):
    messageId: _FastId
    timestamp: _FastTime | None = None
    userId: _FastId | None = None
    anonymousId: _FastId | None = None
    context: dict[str, Any] = {}
    integrations: dict[str, Any] = {}
    sentAt: _FastTime | None = None
    receivedAt: _FastTime | None = None
    originalTimestamp: _FastTime | None = None
    version: int | str | None = None


class _FastIdentify(_Fast, tag="identify"):
    type: ClassVar[str] = "identify"
    traits: dict[str, Any] = {}


class _FastTrack(_Fast, tag="track"):
    type: ClassVar[str] = "track"
    event: Annotated[str, msgspec.Meta(min_length=1, max_length=200)] = ""
    properties: dict[str, Any] = {}


class _FastPage(_Fast, tag="page"):
    type: ClassVar[str] = "page"
    name: str | None = None
    category: str | None = None
    properties: dict[str, Any] = {}


class _FastScreen(_Fast, tag="screen"):
    type: ClassVar[str] = "screen"
    name: str | None = None
    category: str | None = None
    properties: dict[str, Any] = {}


class _FastGroup(_Fast, tag="group"):
    type: ClassVar[str] = "group"
    groupId: _FastId = ""
    traits: dict[str, Any] = {}


class _FastAlias(_Fast, tag="alias"):
    type: ClassVar[str] = "alias"
    previousId: _FastId = ""


_FAST = msgspec.json.Decoder(_FastIdentify | _FastTrack | _FastPage | _FastScreen | _FastGroup | _FastAlias)
# fields the pydantic models require and the structs default to "" (msgspec cannot require a
# field after defaulted ones): an empty value sends the message to pydantic, which refuses it
_REQUIRED = {"track": "event", "group": "groupId", "alias": "previousId"}


def _validate(raw: bytes) -> Any:
    """The message as a fast struct, or as a pydantic model when the fast path declines it.

    ``raw`` has passed :func:`check_json`. Text msgspec cannot parse is not JSON (``NaN``, a lone
    surrogate escape, a truncated message): refused here, never handed to pydantic, whose parser
    accepts ``NaN``, ``Infinity`` and numbers past a double. Pydantic only explains a message that
    parses but does not fit the structs, after :func:`_check_numbers` read every value of it."""
    try:
        msg: Any = _FAST.decode(raw)
    except msgspec.ValidationError:  # a subclass of DecodeError: first
        msg = None
    except msgspec.DecodeError as exc:
        raise _not_json(exc, raw) from None
    if msg is not None:
        required = _REQUIRED.get(msg.type)
        identified = msg.userId if msg.type == "alias" else (msg.userId or msg.anonymousId)
        if identified and (required is None or getattr(msg, required)):
            return msg
    _check_numbers(raw, ints=True)
    try:
        return MESSAGE_ADAPTER.validate_json(raw)
    except ValidationError as exc:
        raise _explain(exc) from None


# --- The JSON rules ------------------------------------------------------------------------------
_UNTYPED = msgspec.json.Decoder()
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_ONE_BRACKET = bytes.maketrans(b"[]", b"{}")
# The shape of the bytes: digits -> 0, E -> e, signs dropped, [ -> {. Cheap filters on it: more
# opening brackets than the depth limit may nest too deep; a run of 19 digits may be an integer
# past 64 bits; a digit, e and 3 digits a number past a double. Only then is it checked exactly.
_SHAPE = bytes.maketrans(b"0123456789E[", b"0000000000e{")
_SIGNS = b"+-"
_LONG_DIGITS = b"0" * 19
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')


def check_json(raw: bytes, max_depth: int = MAX_DEPTH) -> None:
    """Refuse bytes that break the JSON rules (see the module docstring), before any parser reads
    them: ``invalid_json`` (not UTF-8, unbalanced brackets), ``too_deep`` (nested deeper than
    ``max_depth``), ``number_out_of_range``. Cheap unless a rule may be at stake: a translation of
    the bytes, a count and two substring searches (about 1 us for a 200-byte message)."""
    if not raw.isascii():
        try:
            raw.decode()
        except UnicodeDecodeError as exc:
            raise InvalidMessage("invalid_json", f"not UTF-8 text: {exc.reason} at byte {exc.start}") from None
    shape = raw.translate(_SHAPE, _SIGNS)
    if shape.count(b"{") > max_depth:
        _check_depth(raw, max_depth)
    long_digits = _LONG_DIGITS in shape
    if long_digits or b"0e000" in shape:
        _check_numbers(raw, ints=long_digits)


def may_hold_long_integers(raw: bytes) -> bool:
    """Whether ``raw`` has a run of 19 digits: an integer past 64 bits needs one (a parser that
    reads those as floats, as orjson does, must not be trusted with it)."""
    return _LONG_DIGITS in raw.translate(_SHAPE, _SIGNS)


def _check_depth(raw: bytes, max_depth: int) -> None:
    """Nesting of the brackets outside strings: each round removes the innermost pairs, one level."""
    outside = _STRING.sub(b'""', raw) if b"\\" in raw else b'""'.join(raw.split(b'"')[::2])
    brackets = outside.translate(_ONE_BRACKET, _NOT_BRACKETS)  # a mismatched kind is the parser's to see
    for _ in range(max_depth):
        if not brackets:
            return
        inner = brackets.replace(b"{}", b"")
        if len(inner) == len(brackets):
            raise InvalidMessage("invalid_json", "unbalanced brackets")
        brackets = inner
    if brackets:
        raise InvalidMessage("too_deep", f"objects and arrays nest deeper than {max_depth} levels")


def _check_numbers(raw: bytes, ints: bool) -> None:
    """Parse ``raw`` (nesting already checked) with a parser that refuses what is not JSON and
    numbers past a double, and check every integer's range when ``ints``."""
    try:
        tree = _UNTYPED.decode(raw)
    except msgspec.ValidationError as exc:  # untyped, only for a number past a double
        raise InvalidMessage("number_out_of_range", f"{exc}: a number a double cannot hold") from None
    except msgspec.DecodeError as exc:
        raise _not_json(exc, raw) from None
    if ints:
        _check_ints(tree, "$")


def _not_json(exc: msgspec.DecodeError, raw: bytes) -> InvalidMessage:
    """``invalid_json`` with the parser's words, and a hint for the two causes they hide."""
    hints = []
    if b"NaN" in raw or b"Infinity" in raw:
        hints.append("NaN and Infinity are not JSON")
    if b"\\ud" in raw.lower():
        hints.append("a surrogate escape (\\ud800-\\udfff) must be a high-low pair")
    return InvalidMessage("invalid_json", f"{exc}{' (' + '; '.join(hints) + ')' if hints else ''}")


def _check_ints(value: Any, where: str) -> None:
    if type(value) is int:
        if not MIN_INT <= value <= MAX_INT:
            raise InvalidMessage("number_out_of_range", f"{where}: {value} is outside the signed 64-bit range")
    elif type(value) is dict:
        for key, item in value.items():
            if type(item) in (int, dict, list):
                _check_ints(item, f"{where}.{key}")
    elif type(value) is list:
        for index, item in enumerate(value):
            if type(item) in (int, dict, list):
                _check_ints(item, f"{where}[{index}]")


MESSAGE_ADAPTER: TypeAdapter[Identify | Track | Page | Screen | Group | Alias] = TypeAdapter(SegmentMessage)


# Headers of a dead-letter record (the worker's rejected input and the collector's rejected batch
# messages write the same ones): why, and where the message came from.
DEADLETTER_HEADERS = (
    "scorestream.reason",
    "scorestream.error",
    "scorestream.source.topic",
    "scorestream.source.partition",
    "scorestream.source.offset",
    "scorestream.exception",
)


def deadletter_headers(
    reason: str, detail: str, topic: str, partition: int, offset: int, exception: BaseException | str | None = None
) -> list[tuple[str, bytes]]:
    """The dead-letter headers; ``detail`` is cut to 1000 characters. ``exception``: what failed
    (an exception, or its class name), recorded by class as ``module.Class`` (builtins bare); the
    contract's own refusal is ``schemas.events.InvalidMessage``. Without one the header is empty."""
    if isinstance(exception, BaseException):
        kind = type(exception)
        exception = kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"
    values = (reason, detail[:1000], topic, str(partition), str(offset), exception or "")
    return [(k, v.encode(errors="replace")) for k, v in zip(DEADLETTER_HEADERS, values, strict=True)]


class InvalidMessage(ContractError, ValueError):
    """A message that is not a valid event; ``reason`` is a stable code for the dead-letter record."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def _explain(exc: ValidationError) -> InvalidMessage:
    errors = exc.errors(include_url=False, include_input=False)
    first = errors[0]
    kind = first["type"]
    where = ".".join(str(p) for p in first["loc"]) or "message"
    if kind == "json_invalid":
        return InvalidMessage("invalid_json", first["msg"])
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        return InvalidMessage("unknown_type", first["msg"])
    if kind == "value_error" and "missing_identity" in first["msg"]:
        return InvalidMessage("missing_identity", "one of userId or anonymousId is required")
    if kind in ("model_type", "model_attributes_type", "dict_type") and not first["loc"]:
        return InvalidMessage("invalid_message", "a message must be a JSON object")
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return InvalidMessage("invalid_field", f"{where}: {first['msg']}{more}")


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _ms(value: datetime) -> int:
    delta = value - _EPOCH  # exact integer arithmetic: no float rounding of milliseconds
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


MIN_TIMESTAMP_MS = _ms(MIN_TIMESTAMP)


MAX_USER_AGENT = 512
# Segment's consent object: at most this many categories, each name at most this long
MAX_CONSENT_CATEGORIES = 64
MAX_CONSENT_CATEGORY = 100


def consent_preferences(context: Props) -> dict[str, bool] | None:
    """``context.consent.categoryPreferences`` (category -> granted), or None when the message
    carries no consent object (no ``context.consent``, or one without ``categoryPreferences``).
    Anything else than an object of booleans with at most :data:`MAX_CONSENT_CATEGORIES` named
    categories is refused (``invalid_field``): a consent the worker cannot read is not guessed."""
    consent = context.get("consent")
    if consent is None:
        return None
    where = "context.consent"
    if not isinstance(consent, dict):
        raise InvalidMessage("invalid_field", f"{where}: expected an object")
    preferences = consent.get("categoryPreferences")
    if preferences is None:
        return None
    where += ".categoryPreferences"
    if not isinstance(preferences, dict):
        raise InvalidMessage("invalid_field", f"{where}: expected an object of category -> true|false")
    if len(preferences) > MAX_CONSENT_CATEGORIES:
        raise InvalidMessage("invalid_field", f"{where}: more than {MAX_CONSENT_CATEGORIES} categories")
    for category, granted in preferences.items():
        if not 0 < len(category) <= MAX_CONSENT_CATEGORY:
            raise InvalidMessage(
                "invalid_field", f"{where}: a category name has 1 to {MAX_CONSENT_CATEGORY} characters"
            )
        if type(granted) is not bool:
            raise InvalidMessage("invalid_field", f"{where}.{category}: expected true or false")
    return {category: preferences[category] for category in sorted(preferences)}


def page_path(properties: Props, context: Props) -> str | None:
    path = properties.get("path")
    if not isinstance(path, str):
        page = context.get("page")
        path = page.get("path") if isinstance(page, dict) else None
    return path if isinstance(path, str) else None


def decode(raw: bytes, channel: str, record_ms: int, now_ms: int | None = None) -> Event:
    """Validate one raw Kafka value against the contract and normalise it; any other bytes raise
    :class:`InvalidMessage`, never another exception. Deterministic given its arguments.

    ``record_ms`` is the Kafka record timestamp (``<= 0``: the record has none, as Kafka's -1):
    the event time when the message has none, and the reference for refusing event times more
    than a day ahead. ``now_ms`` is the worker's clock at arrival (None: not checked, as in a
    replay): a record timestamp more than a day ahead of it is refused, and it is the reference
    for the event time when the record has no timestamp.
    """
    if len(raw) > MAX_MESSAGE_BYTES:
        raise InvalidMessage("too_large", f"{len(raw)} bytes; the limit is {MAX_MESSAGE_BYTES}")
    check_json(raw)
    return _to_event(_validate(raw), channel, record_ms, now_ms)


def _to_event(msg: Any, channel: str, record_ms: int, now_ms: int | None = None) -> Event:
    """The core's event from a validated message (a fast struct or a pydantic model)."""
    has_record_time = record_ms > 0
    if has_record_time and now_ms is not None and record_ms > now_ms + MAX_FUTURE_SKEW_MS:
        raise InvalidMessage(
            "bad_timestamp",
            f"the record's timestamp {record_ms} is more than a day after the worker's clock ({now_ms})",
        )
    ts = msg.timestamp or msg.originalTimestamp
    if ts is not None:
        ts_ms = _ms(ts)
    elif has_record_time:
        ts_ms = record_ms
    else:
        raise InvalidMessage("bad_timestamp", "no event time: the message has no timestamp and its record none")
    if ts_ms < MIN_TIMESTAMP_MS:
        raise InvalidMessage("bad_timestamp", f"timestamp {ts} is before {MIN_TIMESTAMP.date()}")
    reference = record_ms if has_record_time else now_ms
    if reference is not None and ts_ms > reference + MAX_FUTURE_SKEW_MS:
        written = "the record was written" if has_record_time else "the worker's clock (the record has no timestamp)"
        raise InvalidMessage("bad_timestamp", f"timestamp {ts} is more than a day after {written}")
    common: dict[str, Any] = {
        "message_id": msg.messageId,
        "kind": msg.type,
        "timestamp_ms": ts_ms,
        "channel": channel,
        "user_id": msg.userId or None,
        "anonymous_id": msg.anonymousId or None,
    }
    agent = msg.context.get("userAgent")
    if isinstance(agent, str) and agent:
        common["user_agent"] = agent[:MAX_USER_AGENT]
    if "consent" in msg.context:
        common["consent"] = consent_preferences(msg.context)
    kind = msg.type
    if kind == "track":
        return Event(**common, event=msg.event, properties=msg.properties)
    if kind in ("page", "screen"):
        return Event(**common, name=msg.name, path=page_path(msg.properties, msg.context), properties=msg.properties)
    if kind == "identify":
        return Event(**common, traits=msg.traits)
    if kind == "group":
        return Event(**common, group_id=msg.groupId, traits=msg.traits)
    return Event(**common, previous_id=msg.previousId)
