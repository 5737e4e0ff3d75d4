"""Test helpers shared by the whole suite: events, Segment JSON and small models built from literals."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, Final

import orjson
from aiokafka.structs import ConsumerRecord

from schemas.model_file import load_model
from scorestream import Event, Model

T0: Final = 1_790_000_000_000
"""Default event time (2026-09-21T14:13:20Z) in milliseconds since the epoch."""

MINUTE: Final = 60_000
HOUR: Final = 3_600_000
DAY: Final = 86_400_000

DEFAULT_MODEL: Final[Model] = load_model()

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_counter = itertools.count(1)


class _Omit:
    """Marker: leave a field out of :func:`segment_json` altogether (``None`` writes an explicit null)."""

    def __repr__(self) -> str:
        return "OMIT"


OMIT: Final = _Omit()


def next_message_id(prefix: str = "msg") -> str:
    """A message id never returned before in this test process."""
    return f"{prefix}-{next(_counter):08d}"


def iso(ms: int, offset_hours: int = 0) -> str:
    """ISO 8601 text for ``ms`` (UTC epoch milliseconds), written in the given UTC offset."""
    local = (_EPOCH + timedelta(milliseconds=ms)).astimezone(timezone(timedelta(hours=offset_hours)))
    text = local.isoformat(timespec="milliseconds")
    return text.replace("+00:00", "Z") if offset_hours == 0 else text


def make_event(**overrides: Any) -> Event:
    """An :class:`Event` with sensible defaults: an email open by ``user-1`` at :data:`T0`."""
    fields: dict[str, Any] = {
        "message_id": next_message_id(),
        "kind": "track",
        "event": "Email Opened",
        "channel": "email",
        "timestamp_ms": T0,
        "user_id": "user-1",
    }
    fields.update(overrides)
    return Event(**fields)


_REQUIRED: Final[dict[str, dict[str, Any]]] = {
    "track": {"event": "Email Opened", "properties": {}},
    "page": {"name": "Home", "properties": {"path": "/"}},
    "screen": {"name": "Dashboard", "properties": {}},
    "identify": {"traits": {"email": "ada@example.com"}},
    "group": {"groupId": "acct-1", "traits": {}},
    "alias": {"previousId": "anon-1"},
}


def segment_at(kind: str, ts_ms: int, message_id: str | None = None, **fields: Any) -> bytes:
    """A Segment message of ``kind`` at event time ``ts_ms`` as a producer sends it (a fresh
    message id unless given); keyword arguments are its other fields."""
    mid = message_id if message_id is not None else next_message_id("msg")
    return orjson.dumps({"type": kind, "messageId": mid, "timestamp": iso(ts_ms), **fields})


def segment_json(**fields: Any) -> bytes:
    """Valid Segment Spec JSON (a ``track`` by default); keyword arguments override fields.

    Pass ``None`` for an explicit JSON null and :data:`OMIT` to leave a field out.
    """
    kind = fields.get("type", "track")
    message: dict[str, Any] = {
        "type": kind,
        "messageId": next_message_id(),
        "userId": "user-1",
        "anonymousId": "anon-1",
        "timestamp": iso(T0),
        **_REQUIRED.get(kind, {}),
    }
    message.update(fields)
    return orjson.dumps({k: v for k, v in message.items() if v is not OMIT})


def model_from(
    rules: list[dict[str, Any]],
    *,
    name: str = "test",
    half_life: str | int | float = "14d",
    fit_rules: list[dict[str, Any]] | None = None,
    storage: dict[str, Any] | None = None,
    **extra: Any,
) -> Model:
    """A small :class:`Model` from literal engagement rules (and optional fit rules / storage)."""
    raw: dict[str, Any] = {"name": name, "engagement": {"half_life": half_life, "rules": rules}}
    if fit_rules is not None:
        raw["fit"] = {"rules": fit_rules}
    if storage is not None:
        raw["storage"] = storage
    raw.update(extra)
    return Model.from_dict(raw)


def consumer_record(
    topic: str, offset: int, value: bytes | None, key: bytes | None = b"k", partition: int = 0, timestamp: int = T0
) -> Any:
    """A record as aiokafka's consumer gives it (for consumers tested without a broker)."""
    return ConsumerRecord(
        topic=topic,
        partition=partition,
        offset=offset,
        timestamp=timestamp,
        timestamp_type=0,
        key=key,
        value=value,
        checksum=None,
        serialized_key_size=len(key or b""),
        serialized_value_size=len(value or b""),
        headers=(),
    )
