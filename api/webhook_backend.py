"""What the ``/v1/webhooks`` routes (:mod:`api.routers.webhooks`) read and write: subscriptions,
their signing secrets, test sends, the delivery log, retries.

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
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import msgspec

from api.errors import ApiError
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
from kafka_io.clients import KafkaConnection
from kafka_io.partitioner import partition_for
from schemas.settings import Settings
from schemas.webhooks import (
    Accepted,
    CommandRecord,
    DeliveryRecord,
    SigningSecret,
    SubscriptionRecord,
    WebhookIn,
    WebhookPatch,
    url_refusal,
)
from scorestream import delivery as core

log = logging.getLogger(__name__)
Resolve = Callable[[str, int], Awaitable[list[str]]]
RESOLVE_TIMEOUT_S = 5.0
MAX_SIGNING_SECRETS = 5  # the new one and up to four still overlapping after rapid rotations
MAX_MERGES = 5  # a change applied again on top of concurrent writes at most this often
MANUAL = "disabled over the API"
RETRY_FAILED_DEFAULT_MS = 24 * 3_600_000  # "retry every failed delivery" goes this far back by default


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
        kafka = KafkaConnection.of(settings)
        producer = LazyProducer(kafka)
        return cls(
            store=KafkaSubscriptionStore(kafka, settings.webhooks_topic, producer),
            deliveries=DeliveryLog(kafka, settings.deliveries_topic),
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

    # -- what the routes do with it (ApiError when they cannot) ----------------------------------
    def subscription(self, sub_id: str) -> SubscriptionRecord:
        """The subscription ``sub_id``: 503 until the subscriptions are read, 404 if there is none."""
        self.subscriptions_ready()
        record = self.store.get(sub_id)
        if record is None:
            raise ApiError(404, "not_found", f"no webhook subscription {sub_id!r}")
        return record

    def subscriptions_ready(self) -> None:
        if not self.store.caught_up.is_set():
            raise ApiError(503, "not_ready", "the API is still loading webhook subscriptions; retry shortly")

    def delivery_log_ready(self) -> None:
        if not self.deliveries.caught_up.is_set():
            raise ApiError(503, "not_ready", "the API is still loading the delivery log; retry shortly")

    async def check_url(self, url: str, allow_private: bool) -> None:
        """422 ``invalid_url`` unless :func:`schemas.webhooks.url_refusal` accepts ``url`` and (unless
        private addresses are allowed) every address its host resolves to is public."""
        reason = url_refusal(url, allow_private)
        if reason is None and not allow_private:
            parts = urlsplit(url)
            host = parts.hostname or ""
            try:
                async with asyncio.timeout(RESOLVE_TIMEOUT_S):
                    addresses = await self.resolve(host, parts.port or (443 if parts.scheme == "https" else 80))
            except (OSError, UnicodeError, TimeoutError) as exc:
                reason = f"cannot resolve {host}: {exc or type(exc).__name__}"
            else:
                refusals = [r for r in map(core.address_refusal, addresses) if r is not None]
                if not addresses:
                    reason = f"{host} resolves to no address"
                elif refusals:
                    reason = f"{host} resolves to a non-public address: {refusals[0]}"
        if reason is not None:
            raise ApiError(422, "invalid_url", reason)

    async def write(self, sub_id: str, record: SubscriptionRecord | None, shows_secret: bool = False) -> Written:
        """Write and read back; what the write replaced. A write whose answer shows a new secret
        succeeds once the broker has it, read back or not (a 503 would lose a secret in force)."""
        try:
            return await self.store.write(sub_id, record)
        except WriteFailed as exc:
            raise ApiError(
                503, "unavailable", f"could not write to Kafka ({exc}); the change may not be saved"
            ) from exc
        except NotVisible as exc:
            if shows_secret:
                log.warning("webhook %s: %s; answering anyway (the answer shows its new secret)", sub_id, exc)
                return Written(None, known=False)
            raise ApiError(503, "unavailable", f"the change to {sub_id} is saved but not visible yet ({exc})") from exc

    async def update(
        self, sub_id: str, change: Callable[[SubscriptionRecord], SubscriptionRecord], shows_secret: bool = False
    ) -> SubscriptionRecord:
        """``change`` applied to the subscription and written, under the lock; applied again on top
        of a record someone else wrote in between (at most :data:`MAX_MERGES` times)."""
        async with self.lock:
            base = self.subscription(sub_id)
            for _ in range(MAX_MERGES):
                new = change(base)
                if new == base:
                    return base
                written = await self.write(sub_id, new, shows_secret)
                replaced = written.previous
                if not written.known or replaced == base:
                    return new
                if replaced is None:
                    log.info("webhook %s was deleted while being changed: it stays deleted", sub_id)
                    await self.write(sub_id, None)
                    raise ApiError(404, "not_found", f"webhook subscription {sub_id!r} was deleted meanwhile")
                log.info(
                    "webhook %s was changed meanwhile (revision %d, not %d): applying the change on top",
                    sub_id,
                    replaced.revision,
                    base.revision,
                )
                base = replaced
            return new

    def owned_delivery(self, sub_id: str, delivery: str) -> DeliveryRecord:
        """The delivery ``delivery`` of subscription ``sub_id`` in the delivery log (else 404)."""
        self.subscription(sub_id)
        self.delivery_log_ready()
        record = self.deliveries.get(delivery)
        if record is None or record.subscription_id != sub_id:
            raise ApiError(404, "not_found", f"no delivery {delivery!r} of webhook {sub_id!r} in the delivery log")
        return record

    async def partitions(self) -> int:
        """The commands topic's partitions (503 when Kafka cannot say)."""
        try:
            return await self.commands.partitions()
        except WriteFailed as exc:
            raise ApiError(503, "unavailable", f"cannot reach Kafka ({exc})") from exc

    async def send(self, partition: int, command: CommandRecord) -> None:
        try:
            await self.commands.send(partition, command)
        except WriteFailed as exc:
            raise ApiError(503, "unavailable", f"could not queue the command ({exc})") from exc

    async def retry(self, sub_id: str, delivery: str, now_ms: int) -> Accepted:
        """Queue a delivery to be sent again now (the same ``webhook-id`` and body), whatever its
        status: a command to the dispatcher owning its partition (``POST .../{delivery_id}/retry``
        and the console's Retry button)."""
        record = self.owned_delivery(sub_id, delivery)
        if record.partition >= await self.partitions():
            raise ApiError(
                409, "conflict", f"delivery {delivery} is on partition {record.partition}, beyond the commands topic"
            )
        request = request_id()
        command = CommandRecord(
            op="retry",
            subscription_id=sub_id,
            request_id=request,
            requested_ms=now_ms,
            delivery_id=delivery,
            since_ms=record.created_ms,
        )
        await self.send(record.partition, command)
        return Accepted(request_id=request, delivery_id=delivery)

    async def retry_failed(self, sub_id: str, now_ms: int, since_ms: int | None = None) -> Accepted:
        """Queue every failed delivery of ``sub_id`` created since ``since_ms`` (default: 24 hours
        ago) to be sent again, each dispatcher its own (``POST .../deliveries:retry-failed`` and the
        console's "Retry all failed")."""
        self.subscription(sub_id)
        since_ms = now_ms - RETRY_FAILED_DEFAULT_MS if since_ms is None else since_ms
        if since_ms > now_ms:
            raise ApiError(422, "invalid_request", "since: must not be in the future")
        request = request_id()
        for partition in range(await self.partitions()):
            await self.send(
                partition,
                CommandRecord(
                    op="retry_failed",
                    subscription_id=sub_id,
                    request_id=request,
                    requested_ms=now_ms,
                    since_ms=since_ms,
                ),
            )
        log.info("webhook %s: failed deliveries since %d queued for retry (request %s)", sub_id, since_ms, request)
        return Accepted(request_id=request, delivery_id=None)


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
        groups=body.groups,
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
        for name in ("url", "events", "stages", "segments", "models", "groups", "description")
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
    return partition_for(sub_id.encode(), partitions)


def request_id() -> str:
    return "req_" + secrets.token_hex(12)
