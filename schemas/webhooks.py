"""Webhook contracts, v1: the API's bodies and the records of the three webhook topics.

Topics (created by ``kafka_io/topics.py``; names from :class:`schemas.settings.Settings`):

``<app>.webhooks`` (1 partition, compacted)
    key: subscription id; value: :class:`SubscriptionRecord` (JSON), the whole subscription with
    its signing secrets; a tombstone deletes it. Written by the API (create, update, rotate,
    delete) and by the dispatcher (failing since, disabled). Every API and dispatcher process
    reads all of it.
``<app>.webhook-deliveries`` (``partitions``, compacted + 14-day retention)
    key: delivery id; value: :class:`DeliveryRecord` (JSON), the delivery's latest state with its
    recent attempts. Partition p holds the deliveries of trigger partition p (and of commands on
    commands partition p), so the dispatcher that owns triggers partition p recovers its pending
    deliveries from deliveries partition p. The API reads every partition for the delivery log.
``<app>.webhook-commands`` (``partitions``)
    key: subscription id; value: :class:`CommandRecord` (JSON): a test send or a retry asked for
    over the API, for the dispatcher that owns the partition (a retry goes to its delivery's
    partition; a test send and "retry every failed delivery" to the partitions the API picks).
"""

from __future__ import annotations

import ipaddress
from datetime import datetime
from typing import Annotated, Literal
from urllib.parse import urlsplit

import msgspec
from pydantic import BaseModel, ConfigDict, Field, field_validator

from schemas.times import at_of as _at
from schemas.times import dt_of as _dt
from scorestream.delivery import Filter as CoreFilter
from scorestream.delivery import address_refusal, known_events

WEBHOOKS_VERSION = 1
MAX_ATTEMPTS_KEPT = 20  # a delivery record keeps its latest attempts
MAX_RESPONSE_EXCERPT = 512  # characters of a receiver's answer kept in an attempt

DeliveryStatus = Literal["pending", "succeeded", "failed"]
AttemptOutcome = Literal["success", "http_error", "timeout", "connection_error", "refused", "gone"]


# --- topic records (JSON through msgspec) ---------------------------------------------------------


class SigningSecret(msgspec.Struct, frozen=True):
    secret: str
    created_ms: int
    expires_ms: int | None = None  # set on the previous secret when it is rotated out


class SubscriptionRecord(msgspec.Struct, frozen=True):
    id: str
    url: str
    events: list[str]
    secrets: list[SigningSecret]  # newest first; all unexpired ones sign
    created_ms: int
    updated_ms: int
    description: str = ""
    enabled: bool = True
    stages: list[str] | None = None
    segments: list[str] | None = None
    models: list[str] | None = None
    groups: list[str] | None = None  # score groups: only their score.threshold_crossed
    revision: int = 1
    failing_since_ms: int | None = None  # first failed attempt since the last success
    disabled_ms: int | None = None
    disabled_reason: str | None = None  # why it was disabled (410, failing for days, by hand)
    v: int = WEBHOOKS_VERSION

    def filter(self) -> CoreFilter:
        return CoreFilter.of(self.events, self.stages, self.segments, self.models, self.groups)

    def signing_secrets(self, now_ms: int) -> list[str]:
        return [s.secret for s in self.secrets if s.expires_ms is None or s.expires_ms > now_ms]


class AttemptRecord(msgspec.Struct, frozen=True):
    at_ms: int
    outcome: AttemptOutcome
    latency_ms: float
    status_code: int | None = None
    error: str | None = None  # never a secret: the exception's type and message, the refusal's reason
    response: str | None = None  # the first MAX_RESPONSE_EXCERPT characters of the answer
    manual: bool = False  # asked for over the API


class DeliveryRecord(msgspec.Struct, frozen=True):
    id: str  # the webhook-id header
    subscription_id: str
    type: str
    key: str  # the trigger's contact or account id: per key, deliveries go out in order
    partition: int
    seq: int  # the source offset (trigger or command): the order within the partition
    body: str  # the exact payload, the same bytes on every attempt
    created_ms: int
    updated_ms: int
    status: DeliveryStatus = "pending"
    trigger_id: str | None = None  # None for a test send
    attempt_count: int = 0
    attempts: list[AttemptRecord] = msgspec.field(default_factory=list)  # the latest MAX_ATTEMPTS_KEPT
    # failed attempts counted against the retry schedule since the delivery was created or sent
    # back to pending by a "retry every failed delivery" (attempt_count keeps counting all of them)
    scheduled_attempts: int = 0
    next_attempt_ms: int | None = None
    reason: str | None = None  # why it failed (schedule spent, 410, subscription disabled or deleted)
    v: int = WEBHOOKS_VERSION


class CommandRecord(msgspec.Struct, frozen=True):
    # forget: the delivery (of an erased contact) no longer exists: not sent nor retried any more
    op: Literal["test", "retry", "retry_failed", "forget"]
    subscription_id: str
    request_id: str
    requested_ms: int
    delivery_id: str | None = None  # retry, forget: the delivery
    # retry_failed: failed deliveries created since then; retry: the delivery's creation (its
    # records are all at or after it: the dispatcher reads the partition from there, not from 0)
    since_ms: int | None = None
    v: int = WEBHOOKS_VERSION


def encode(record: msgspec.Struct) -> bytes:
    return msgspec.json.encode(record)


SUBSCRIPTION_DECODER = msgspec.json.Decoder(SubscriptionRecord)
DELIVERY_DECODER = msgspec.json.Decoder(DeliveryRecord)
COMMAND_DECODER = msgspec.json.Decoder(CommandRecord)


def url_refusal(url: str, allow_private: bool) -> str | None:
    """Why a webhook URL is refused before any lookup (None: acceptable so far): it must be
    absolute HTTP(S) with a host, HTTPS unless ``allow_private``, carry no credentials, and a
    literal IP host must pass :func:`address_refusal` unless ``allow_private``. The host's DNS
    answers are checked again at every connection (the dispatcher's own resolver)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        return f"not a valid URL: {exc}"
    if parts.scheme not in ("https", "http") or not parts.hostname:
        return "the URL must be absolute http(s)://host/..."
    if parts.scheme == "http" and not allow_private:
        return "webhook URLs must use HTTPS"
    if parts.username is not None or parts.password is not None:
        return "credentials in the URL are not allowed (the signature authenticates us)"
    if port == 0:
        return "port 0 is not a port"
    if not allow_private:
        host = parts.hostname
        if host in ("localhost",) or host.endswith((".localhost", ".internal", ".local")):
            return f"{host} is a local name"
        try:
            ipaddress.ip_address(host)
        except ValueError:
            return None
        return address_refusal(host)
    return None


# --- API bodies (pydantic) ------------------------------------------------------------------------


GROUPS_DESCRIPTION = (
    "Only the `score.threshold_crossed` triggers of these score groups (the model's `engagement.groups`; "
    "`GET /v1/model` lists them): the other triggers, and the overall score's crossings, carry no group."
)
EventName = Annotated[str, Field(min_length=1, max_length=64)]
Names = Annotated[list[Annotated[str, Field(min_length=1, max_length=128)]], Field(max_length=100)]


class WebhookIn(BaseModel):
    """``POST /v1/webhooks``."""

    model_config = ConfigDict(extra="forbid")

    url: Annotated[str, Field(min_length=8, max_length=2048)] = Field(
        description="Where to POST. HTTPS, and not to a loopback, private, link-local or metadata address, "
        "unless SCORESTREAM_WEBHOOK_ALLOW_PRIVATE=true."
    )
    events: Annotated[list[EventName], Field(min_length=1, max_length=20)] = Field(
        description="Trigger types to receive (`stage.changed`, ...), or `*` for all."
    )
    stages: Names | None = Field(
        default=None, description="Only triggers that leave a contact or account in one of these stages."
    )
    segments: Names | None = Field(default=None, description="Only RFM segment changes into one of these segments.")
    models: Names | None = Field(default=None, description="Only triggers of these models (name or `name@hash`).")
    groups: Names | None = Field(default=None, description=GROUPS_DESCRIPTION)
    description: Annotated[str, Field(max_length=500)] = ""
    enabled: bool = True

    _events = field_validator("events")(known_events)


class WebhookPatch(BaseModel):
    """``PATCH /v1/webhooks/{id}``: the fields given replace the stored ones (`null` clears a filter)."""

    model_config = ConfigDict(extra="forbid")

    url: Annotated[str, Field(min_length=8, max_length=2048)] | None = None
    events: Annotated[list[EventName], Field(min_length=1, max_length=20)] | None = None
    stages: Names | None = None
    segments: Names | None = None
    models: Names | None = None
    groups: Names | None = None
    description: Annotated[str, Field(max_length=500)] | None = None
    enabled: bool | None = Field(default=None, description="true re-enables a disabled subscription.")

    @field_validator("events")
    @classmethod
    def _events(cls, events: list[str] | None) -> list[str] | None:
        return None if events is None else known_events(events)


class WebhookOut(BaseModel):
    id: str
    url: str
    events: list[str]
    stages: list[str] | None
    segments: list[str] | None
    models: list[str] | None
    groups: list[str] | None = Field(default=None, description=GROUPS_DESCRIPTION)
    description: str
    enabled: bool
    created_at: datetime
    updated_at: datetime
    failing_since: datetime | None = Field(description="First failed attempt since the last success.")
    disabled_at: datetime | None
    disabled_reason: str | None
    secret_overlap_until: datetime | None = Field(
        description="Until when the previous signing secret still signs (after a rotation)."
    )


class WebhookCreated(WebhookOut):
    secret: str = Field(description="The signing secret (`whsec_...`). Shown once: store it.")


class WebhookList(BaseModel):
    data: list[WebhookOut]


class RotateIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    overlap_s: Annotated[int, Field(ge=0, le=7 * 86400)] | None = Field(
        default=None,
        description="How long the old secret keeps signing beside the new one "
        "(default SCORESTREAM_WEBHOOK_SECRET_OVERLAP_S).",
    )


class RotateOut(BaseModel):
    secret: str = Field(description="The new signing secret. Shown once.")
    previous_expires_at: datetime = Field(description="Until then both secrets sign every attempt.")


class AttemptOut(BaseModel):
    at: datetime
    outcome: AttemptOutcome
    status_code: int | None
    latency_ms: float
    error: str | None
    response: str | None
    manual: bool


class DeliveryOut(BaseModel):
    id: str = Field(description="The `webhook-id` header: the same on every attempt.")
    subscription_id: str
    type: str
    trigger_id: str | None
    key: str
    status: DeliveryStatus
    attempt_count: int
    attempts: list[AttemptOut] = Field(description=f"The latest {MAX_ATTEMPTS_KEPT} attempts, oldest first.")
    next_attempt_at: datetime | None
    reason: str | None
    created_at: datetime
    updated_at: datetime


class DeliveryList(BaseModel):
    data: list[DeliveryOut]


class Accepted(BaseModel):
    """A test send or retry queued for the dispatcher."""

    status: Literal["queued"] = "queued"
    request_id: str
    delivery_id: str | None = Field(description="The delivery to watch in the delivery log, when known.")


def webhook_out(record: SubscriptionRecord) -> WebhookOut:
    overlap = [s.expires_ms for s in record.secrets if s.expires_ms is not None]
    return WebhookOut(
        id=record.id,
        url=record.url,
        events=record.events,
        stages=record.stages,
        segments=record.segments,
        models=record.models,
        groups=record.groups,
        description=record.description,
        enabled=record.enabled,
        created_at=_at(record.created_ms),
        updated_at=_at(record.updated_ms),
        failing_since=_dt(record.failing_since_ms),
        disabled_at=_dt(record.disabled_ms),
        disabled_reason=record.disabled_reason,
        secret_overlap_until=_dt(max(overlap)) if overlap else None,
    )


def delivery_out(record: DeliveryRecord) -> DeliveryOut:
    return DeliveryOut(
        id=record.id,
        subscription_id=record.subscription_id,
        type=record.type,
        trigger_id=record.trigger_id,
        key=record.key,
        status=record.status,
        attempt_count=record.attempt_count,
        attempts=[
            AttemptOut(
                at=_at(a.at_ms),
                outcome=a.outcome,
                status_code=a.status_code,
                latency_ms=a.latency_ms,
                error=a.error,
                response=a.response,
                manual=a.manual,
            )
            for a in record.attempts
        ],
        next_attempt_at=_dt(record.next_attempt_ms),
        reason=record.reason,
        created_at=_at(record.created_ms),
        updated_at=_at(record.updated_ms),
    )
