"""``/v1/webhooks``: subscriptions, their signing secrets, test sends, the delivery log, retries.

The routes keep books through :class:`api.webhook_backend.WebhookBackend` (its docstring states the
rules: a secret shown once, URLs checked, concurrent changes merged, read-your-writes); the
dispatcher (``dispatcher/service.py``) sends.
"""

from __future__ import annotations

import logging
import secrets
from datetime import datetime
from typing import Annotated
from urllib.parse import urlsplit

from fastapi import APIRouter, Query
from fastapi.responses import Response

from api.bodies import LimitedRoute
from api.deps import ActiveModel, AdminScope, Clock, NamespacesDep, SettingsDep, Webhooks
from api.errors import ApiError
from api.namespaces import Namespaces
from api.webhook_backend import command_partition, new_record, patched, request_id, rotated
from schemas.api import Problem
from schemas.times import at_of as _at
from schemas.times import ms_of as _ms
from schemas.webhooks import (
    Accepted,
    CommandRecord,
    DeliveryList,
    DeliveryOut,
    DeliveryStatus,
    RotateIn,
    RotateOut,
    WebhookCreated,
    WebhookIn,
    WebhookList,
    WebhookOut,
    WebhookPatch,
    delivery_out,
    webhook_out,
)
from scorestream import Model
from scorestream import delivery as core

log = logging.getLogger(__name__)
NOT_NULL = ("url", "events", "description", "enabled")  # PATCH fields that cannot be cleared
router = APIRouter(
    route_class=LimitedRoute,
    prefix="/v1/webhooks",
    tags=["webhooks"],
    dependencies=AdminScope,
    responses={code: {"model": Problem} for code in (404, 413, 422, 503)},
)


def check_groups(groups: list[str] | None, active: Model, namespaces: Namespaces) -> None:
    """422 for a ``groups`` filter naming a score group no live model (the active one, a shadow) declares."""
    if not groups:
        return
    models = [active, *(readers.model for readers in namespaces.live())]
    known = sorted({g.id for model in models for g in model.groups})
    unknown = sorted(set(groups) - set(known))
    if unknown:
        listed = ", ".join(known) if known else "none (the models declare no engagement.groups)"
        raise ApiError(422, "invalid_request", f"body.groups: unknown score group(s) {unknown}; known groups: {listed}")


@router.post("", response_model=WebhookCreated, status_code=201)
async def create_webhook(
    body: WebhookIn,
    backend: Webhooks,
    settings: SettingsDep,
    clock: Clock,
    model: ActiveModel,
    namespaces: NamespacesDep,
) -> WebhookCreated:
    """Subscribe a URL to trigger types. The answer carries the signing secret, shown only here."""
    check_groups(body.groups, model, namespaces)
    backend.subscriptions_ready()
    await backend.check_url(body.url, settings.webhook_allow_private)
    now = clock()
    sub_id = "wh_" + secrets.token_hex(12)
    secret = core.new_secret(secrets.token_bytes(32))
    record = new_record(sub_id, body, secret, now)
    async with backend.lock:
        await backend.write(sub_id, record, shows_secret=True)
    log.info("webhook %s created: host %s, events %s", sub_id, urlsplit(body.url).hostname, record.events)
    return WebhookCreated(**webhook_out(record).model_dump(), secret=secret)


@router.get("", response_model=WebhookList)
async def list_webhooks(backend: Webhooks) -> WebhookList:
    """Every subscription, oldest first (no secrets)."""
    backend.subscriptions_ready()
    records = sorted(backend.store.all(), key=lambda r: (r.created_ms, r.id))
    return WebhookList(data=[webhook_out(r) for r in records])


@router.get("/{webhook_id}", response_model=WebhookOut)
async def get_webhook(webhook_id: str, backend: Webhooks) -> WebhookOut:
    """One subscription (no secrets)."""
    return webhook_out(backend.subscription(webhook_id))


@router.patch("/{webhook_id}", response_model=WebhookOut)
async def patch_webhook(
    webhook_id: str,
    body: WebhookPatch,
    backend: Webhooks,
    settings: SettingsDep,
    clock: Clock,
    model: ActiveModel,
    namespaces: NamespacesDep,
) -> WebhookOut:
    """Change the fields given; `enabled: true` re-enables a disabled subscription."""
    check_groups(body.groups, model, namespaces)
    nulls = [name for name in NOT_NULL if name in body.model_fields_set and getattr(body, name) is None]
    if nulls:
        raise ApiError(422, "invalid_request", f"body.{nulls[0]}: cannot be null")
    backend.subscription(webhook_id)
    if body.url is not None:
        await backend.check_url(body.url, settings.webhook_allow_private)
    record = await backend.update(webhook_id, lambda base: patched(base, body, clock()))
    log.info("webhook %s updated (%s), revision %d", webhook_id, sorted(body.model_fields_set), record.revision)
    return webhook_out(record)


@router.delete("/{webhook_id}", status_code=204, response_class=Response)
async def delete_webhook(webhook_id: str, backend: Webhooks) -> Response:
    """Delete a subscription: nothing more is sent to it (pending deliveries fail)."""
    async with backend.lock:
        backend.subscription(webhook_id)
        await backend.write(webhook_id, None)
    log.info("webhook %s deleted", webhook_id)
    return Response(status_code=204)


@router.post("/{webhook_id}/rotate-secret", response_model=RotateOut)
async def rotate_secret(
    webhook_id: str, backend: Webhooks, settings: SettingsDep, clock: Clock, body: RotateIn | None = None
) -> RotateOut:
    """A new signing secret, shown once; the current one keeps signing beside it for
    ``overlap_s`` (default SCORESTREAM_WEBHOOK_SECRET_OVERLAP_S)."""
    overlap_s = settings.webhook_secret_overlap_s if body is None or body.overlap_s is None else body.overlap_s
    secret = core.new_secret(secrets.token_bytes(32))
    now = clock()
    await backend.update(webhook_id, lambda base: rotated(base, secret, now, overlap_s * 1000), shows_secret=True)
    log.info("webhook %s: signing secret rotated (overlap %d s)", webhook_id, overlap_s)
    return RotateOut(secret=secret, previous_expires_at=_at(now + overlap_s * 1000))


@router.post("/{webhook_id}/test", response_model=Accepted, status_code=202)
async def send_test(webhook_id: str, backend: Webhooks, clock: Clock) -> Accepted:
    """Queue a `webhook.test` delivery; watch it in the delivery log under `delivery_id`."""
    backend.subscription(webhook_id)
    request = request_id()
    partition = command_partition(webhook_id, await backend.partitions())
    command = CommandRecord(op="test", subscription_id=webhook_id, request_id=request, requested_ms=clock())
    await backend.send(partition, command)
    return Accepted(request_id=request, delivery_id=core.delivery_id("test_" + request, webhook_id))


@router.get("/{webhook_id}/deliveries", response_model=DeliveryList)
async def list_deliveries(
    webhook_id: str,
    backend: Webhooks,
    status: DeliveryStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    before: Annotated[
        str | None, Query(description="A delivery id: the page starts after it (the last of the previous page).")
    ] = None,
) -> DeliveryList:
    """A subscription's latest deliveries, newest first (by creation); this process keeps the
    latest 1000 of each subscription."""
    backend.subscription(webhook_id)
    backend.delivery_log_ready()
    cursor = None
    if before is not None:
        cursor = backend.deliveries.get(before)
        if cursor is None or cursor.subscription_id != webhook_id:
            raise ApiError(422, "invalid_request", f"before: no delivery {before!r} of this webhook in the log")
    return DeliveryList(data=[delivery_out(r) for r in backend.deliveries.page(webhook_id, status, limit, cursor)])


@router.get("/{webhook_id}/deliveries/{delivery_id}", response_model=DeliveryOut)
async def get_delivery(webhook_id: str, delivery_id: str, backend: Webhooks) -> DeliveryOut:
    """One delivery with its latest attempts."""
    return delivery_out(backend.owned_delivery(webhook_id, delivery_id))


@router.post(
    "/{webhook_id}/deliveries/{delivery_id}/retry",
    response_model=Accepted,
    status_code=202,
    responses={409: {"model": Problem}},
)
async def retry_delivery(webhook_id: str, delivery_id: str, backend: Webhooks, clock: Clock) -> Accepted:
    """Send a delivery again now (the same `webhook-id` and body), whatever its status."""
    return await backend.retry(webhook_id, delivery_id, clock())


@router.post("/{webhook_id}/deliveries:retry-failed", response_model=Accepted, status_code=202)
async def retry_failed(
    webhook_id: str,
    backend: Webhooks,
    clock: Clock,
    since: Annotated[
        datetime | None,
        Query(description="Retry the failed deliveries created since then (ISO 8601; default: 24 hours ago)."),
    ] = None,
) -> Accepted:
    """Send every failed delivery created since ``since`` again (each dispatcher its own)."""
    return await backend.retry_failed(webhook_id, clock(), None if since is None else _ms(since))
