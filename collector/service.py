"""The HTTP collector: Segment's HTTP Tracking API in front of the source topics.

Segment's libraries (analytics-python ``host=``, analytics.js ``apiHost``, ...) and plain HTTP
clients post here exactly as they would to ``api.segment.io``; accepted messages land on
``events.web|email|store`` for the worker, like any other producer's.

* Routes (``POST``): ``/v1/track``, ``/v1/identify``, ``/v1/page``, ``/v1/screen``, ``/v1/group``,
  ``/v1/alias`` (one message; ``type`` comes from the route) and ``/v1/batch``; also the
  one-letter routes analytics.js posts to (``/v1/t``, ``/v1/i``, ``/v1/p``, ``/v1/s``, ``/v1/g``,
  ``/v1/a``, ``/v1/b``). ``OPTIONS`` answers CORS preflights, and every answer allows any origin:
  a write key is public (it ships in web pages) and only ever writes. A preflight allows the
  request headers the browser asks for (``X-Retry-Count``, which analytics.js adds to every retry,
  and any custom header a page configures) when they are a plain list of header names, else the
  fixed list the SDKs use; every answer exposes ``Retry-After`` and ``X-RateLimit-Reset`` to the
  page, so a browser SDK can read when to retry, and ``X-Request-ID`` (the request's id in the API's
  logs). ``POST /v1/m`` (analytics.js' own telemetry)
  needs no write key: its body (capped like a message) is read and discarded, answered 200.
* Auth: a write key (``SCORESTREAM_WRITE_KEYS``) as the Basic-auth user name, or ``writeKey`` in
  the body, as Segment takes it; compared in constant time. None configured: every route is 401.
  A key may send to its channels only (``key:web+email``; ``SCORESTREAM_WRITE_KEYS``); the first is
  the default of its messages, ``context.channel`` (web, email, store) picks another of them per
  message, and a message asking for a channel its key may not send to is refused
  (``channel_not_allowed``: 403 for a single message, dead-lettered and listed in a batch). Keys are never logged, and ``writeKey`` is removed from the message.
* Limits (Segment's): 32 KiB a single-message request and a message (``MAX_MESSAGE_BYTES``, after
  enrichment), 500 KiB a batch request, 2,500 messages a batch. Bodies are read with a hard cap,
  and ``Content-Encoding: gzip`` bodies are inflated with the same cap on the output.
* Enrichment (Segment's): ``receivedAt`` = now; ``originalTimestamp`` = the client's
  ``timestamp`` (or ``originalTimestamp``); ``timestamp`` = ``receivedAt - (sentAt -
  originalTimestamp)`` when ``sentAt`` is known (the message's own, else the batch's), the
  client's timestamp without ``sentAt``, ``receivedAt`` without a client timestamp; a missing
  ``messageId`` becomes a hash of the message content, so a client's retry of the same message
  is counted once downstream. A batch's ``context`` and ``integrations`` are merged into each
  message (the message's own keys win).
* Validation: each enriched message goes through the worker's own contract
  (:func:`schemas.events.decode`, on the very bytes published), so whatever the collector accepts
  the worker accepts. A single-message route answers 400 with the reason code; a batch answers
  200, publishes the valid messages, sends the invalid ones to the dead-letter topic (the
  worker's headers and reasons) and lists them in ``rejected``. A body that is not JSON, not an
  object, has no ``batch`` list, or is over a limit is a 400 and publishes nothing. The
  contract's JSON rules (UTF-8, 32 levels of nesting, 64-bit integers, no ``NaN``) are checked on
  a single message's body before it is parsed (:func:`parse_body`): the same 400 reason as the
  worker's dead letter, never a 500.
* Privacy: a message of a person the privacy list restricts (``kafka_io.privacy``: suppressed
  from before the request's receipt, or an erased past) is answered as accepted, as Segment
  answers for suppressed users (the sender must not learn who is suppressed, nor retry), and not
  published; an invalid one of theirs is not dead-lettered either. Counted in
  ``scorestream_events_suppressed_total{door="collector"}``, not in the accepted messages. At
  start, a request waits for the list to be read to its end (up to ``PRIVACY_WAIT_S``, then 503).
* Durability: 200 means every record of the request (dead letters included) was acknowledged by
  Kafka with ``acks=all`` (idempotent producer). More than ``collector_max_in_flight`` messages
  waiting for acknowledgements: 429 with ``Retry-After``; Kafka unreachable or slower than
  ``SEND_TIMEOUT_S``: 503 with ``Retry-After``. Segment's libraries retry both.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import logging
import re
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NamedTuple, Protocol

import msgspec
import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from starlette.types import Receive, Scope, Send

from collector.errors import CollectorError
from kafka_io import clients
from kafka_io.clients import KafkaConnection
from kafka_io.partitioner import crc32_partitioner
from schemas.events import (
    MAX_DEPTH,
    MAX_MESSAGE_BYTES,
    InvalidMessage,
    check_json,
    deadletter_headers,
    decode,
    may_hold_long_integers,
)
from schemas.privacy import message_subjects, raw_subjects
from schemas.settings import Settings
from scorestream.privacy import PrivacyList
from telemetry import metrics

log = logging.getLogger(__name__)

SINGLE_ROUTES = {
    "/v1/track": "track",
    "/v1/identify": "identify",
    "/v1/page": "page",
    "/v1/screen": "screen",
    "/v1/group": "group",
    "/v1/alias": "alias",
}
SHORT_ROUTES = {
    "/v1/t": "track",
    "/v1/i": "identify",
    "/v1/p": "page",
    "/v1/s": "screen",
    "/v1/g": "group",
    "/v1/a": "alias",
}
BATCH_ROUTES = ("/v1/batch", "/v1/b")
ROUTE_TYPES: dict[str, str | None] = {**SINGLE_ROUTES, **SHORT_ROUTES, **dict.fromkeys(BATCH_ROUTES)}
METRICS_PATH = "/v1/m"  # analytics.js' telemetry: accepted and discarded
PATHS = frozenset(ROUTE_TYPES) | {METRICS_PATH}

MAX_BATCH_BYTES = 500 * 1024
MAX_BATCH_MESSAGES = 2500
SEND_TIMEOUT_S = 10.0
BUSY_RETRY_AFTER_S = 1
UNAVAILABLE_RETRY_AFTER_S = 5
PRIVACY_WAIT_S = 5.0  # a request arriving while the privacy list is read at start waits this long
CHANNELS = ("web", "email", "store")
CHANNEL_NOT_ALLOWED = "channel_not_allowed"
# Fields that are not the message's content: a retry may change them, its id must not.
_NOT_CONTENT = frozenset({"messageId", "sentAt", "receivedAt", "writeKey"})
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_JSON_HEADERS = [
    (b"content-type", b"application/json"),
    (b"access-control-allow-origin", b"*"),
    # a cross-origin page reads only the headers listed here: a browser SDK needs these two to wait
    (b"access-control-expose-headers", b"Retry-After, X-RateLimit-Reset, X-Request-ID"),
]
# the request headers Segment's SDKs send (X-Retry-Count on every retry of analytics.js)
_ALLOWED_HEADERS = b"Authorization, Content-Type, Content-Encoding, X-Retry-Count"
_PREFLIGHT_HEADERS = [
    (b"access-control-allow-origin", b"*"),
    (b"access-control-allow-methods", b"POST, OPTIONS"),
    (b"access-control-max-age", b"86400"),
    (b"vary", b"Access-Control-Request-Headers"),
    (b"content-length", b"0"),
]
# Access-Control-Request-Headers echoed back: a comma-separated list of header names (RFC 9110
# tokens), bounded; anything else gets the fixed list above
_HEADER_LIST = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+(?:[ \t]*,[ \t]*[!#$%&'*+.^_`|~0-9A-Za-z-]+)*")
_MAX_HEADER_LIST_BYTES = 1024
_OK = b'{"success":true}'
Clock = Callable[[], int]


class Reply(NamedTuple):
    status: int
    body: bytes
    headers: list[tuple[bytes, bytes]]


def _request_headers(headers: Iterable[tuple[bytes, bytes]]) -> tuple[bytes | None, bytes | None, bytes | None]:
    """The request's ``authorization``, ``content-encoding`` and ``content-length`` (the last of each)."""
    authorization = encoding = length = None
    for name, value in headers:
        if name == b"authorization":
            authorization = value
        elif name == b"content-encoding":
            encoding = value
        elif name == b"content-length":
            length = value
    return authorization, encoding, length


class Refusal(CollectorError):
    """The whole request is refused: ``status`` with Segment's error body (``code``, ``message``)."""

    def __init__(self, status: int, code: str, message: str, retry_after_s: int | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.retry_after_s = status, code, message, retry_after_s

    def reply(self) -> Reply:
        body = orjson.dumps({"success": False, "code": self.code, "message": self.message})
        headers = _headers(body)
        if self.retry_after_s is not None:
            # Segment's libraries read Retry-After; analytics.js reads X-RateLimit-Reset
            seconds = str(self.retry_after_s).encode()
            headers += [(b"retry-after", seconds), (b"x-ratelimit-reset", seconds)]
        if self.status == 401:
            headers.append((b"www-authenticate", b'Basic realm="scorestream collector"'))
        return Reply(self.status, body, headers)


class ClientGone(CollectorError):
    """The client disconnected before its body was read: nothing to answer."""


def _headers(body: bytes) -> list[tuple[bytes, bytes]]:
    return [*_JSON_HEADERS, (b"content-length", str(len(body)).encode())]


class Publisher(Protocol):
    """Where accepted records go; :class:`KafkaPublisher` in production, a fake in tests."""

    @property
    def ready(self) -> bool:
        """Whether ``send`` can be called (the producer is connected)."""
        ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def send(
        self, topic: str, key: bytes | None, value: bytes, timestamp_ms: int, headers: list[tuple[str, bytes]] | None
    ) -> asyncio.Future[Any]:
        """Queue one record; the future resolves once the broker acknowledged it (or fails)."""
        ...


@dataclass
class KafkaPublisher:
    """An idempotent ``acks=all`` producer, connected in the background (the API starts and
    serves while Kafka is unreachable; the collector answers 503 until it connects)."""

    kafka: KafkaConnection
    _producer: AIOKafkaProducer | None = None
    _task: asyncio.Task[None] | None = None
    error: str | None = "not started"

    @property
    def ready(self) -> bool:
        return self._producer is not None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._connect(), name="collector-producer")

    async def _connect(self) -> None:
        while True:
            # crc32: only the ordering of one sender's messages on a source topic matters (the
            # worker re-keys by contact), and every collector maps a key to the same partition
            producer = clients.producer(
                self.kafka,
                acks="all",
                enable_idempotence=True,
                linger_ms=0,  # under load, records gather while the previous request is in flight
                # a full batch makes every sender to its partition wait for the one in flight: room
                # for a few batch requests' worth (the default 16 KiB is about one)
                max_batch_size=256 * 1024,
                partitioner=crc32_partitioner,
                client_id="scorestream-collector",
            )
            try:
                await producer.start()
            except (KafkaError, OSError) as exc:
                self.error = f"{type(exc).__name__}: {exc}"
                log.warning(
                    "collector producer cannot connect to %s (%s); retrying in 1 s", self.kafka.bootstrap, self.error
                )
                await producer.stop()
                await asyncio.sleep(1.0)
                continue
            self._producer, self.error = producer, None
            log.info("collector producer connected to %s", self.kafka.bootstrap)
            return

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._producer is not None:
            await self._producer.stop()  # flushes what is still queued
            self._producer = None

    async def send(
        self, topic: str, key: bytes | None, value: bytes, timestamp_ms: int, headers: list[tuple[str, bytes]] | None
    ) -> asyncio.Future[Any]:
        if self._producer is None:
            raise Refusal(503, "unavailable", "Kafka is not reachable yet; retry shortly", UNAVAILABLE_RETRY_AFTER_S)
        future: asyncio.Future[Any] = await self._producer.send(
            topic, value, key=key, timestamp_ms=timestamp_ms, headers=headers
        )
        return future


@dataclass(slots=True)
class ToPublish:
    """One record to publish: a valid message on its channel's topic, or a dead letter."""

    topic: str
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]] | None = None


@dataclass(slots=True)
class Rejected:
    index: int
    reason: str
    detail: str


@dataclass(slots=True)
class _Request:
    """What every message of one request shares."""

    channel: str  # the write key's default
    received_ms: int
    received_iso: str
    allowed: tuple[str, ...]  # the channels the write key may send to
    sent_at: Any = None  # the batch's sentAt (a message's own wins)
    context: dict[str, Any] | None = None
    integrations: dict[str, Any] | None = None
    suppressed: int = 0  # messages answered as accepted but dropped (the privacy list)


_SECONDS: dict[int, str] = {}


def iso_ms(ms: int) -> str:
    """``2026-11-22T10:15:00.123Z``: the form Segment writes its timestamps in. The text of each
    second is kept (live traffic's corrected timestamps fall in a few seconds: a dict lookup
    instead of a datetime a message)."""
    seconds, millis = divmod(ms, 1000)
    prefix = _SECONDS.get(seconds)
    if prefix is None:
        if len(_SECONDS) >= 4096:
            _SECONDS.clear()
        prefix = _SECONDS[seconds] = datetime.fromtimestamp(seconds, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{prefix}.{millis:03d}Z"


def _ms(value: Any) -> int | None:
    """Epoch ms of an ISO 8601 string with a zone, parsed as the contract's fast path parses it;
    None when it is not one (the contract then refuses the message and says why)."""
    if not isinstance(value, str):
        return None
    try:
        parsed = msgspec.convert(value, datetime)
    except msgspec.ValidationError:
        return None
    if parsed.tzinfo is None:
        return None
    delta = parsed - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


def content_id(msg: dict[str, Any]) -> str:
    """A ``messageId`` for a message that has none: a hash of its content (every field but the
    id, ``sentAt``, ``receivedAt`` and the write key), so that a retry gets the same id. Two
    identical messages without ``messageId`` and ``timestamp`` are therefore one event."""
    basis = {k: v for k, v in msg.items() if k not in _NOT_CONTENT}
    digest = hashlib.blake2b(orjson.dumps(basis, option=orjson.OPT_SORT_KEYS), digest_size=16).hexdigest()
    return f"auto-{digest}"


def enrich(msg: dict[str, Any], req: _Request) -> None:
    """Segment's server-side fields, in place (see the module docstring)."""
    msg.pop("writeKey", None)
    if req.context is not None:
        own = msg.get("context")
        if own is None:
            msg["context"] = req.context
        elif isinstance(own, dict):
            msg["context"] = {**req.context, **own}
    if req.integrations is not None:
        own = msg.get("integrations")
        if own is None:
            msg["integrations"] = req.integrations
        elif isinstance(own, dict):
            msg["integrations"] = {**req.integrations, **own}
    mid = msg.get("messageId")
    if mid is None or mid == "":
        msg["messageId"] = content_id(msg)
    sent = msg.get("sentAt")
    if sent is None and req.sent_at is not None:
        sent = msg["sentAt"] = req.sent_at
    msg["receivedAt"] = req.received_iso
    client = msg.get("timestamp")
    if client is None:
        client = msg.get("originalTimestamp")
    if client is None:
        msg["timestamp"] = req.received_iso
        return
    msg["originalTimestamp"] = client
    client_ms = _ms(client)
    sent_ms = _ms(sent) if sent is not None else None
    if client_ms is None or sent_ms is None:
        msg["timestamp"] = client
        return
    try:
        msg["timestamp"] = iso_ms(req.received_ms - (sent_ms - client_ms))
    except (ValueError, OverflowError, OSError):
        raise InvalidMessage(
            "bad_timestamp", f"sentAt {sent} and timestamp {client} put the corrected time out of range"
        ) from None


@dataclass
class Collector:
    """The collector's routes as one ASGI app (``api.app`` sends its paths here directly) and as
    :meth:`respond`, which the declared FastAPI routes (``api.routers.collector``) call when the
    full stack serves them."""

    settings: Settings
    publisher: Publisher
    clock: Clock
    send_timeout_s: float = SEND_TIMEOUT_S
    in_flight: int = 0
    paths: frozenset[str] = PATHS
    # who may not be collected: the API process's list (its regulation service keeps it current)
    privacy: PrivacyList = field(default_factory=PrivacyList)
    # set once that list was read to its end; None: nothing to wait for (set by the API's lifespan)
    privacy_ready: asyncio.Event | None = None
    _keys: list[tuple[bytes, tuple[str, ...]]] = field(default_factory=list)
    _topics: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._keys = [(k.encode(), channels) for k, channels in self.settings.write_key_channels().items()]
        self._topics = {channel: topic for topic, channel in self.settings.source_topics.items()}

    async def start(self) -> None:
        if self._keys:  # without write keys every route is a 401: no producer needed
            await self.publisher.start()

    async def stop(self) -> None:
        await self.publisher.stop()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            reply = await self.respond(scope["method"], scope["path"], scope["headers"], receive)
        except ClientGone:
            return
        await send({"type": "http.response.start", "status": reply.status, "headers": reply.headers})
        await send({"type": "http.response.body", "body": reply.body})

    async def respond(self, method: str, path: str, headers: Iterable[tuple[bytes, bytes]], receive: Receive) -> Reply:
        """Answer any request to a collector route: a CORS preflight, a POST, or 405."""
        if method == "OPTIONS":
            return _preflight(headers)
        if method != "POST":
            return Refusal(405, "method_not_allowed", "use POST").reply()
        if path == METRICS_PATH:
            return await _discard(headers, receive)
        return await self.handle(path, headers, receive)

    async def handle(self, path: str, headers: Iterable[tuple[bytes, bytes]], receive: Receive) -> Reply:
        """Answer one ``POST`` to a collector route; the body is read from the ASGI ``receive``."""
        try:
            return await self._handle(path, headers, receive)
        except Refusal as refusal:
            metrics.COLLECTOR_REFUSED.labels(refusal.code).inc()
            return refusal.reply()
        except ClientGone:
            raise
        except Exception:
            log.exception("collector: unexpected error on %s", path)
            metrics.COLLECTOR_REFUSED.labels("internal_error").inc()
            return Refusal(500, "internal_error", "unexpected error; retry").reply()

    async def _handle(self, path: str, headers: Iterable[tuple[bytes, bytes]], receive: Receive) -> Reply:
        if not self._keys:
            raise Refusal(401, "unauthorized", "the collector has no write keys (set SCORESTREAM_WRITE_KEYS)")
        kind = ROUTE_TYPES[path]
        limit = MAX_MESSAGE_BYTES if kind is not None else MAX_BATCH_BYTES
        authorization, encoding, length = _request_headers(headers)
        channels = None
        if authorization is not None and (user := _basic_user(authorization)) is not None:
            channels = self._channels_of(user)
            if channels is None:
                raise Refusal(401, "unauthorized", "unknown write key")
        if self.in_flight >= self.settings.collector_max_in_flight:
            raise self._busy()
        if self.privacy_ready is not None and not self.privacy_ready.is_set():
            await self._privacy_read()
        body = await _read(receive, length, encoding, limit)
        if kind is None and channels is not None:
            try:
                return await self._handle_batch(body, channels, path)
            except Refusal as refusal:
                if refusal.status == 400:  # refused before anything was published
                    await self._keep_unreadable(body, refusal, channels[0], path)
                raise
        parsed = parse_body(body, single=kind is not None)
        if not isinstance(parsed, dict):
            raise Refusal(400, "invalid_message", "the body must be a JSON object")
        if channels is None:
            channels = self._body_channels(parsed)
        now = self.clock()
        if kind is not None:
            parsed["type"] = kind
            out, rejected = self._prepare([parsed], _Request(channels[0], now, iso_ms(now), channels))
            if rejected:
                first = rejected[0]
                raise Refusal(403 if first.reason == CHANNEL_NOT_ALLOWED else 400, first.reason, first.detail)
            await self._publish(out, now)
            metrics.COLLECTOR_ACCEPTED.inc(len(out))  # none when suppressed: answered the same
            return Reply(200, _OK, _headers(_OK))
        return await self._batch(parsed, _Request(channels[0], now, iso_ms(now), channels), path)

    def _body_channels(self, parsed: dict[str, Any]) -> tuple[str, ...]:
        """The channels of the write key sent as ``writeKey`` in the body (none in the header)."""
        given = parsed.get("writeKey")
        if not isinstance(given, str) or not given:
            raise Refusal(
                401, "unauthorized", "send the write key as the Basic-auth user name or as writeKey in the body"
            )
        channels = self._channels_of(given.encode())
        if channels is None:
            raise Refusal(401, "unauthorized", "unknown write key")
        return channels

    async def _handle_batch(self, body: bytes, channels: tuple[str, ...], path: str) -> Reply:
        """A batch whose write key came in the header."""
        parsed = parse_body(body, single=False)
        if not isinstance(parsed, dict):
            raise Refusal(400, "invalid_message", "the body must be a JSON object")
        now = self.clock()
        return await self._batch(parsed, _Request(channels[0], now, iso_ms(now), channels), path)

    async def _batch(self, body: dict[str, Any], req: _Request, path: str) -> Reply:
        messages = body.get("batch")
        if not isinstance(messages, list):
            raise Refusal(400, "invalid_batch", "the body needs a 'batch' list of messages")
        if len(messages) > MAX_BATCH_MESSAGES:
            raise Refusal(
                400, "too_many_messages", f"{len(messages)} messages; a batch holds at most {MAX_BATCH_MESSAGES}"
            )
        for name in ("context", "integrations"):
            shared = body.get(name)
            if shared is not None and not isinstance(shared, dict):
                raise Refusal(400, "invalid_batch", f"the batch's '{name}' must be an object")
        req.context, req.integrations, req.sent_at = body.get("context"), body.get("integrations"), body.get("sentAt")
        out, rejected = self._prepare(messages, req, dead_letters=path)
        await self._publish(out, req.received_ms)
        metrics.COLLECTOR_ACCEPTED.inc(len(messages) - len(rejected) - req.suppressed)
        for refused in rejected:
            metrics.COLLECTOR_REJECTED.labels(refused.reason).inc()
        if rejected:
            first = rejected[0]
            log.warning(
                "collector: %d of %d batch messages dead-lettered to %s (first: #%d %s: %s)",
                len(rejected),
                len(messages),
                self.settings.topic_deadletter,
                first.index,
                first.reason,
                first.detail,
            )
        answer = orjson.dumps(
            {
                "success": True,
                "accepted": len(messages) - len(rejected),
                "rejected": [{"index": r.index, "reason": r.reason, "detail": r.detail} for r in rejected],
            }
        )
        return Reply(200, answer, _headers(answer))

    def _prepare(
        self, messages: list[Any], req: _Request, dead_letters: str | None = None
    ) -> tuple[list[ToPublish], list[Rejected]]:
        """Enrich, serialise and validate each message: records to publish, and the refusals (as
        dead letters too when ``dead_letters`` names the route they came through)."""
        out: list[ToPublish] = []
        rejected: list[Rejected] = []
        topics = self._topics
        privacy = self.privacy
        for index, msg in enumerate(messages):
            channel = req.channel
            key: bytes | None = None
            value: bytes | None = None
            try:
                if not isinstance(msg, dict):
                    raise InvalidMessage("invalid_message", "a message must be a JSON object")
                ident = msg.get("userId") or msg.get("anonymousId")
                key = ident.encode() if isinstance(ident, str) else None
                enrich(msg, req)
                context = msg.get("context")
                if isinstance(context, dict) and (wanted := context.get("channel")) in CHANNELS:
                    channel = wanted
                    if wanted not in req.allowed:
                        raise InvalidMessage(
                            CHANNEL_NOT_ALLOWED,
                            f"context.channel is {wanted!r}; this write key may send to {', '.join(req.allowed)} only",
                        )
                value = orjson.dumps(msg)
                event = decode(value, channel, req.received_ms)
                if privacy.entries and (decision := privacy.decide(event, req.received_ms)) is not None:
                    req.suppressed += 1  # answered as accepted, published nowhere
                    metrics.suppressed("collector", topics[channel], decision)
                    continue
            except (InvalidMessage, orjson.JSONEncodeError) as error:
                exc = error if isinstance(error, InvalidMessage) else _unencodable(error)
                rejected.append(Rejected(index, exc.reason, exc.detail))
                if dead_letters is not None and not self._restricted(msg, topics[channel], req.received_ms):
                    headers = deadletter_headers(exc.reason, exc.detail, topics[channel], -1, -1)
                    headers.append(("scorestream.source.http", f"{dead_letters}[{index}]".encode()))
                    raw = value if value is not None else _any_json(msg, index)
                    out.append(ToPublish(self.settings.topic_deadletter, key, raw, headers))
                continue
            out.append(ToPublish(topics[channel], key, value))
        return out, rejected

    async def _privacy_read(self) -> None:
        """Wait (a little) for the privacy list to be read to its end: a process that starts must
        not publish what is already suppressed. 503 beyond: Segment's libraries retry."""
        assert self.privacy_ready is not None
        try:
            async with asyncio.timeout(PRIVACY_WAIT_S):
                await self.privacy_ready.wait()
        except TimeoutError:
            raise Refusal(
                503, "unavailable", "the privacy list is not read yet; retry shortly", UNAVAILABLE_RETRY_AFTER_S
            ) from None

    def _restricted(self, msg: Any, topic: str, received_ms: int) -> bool:
        """Whether a refused message shows an identifier the privacy list restricts (then it is
        not dead-lettered: its content is not kept); counted."""
        if not self.privacy.entries or not isinstance(msg, dict):
            return False
        decision = self.privacy.decide_subjects(message_subjects(msg), received_ms, received_ms)
        if decision is None:
            return False
        metrics.suppressed("collector", topic, decision)
        return True

    async def _keep_unreadable(self, body: bytes, refusal: Refusal, channel: str, path: str) -> None:
        """A batch refused whole (400: its body cannot be read as JSON, a message in it cannot be
        written back, it is not a batch) is, when its write key came in the header, kept on the
        dead-letter topic as it arrived with the reason: the valid messages beside the hostile one
        are not lost to an SDK that does not retry a 400."""
        now = self.clock()
        if self.privacy.entries:  # not kept if it shows a restricted person's id anywhere
            decision = self.privacy.decide_subjects(raw_subjects(body), now, now)
            if decision is not None:
                metrics.suppressed("collector", self._topics[channel], decision)
                return
        headers = deadletter_headers(refusal.code, refusal.message, self._topics[channel], -1, -1)
        headers.append(("scorestream.source.http", path.encode()))
        await self._publish([ToPublish(self.settings.topic_deadletter, None, body, headers)], now)
        log.warning(
            "collector: an unreadable batch body on %s (%d bytes) dead-lettered: %s", path, len(body), refusal.code
        )

    def _channels_of(self, given: bytes) -> tuple[str, ...] | None:
        """The channels of a write key (its default first), or None; every configured key is
        compared, in constant time."""
        found = None
        for key, channels in self._keys:
            if hmac.compare_digest(given, key):
                found = channels
        return found

    def _busy(self) -> Refusal:
        return Refusal(
            429,
            "too_many_requests",
            f"{self.in_flight} messages are waiting for Kafka's acknowledgement; retry shortly",
            BUSY_RETRY_AFTER_S,
        )

    async def _publish(self, records: list[ToPublish], timestamp_ms: int) -> None:
        """Send every record and wait until Kafka acknowledged all of them (``acks=all``).

        The in-flight count is taken before sending and each record leaves it when its
        acknowledgement (or failure) arrives, also after this request gave up waiting. A request
        is admitted while the count plus its records stays within the limit, or when nothing is
        in flight (so no request is too large to ever pass)."""
        n = len(records)
        if not n:
            return
        if self.in_flight and self.in_flight + n > self.settings.collector_max_in_flight:
            raise self._busy()
        if not self.publisher.ready:
            raise Refusal(503, "unavailable", "Kafka is not reachable yet; retry shortly", UNAVAILABLE_RETRY_AFTER_S)
        self.in_flight += n
        metrics.COLLECTOR_IN_FLIGHT.set(self.in_flight)
        unsent = n
        acks = _Acks(self, n, asyncio.get_running_loop().create_future())
        try:
            async with asyncio.timeout(self.send_timeout_s):
                for record in records:
                    future = await self.publisher.send(
                        record.topic, record.key, record.value, timestamp_ms, record.headers
                    )
                    unsent -= 1
                    future.add_done_callback(acks.settled)
                await acks.done
        except TimeoutError:
            log.warning("collector: Kafka did not acknowledge %d records within %.0f s", n, self.send_timeout_s)
            raise Refusal(
                503, "timeout", "Kafka did not acknowledge in time; retry", UNAVAILABLE_RETRY_AFTER_S
            ) from None
        except KafkaError as exc:
            log.warning("collector: cannot send to Kafka: %r", exc)
            raise Refusal(
                503,
                "unavailable",
                f"Kafka refused the records ({type(exc).__name__}); retry",
                UNAVAILABLE_RETRY_AFTER_S,
            ) from None
        finally:
            self.in_flight -= unsent
            metrics.COLLECTOR_IN_FLIGHT.set(self.in_flight)
        if acks.failure is not None:
            log.warning("collector: Kafka did not take a record: %r", acks.failure)
            raise Refusal(
                503,
                "unavailable",
                f"Kafka refused a record ({type(acks.failure).__name__}); retry",
                UNAVAILABLE_RETRY_AFTER_S,
            )


class _Acks:
    """One request's acknowledgements: ``done`` resolves once every record is acknowledged, or
    at the first failure (one waiter a request, cheaper than ``asyncio.wait`` over them all).
    Each record leaves the collector's in-flight count when it settles, whoever still waits."""

    __slots__ = ("collector", "done", "failure", "remaining")

    def __init__(self, collector: Collector, remaining: int, done: asyncio.Future[None]) -> None:
        self.collector, self.remaining, self.done = collector, remaining, done
        self.failure: BaseException | None = None

    def settled(self, future: asyncio.Future[Any]) -> None:
        self.collector.in_flight -= 1
        self.remaining -= 1
        failure = asyncio.CancelledError() if future.cancelled() else future.exception()
        if failure is not None and self.failure is None:
            self.failure = failure
        if (self.remaining == 0 or failure is not None) and not self.done.done():
            self.done.set_result(None)


def _preflight(headers: Iterable[tuple[bytes, bytes]]) -> Reply:
    """A CORS preflight's answer: the SDKs' headers, and those the browser asks to send when they
    are a plain list of header names (the collector reads only its own, so another is harmless).
    The SDKs' list is always there, so the browser's cached preflight covers their retries too."""
    requested = next((v for k, v in headers if k == b"access-control-request-headers"), b"").strip()
    good = requested and len(requested) <= _MAX_HEADER_LIST_BYTES and _HEADER_LIST.fullmatch(requested)
    allowed = _ALLOWED_HEADERS + b", " + requested if good else _ALLOWED_HEADERS
    return Reply(204, b"", [*_PREFLIGHT_HEADERS, (b"access-control-allow-headers", allowed)])


async def _discard(headers: Iterable[tuple[bytes, bytes]], receive: Receive) -> Reply:
    """``POST /v1/m``: analytics.js' telemetry (``{"series": [...]}``, no write key), read with a
    message's cap and dropped, so that pages loading the SDK log no errors."""
    encoding = length = None
    for name, value in headers:
        if name == b"content-encoding":
            encoding = value
        elif name == b"content-length":
            length = value
    try:
        await _read(receive, length, encoding, MAX_MESSAGE_BYTES)
    except Refusal as refusal:
        return refusal.reply()
    return Reply(200, _OK, _headers(_OK))


def parse_body(body: bytes, single: bool) -> Any:
    """The request body, parsed under the contract's JSON rules (the worker's decision).

    A single-message body is the message: :func:`schemas.events.check_json` refuses it with the
    reason the worker would give (400). A batch body is parsed whole (orjson: at most 1,024
    levels, or 400 ``too_deep``); each message then meets the rules when it is validated and is
    dead-lettered alone. orjson reads an integer past 64 bits as a float: a batch that may hold
    one is read again with msgspec, which keeps it exact, so that its message is refused rather
    than altered."""
    if single:
        try:
            check_json(body)
        except InvalidMessage as exc:
            raise Refusal(400, exc.reason, exc.detail) from None
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        text = str(exc)
        reason = (
            "too_deep" if "depth limit" in text else "number_out_of_range" if "infinity" in text else "invalid_json"
        )
        raise Refusal(400, reason, f"the body is not JSON: {exc}") from None
    if not single and may_hold_long_integers(body):
        try:
            parsed = msgspec.json.decode(body)
        except RecursionError:  # msgspec's limit (about 1,000 levels) is below orjson's
            raise Refusal(400, "too_deep", "the body nests too deep to be read") from None
        except (msgspec.DecodeError, UnicodeDecodeError) as exc:
            raise Refusal(400, "invalid_json", f"the body is not JSON: {exc}") from None
    return parsed


def _unencodable(exc: orjson.JSONEncodeError) -> InvalidMessage:
    """A parsed batch message orjson cannot write back: an integer past 64 bits, or more than 255
    levels (both beyond the contract, which would refuse the message for the same reason)."""
    text = str(exc)
    if "Integer" in text:
        return InvalidMessage("number_out_of_range", f"an integer is outside the signed 64-bit range ({text})")
    if "Recursion" in text:
        return InvalidMessage("too_deep", f"objects and arrays nest deeper than {MAX_DEPTH} levels ({text})")
    return InvalidMessage("invalid_message", text)


def _any_json(msg: Any, index: int) -> bytes:
    """A refused batch message as JSON for its dead letter, whatever it holds."""
    try:
        return orjson.dumps(msg)
    except orjson.JSONEncodeError:
        pass
    try:
        return msgspec.json.encode(msg)  # exact big integers; about 1,000 levels
    except RecursionError:
        raise Refusal(400, "too_deep", f"message {index} nests too deep to be dead-lettered") from None


def _basic_user(header: bytes) -> bytes | None:
    """The user name of a Basic ``Authorization`` header (Segment accepts ``key`` without the
    colon too); None for another scheme, such as Segment's OAuth ``Bearer``, whose requests carry
    the write key in the body."""
    scheme, _, token = header.strip().partition(b" ")
    if scheme.lower() != b"basic":
        return None
    try:
        decoded = base64.b64decode(token.strip(), validate=True)
    except (binascii.Error, ValueError):
        return b""
    return decoded.partition(b":")[0]


async def _read(receive: Receive, length: bytes | None, encoding: bytes | None, limit: int) -> bytes:
    """The body, refused beyond ``limit`` bytes before reading it all, and inflated with the same
    cap on what it inflates to."""
    gzipped = False
    if encoding is not None:
        name = encoding.strip().lower()
        if name in (b"gzip", b"x-gzip"):
            gzipped = True
        elif name not in (b"", b"identity"):
            raise Refusal(415, "unsupported_encoding", "Content-Encoding must be gzip or none")
    cap = limit + 1024 if gzipped else limit  # gzip's own framing on an incompressible body
    if length is not None and length.isdigit() and int(length) > cap:
        raise Refusal(400, "too_large", f"{int(length)} bytes; the limit is {limit}")
    parts: list[bytes] = []
    size = 0
    more = True
    while more:  # ASGI messages, not an async generator: those cost a weakref registration each
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body", b"")
        more = message.get("more_body", False)
        size += len(chunk)
        if size > cap:
            raise Refusal(400, "too_large", f"over {limit} bytes")
        parts.append(chunk)
    body = parts[0] if len(parts) == 1 else b"".join(parts)
    return _gunzip(body, limit) if gzipped else body


def _gunzip(body: bytes, limit: int) -> bytes:
    """One gzip member inflated to at most ``limit`` bytes (a bomb stops there)."""
    inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise Refusal(400, "invalid_gzip", f"the body is not valid gzip: {exc}") from None
    if len(out) > limit or inflater.unconsumed_tail:
        raise Refusal(400, "too_large", f"inflates to over {limit} bytes")
    if not inflater.eof or inflater.unused_data:
        raise Refusal(400, "invalid_gzip", "the body must be exactly one complete gzip stream")
    return out


def collector_for(
    settings: Settings, publisher: Publisher | None, clock: Clock, privacy: PrivacyList | None = None
) -> Collector:
    """The collector of ``settings``, publishing through ``publisher`` (default: Kafka), dropping
    what ``privacy`` restricts (default: an empty list; the API gives its regulation service's)."""
    collector = Collector(settings, publisher or KafkaPublisher(KafkaConnection.of(settings)), clock)
    if privacy is not None:
        collector.privacy = privacy
    return collector
