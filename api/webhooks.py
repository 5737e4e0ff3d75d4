"""``/v1/webhooks``: subscriptions, their signing secrets, test sends, the delivery log, retries.

The API only keeps books; the dispatcher (``dispatcher/service.py``) sends. Subscriptions live on
the compacted ``<app>.webhooks`` topic (read back into memory by every API process, see
:mod:`api.webhook_store`); test sends and retries are commands on ``<app>.webhook-commands`` for
the dispatcher owning the partition; the delivery log is read from ``<app>.webhook-deliveries``.

Rules kept here:

- A signing secret is shown once: in the answer to the create and to a rotation. No other answer
  and no log line carries one (nor a URL, which may carry a token: logs name the host).
- A URL is refused (422 ``invalid_url``) unless :func:`schemas.webhooks.url_refusal` accepts it
  and, unless private addresses are allowed, every address its host resolves to is public (the
  dispatcher checks again at every connection: DNS answers change).
- A change is read, applied and written under one lock per process; when the store reports that
  the write replaced a record other than the one the change was applied to (another API process
  or the dispatcher wrote in between), the change is applied again on top of that record and
  written again, so neither write is lost. A subscription deleted in between stays deleted.
- Every write answers once this process reads it back, so a ``GET`` right after sees it.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import socket
import zlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Annotated, Any
from urllib.parse import urlsplit

import msgspec
from fastapi import APIRouter, FastAPI, Query
from fastapi.responses import Response

from api.webhook_store import (
    CommandSender,
    DeliveryLog,
    KafkaCommands,
    KafkaSubscriptionStore,
    LazyProducer,
    NotVisible,
    SubscriptionStore,
    WriteFailed,
    Written,
)
from schemas.api import ErrorBody
from schemas.settings import Settings
from schemas.times import at_of as _at
from schemas.times import ms_of as _ms
from schemas.webhooks import (
    Accepted,
    CommandRecord,
    DeliveryList,
    DeliveryOut,
    DeliveryRecord,
    DeliveryStatus,
    RotateIn,
    RotateOut,
    SigningSecret,
    SubscriptionRecord,
    WebhookCreated,
    WebhookIn,
    WebhookList,
    WebhookOut,
    WebhookPatch,
    delivery_out,
    url_refusal,
    webhook_out,
)
from scorestream import webhooks as core

log = logging.getLogger(__name__)
Resolve = Callable[[str, int], Awaitable[list[str]]]
ErrorFactory = Callable[[int, str, str], Exception]
RESOLVE_TIMEOUT_S = 5.0
MAX_SIGNING_SECRETS = 5  # the new one and up to four still overlapping after rapid rotations
MAX_MERGES = 5  # a change applied again on top of concurrent writes at most this often
RETRY_FAILED_DEFAULT = timedelta(hours=24)
MANUAL = "disabled over the API"
NOT_NULL = ("url", "events", "description", "enabled")  # PATCH fields that cannot be cleared


async def resolve_host(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to (the system resolver, off the event loop)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({str(info[4][0]) for info in infos})


@dataclass
class WebhookBackend:
    """What the webhook routes read and write; Kafka-backed by :meth:`from_settings`."""

    store: SubscriptionStore
    deliveries: DeliveryLog
    commands: CommandSender
    resolve: Resolve = resolve_host
    producer: LazyProducer | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @classmethod
    def from_settings(cls, settings: Settings) -> WebhookBackend:
        producer = LazyProducer(settings.kafka_bootstrap)
        return cls(
            store=KafkaSubscriptionStore(settings.kafka_bootstrap, settings.webhooks_topic, producer),
            deliveries=DeliveryLog(settings.kafka_bootstrap, settings.deliveries_topic),
            commands=KafkaCommands(settings.commands_topic, producer),
            producer=producer,
        )

    async def start(self) -> None:
        await self.store.start()
        await self.deliveries.start()

    async def stop(self) -> None:
        await self.deliveries.stop()
        await self.store.stop()
        if self.producer is not None:
            await self.producer.stop()


def new_record(sub_id: str, body: WebhookIn, secret: str, now_ms: int) -> SubscriptionRecord:
    return SubscriptionRecord(
        id=sub_id,
        url=body.url,
        events=body.events,
        secrets=[SigningSecret(secret=secret, created_ms=now_ms)],
        created_ms=now_ms,
        updated_ms=now_ms,
        description=body.description,
        enabled=body.enabled,
        stages=body.stages,
        segments=body.segments,
        models=body.models,
        disabled_ms=None if body.enabled else now_ms,
        disabled_reason=None if body.enabled else MANUAL,
    )


def patched(record: SubscriptionRecord, patch: WebhookPatch, now_ms: int) -> SubscriptionRecord:
    """``record`` with the fields ``patch`` sets (``null`` clears a filter), revision + 1; the same
    record when nothing changes. ``enabled: true`` re-enables a disabled subscription and forgets
    its failures; ``enabled: false`` disables it by hand."""
    given = patch.model_fields_set
    changes: dict[str, Any] = {
        name: getattr(patch, name)
        for name in ("url", "events", "stages", "segments", "models", "description")
        if name in given
    }
    if "enabled" in given and patch.enabled and not (record.enabled and record.disabled_ms is None):
        changes.update(enabled=True, disabled_ms=None, disabled_reason=None, failing_since_ms=None)
    elif "enabled" in given and patch.enabled is False and record.enabled:
        changes.update(enabled=False, disabled_ms=now_ms, disabled_reason=MANUAL)
    if msgspec.structs.replace(record, **changes) == record:
        return record
    return msgspec.structs.replace(record, **changes, revision=record.revision + 1, updated_ms=now_ms)


def rotated(record: SubscriptionRecord, secret: str, now_ms: int, overlap_ms: int) -> SubscriptionRecord:
    """``record`` signing with ``secret`` first: the current secret keeps signing until
    ``now_ms + overlap_ms``, secrets already expired are dropped, at most
    :data:`MAX_SIGNING_SECRETS` are kept (newest first)."""
    older = [
        SigningSecret(s.secret, s.created_ms, now_ms + overlap_ms) if s.expires_ms is None else s
        for s in record.secrets
    ]
    keep = [SigningSecret(secret=secret, created_ms=now_ms), *(s for s in older if (s.expires_ms or 0) > now_ms)]
    return msgspec.structs.replace(
        record, secrets=keep[:MAX_SIGNING_SECRETS], revision=record.revision + 1, updated_ms=now_ms
    )


def command_partition(sub_id: str, partitions: int) -> int:
    """The commands partition of a subscription's test sends: stable across processes and runs
    (CRC-32, not Python's per-process string hash)."""
    return zlib.crc32(sub_id.encode()) % partitions


def _request_id() -> str:
    return "req_" + secrets.token_hex(12)


def mount_webhooks(
    app: FastAPI,
    backend: WebhookBackend,
    settings: Settings,
    dependencies: Sequence[Any],
    clock: Callable[[], int],
    error: ErrorFactory,
) -> None:
    """Add the ``/v1/webhooks`` routes to ``app`` behind ``dependencies`` (the API keys); ``error``
    makes the exception the app answers as ``{"error": {"code", "message"}}``."""
    store, deliveries, commands = backend.store, backend.deliveries, backend.commands
    allow_private = settings.webhook_allow_private
    router = APIRouter(
        prefix="/v1/webhooks",
        tags=["webhooks"],
        dependencies=list(dependencies),
        responses={code: {"model": ErrorBody} for code in (404, 422, 503)},
    )

    def subscription(sub_id: str) -> SubscriptionRecord:
        if not store.caught_up.is_set():
            raise error(503, "not_ready", "the API is still loading webhook subscriptions; retry shortly")
        record = store.get(sub_id)
        if record is None:
            raise error(404, "not_found", f"no webhook subscription {sub_id!r}")
        return record

    def delivery_log_ready() -> None:
        if not deliveries.caught_up.is_set():
            raise error(503, "not_ready", "the API is still loading the delivery log; retry shortly")

    async def check_url(url: str) -> None:
        reason = url_refusal(url, allow_private)
        if reason is None and not allow_private:
            parts = urlsplit(url)
            host = parts.hostname or ""
            try:
                async with asyncio.timeout(RESOLVE_TIMEOUT_S):
                    addresses = await backend.resolve(host, parts.port or (443 if parts.scheme == "https" else 80))
            except (OSError, UnicodeError, TimeoutError) as exc:
                reason = f"cannot resolve {host}: {exc or type(exc).__name__}"
            else:
                refusals = [r for r in map(core.address_refusal, addresses) if r is not None]
                if not addresses:
                    reason = f"{host} resolves to no address"
                elif refusals:
                    reason = f"{host} resolves to a non-public address: {refusals[0]}"
        if reason is not None:
            raise error(422, "invalid_url", reason)

    async def write(sub_id: str, record: SubscriptionRecord | None, shows_secret: bool = False) -> Written:
        """Write and read back; what the write replaced. A write whose answer shows a new secret
        succeeds once the broker has it, read back or not (a 503 would lose a secret in force)."""
        try:
            return await store.write(sub_id, record)
        except WriteFailed as exc:
            raise error(503, "unavailable", f"could not write to Kafka ({exc}); the change may not be saved") from exc
        except NotVisible as exc:
            if shows_secret:
                log.warning("webhook %s: %s; answering anyway (the answer shows its new secret)", sub_id, exc)
                return Written(None, known=False)
            raise error(503, "unavailable", f"the change to {sub_id} is saved but not visible yet ({exc})") from exc

    async def update(
        sub_id: str, change: Callable[[SubscriptionRecord], SubscriptionRecord], shows_secret: bool = False
    ) -> SubscriptionRecord:
        async with backend.lock:
            base = subscription(sub_id)
            for _ in range(MAX_MERGES):
                new = change(base)
                if new == base:
                    return base
                written = await write(sub_id, new, shows_secret)
                replaced = written.previous
                if not written.known or replaced == base:
                    return new
                if replaced is None:
                    log.info("webhook %s was deleted while being changed: it stays deleted", sub_id)
                    await write(sub_id, None)
                    raise error(404, "not_found", f"webhook subscription {sub_id!r} was deleted meanwhile")
                log.info(
                    "webhook %s was changed meanwhile (revision %d, not %d): applying the change on top",
                    sub_id,
                    replaced.revision,
                    base.revision,
                )
                base = replaced
            return new

    def owned_delivery(sub_id: str, delivery: str) -> DeliveryRecord:
        subscription(sub_id)
        delivery_log_ready()
        record = deliveries.get(delivery)
        if record is None or record.subscription_id != sub_id:
            raise error(404, "not_found", f"no delivery {delivery!r} of webhook {sub_id!r} in the delivery log")
        return record

    async def partitions() -> int:
        try:
            return await commands.partitions()
        except WriteFailed as exc:
            raise error(503, "unavailable", f"cannot reach Kafka ({exc})") from exc

    async def send(partition: int, command: CommandRecord) -> None:
        try:
            await commands.send(partition, command)
        except WriteFailed as exc:
            raise error(503, "unavailable", f"could not queue the command ({exc})") from exc

    @router.post("", response_model=WebhookCreated, status_code=201)
    async def create_webhook(body: WebhookIn) -> WebhookCreated:
        """Subscribe a URL to trigger types. The answer carries the signing secret, shown only here."""
        if not store.caught_up.is_set():
            raise error(503, "not_ready", "the API is still loading webhook subscriptions; retry shortly")
        await check_url(body.url)
        now = clock()
        sub_id = "wh_" + secrets.token_hex(12)
        secret = core.new_secret(secrets.token_bytes(32))
        record = new_record(sub_id, body, secret, now)
        async with backend.lock:
            await write(sub_id, record, shows_secret=True)
        log.info("webhook %s created: host %s, events %s", sub_id, urlsplit(body.url).hostname, record.events)
        return WebhookCreated(**webhook_out(record).model_dump(), secret=secret)

    @router.get("", response_model=WebhookList)
    async def list_webhooks() -> WebhookList:
        """Every subscription, oldest first (no secrets)."""
        if not store.caught_up.is_set():
            raise error(503, "not_ready", "the API is still loading webhook subscriptions; retry shortly")
        records = sorted(store.all(), key=lambda r: (r.created_ms, r.id))
        return WebhookList(data=[webhook_out(r) for r in records])

    @router.get("/{webhook_id}", response_model=WebhookOut)
    async def get_webhook(webhook_id: str) -> WebhookOut:
        """One subscription (no secrets)."""
        return webhook_out(subscription(webhook_id))

    @router.patch("/{webhook_id}", response_model=WebhookOut)
    async def patch_webhook(webhook_id: str, body: WebhookPatch) -> WebhookOut:
        """Change the fields given; `enabled: true` re-enables a disabled subscription."""
        nulls = [name for name in NOT_NULL if name in body.model_fields_set and getattr(body, name) is None]
        if nulls:
            raise error(422, "invalid_request", f"body.{nulls[0]}: cannot be null")
        subscription(webhook_id)
        if body.url is not None:
            await check_url(body.url)
        record = await update(webhook_id, lambda base: patched(base, body, clock()))
        log.info("webhook %s updated (%s), revision %d", webhook_id, sorted(body.model_fields_set), record.revision)
        return webhook_out(record)

    @router.delete("/{webhook_id}", status_code=204, response_class=Response)
    async def delete_webhook(webhook_id: str) -> Response:
        """Delete a subscription: nothing more is sent to it (pending deliveries fail)."""
        async with backend.lock:
            subscription(webhook_id)
            await write(webhook_id, None)
        log.info("webhook %s deleted", webhook_id)
        return Response(status_code=204)

    @router.post("/{webhook_id}/rotate-secret", response_model=RotateOut)
    async def rotate_secret(webhook_id: str, body: RotateIn | None = None) -> RotateOut:
        """A new signing secret, shown once; the current one keeps signing beside it for
        ``overlap_s`` (default SCORESTREAM_WEBHOOK_SECRET_OVERLAP_S)."""
        overlap_s = settings.webhook_secret_overlap_s if body is None or body.overlap_s is None else body.overlap_s
        secret = core.new_secret(secrets.token_bytes(32))
        now = clock()
        await update(webhook_id, lambda base: rotated(base, secret, now, overlap_s * 1000), shows_secret=True)
        log.info("webhook %s: signing secret rotated (overlap %d s)", webhook_id, overlap_s)
        return RotateOut(secret=secret, previous_expires_at=_at(now + overlap_s * 1000))

    @router.post("/{webhook_id}/test", response_model=Accepted, status_code=202)
    async def send_test(webhook_id: str) -> Accepted:
        """Queue a `webhook.test` delivery; watch it in the delivery log under `delivery_id`."""
        subscription(webhook_id)
        request_id = _request_id()
        partition = command_partition(webhook_id, await partitions())
        command = CommandRecord(op="test", subscription_id=webhook_id, request_id=request_id, requested_ms=clock())
        await send(partition, command)
        return Accepted(request_id=request_id, delivery_id=core.delivery_id("test_" + request_id, webhook_id))

    @router.get("/{webhook_id}/deliveries", response_model=DeliveryList)
    async def list_deliveries(
        webhook_id: str,
        status: DeliveryStatus | None = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        before: Annotated[
            str | None, Query(description="A delivery id: the page starts after it (the last of the previous page).")
        ] = None,
    ) -> DeliveryList:
        """A subscription's latest deliveries, newest first (by creation); this process keeps the
        latest 1000 of each subscription."""
        subscription(webhook_id)
        delivery_log_ready()
        cursor = None
        if before is not None:
            cursor = deliveries.get(before)
            if cursor is None or cursor.subscription_id != webhook_id:
                raise error(422, "invalid_request", f"before: no delivery {before!r} of this webhook in the log")
        return DeliveryList(data=[delivery_out(r) for r in deliveries.page(webhook_id, status, limit, cursor)])

    @router.get("/{webhook_id}/deliveries/{delivery_id}", response_model=DeliveryOut)
    async def get_delivery(webhook_id: str, delivery_id: str) -> DeliveryOut:
        """One delivery with its latest attempts."""
        return delivery_out(owned_delivery(webhook_id, delivery_id))

    @router.post(
        "/{webhook_id}/deliveries/{delivery_id}/retry",
        response_model=Accepted,
        status_code=202,
        responses={409: {"model": ErrorBody}},
    )
    async def retry_delivery(webhook_id: str, delivery_id: str) -> Accepted:
        """Send a delivery again now (the same `webhook-id` and body), whatever its status."""
        record = owned_delivery(webhook_id, delivery_id)
        if record.partition >= await partitions():
            raise error(
                409, "conflict", f"delivery {delivery_id} is on partition {record.partition}, beyond the commands topic"
            )
        request_id = _request_id()
        command = CommandRecord(
            op="retry",
            subscription_id=webhook_id,
            request_id=request_id,
            requested_ms=clock(),
            delivery_id=delivery_id,
            since_ms=record.created_ms,
        )
        await send(record.partition, command)
        return Accepted(request_id=request_id, delivery_id=delivery_id)

    @router.post("/{webhook_id}/deliveries:retry-failed", response_model=Accepted, status_code=202)
    async def retry_failed(
        webhook_id: str,
        since: Annotated[
            datetime | None,
            Query(description="Retry the failed deliveries created since then (ISO 8601; default: 24 hours ago)."),
        ] = None,
    ) -> Accepted:
        """Send every failed delivery created since ``since`` again (each dispatcher its own)."""
        subscription(webhook_id)
        now = clock()
        since_ms = now - int(RETRY_FAILED_DEFAULT.total_seconds() * 1000) if since is None else _ms(since)
        if since_ms > now:
            raise error(422, "invalid_request", "since: must not be in the future")
        request_id = _request_id()
        for partition in range(await partitions()):
            await send(
                partition,
                CommandRecord(
                    op="retry_failed",
                    subscription_id=webhook_id,
                    request_id=request_id,
                    requested_ms=now,
                    since_ms=since_ms,
                ),
            )
        log.info(
            "webhook %s: failed deliveries since %d queued for retry (request %s)", webhook_id, since_ms, request_id
        )
        return Accepted(request_id=request_id, delivery_id=None)

    app.include_router(router)
