"""HTTP body of a person's export (right of access, GDPR art. 15): ``GET /v1/contacts/{id}/export``.

Everything scorestream holds about the person, in one JSON document: who they are (every id
linked to them), their traits, their current state as ``GET /v1/contacts/{id}`` renders it
(scores with their explanation, stage and its history, RFM/CLV, flags, consent), their orders,
and what the ClickHouse archive holds (events, score ledger, stage transitions, triggers, webhook
deliveries, the contacts row). Times are ISO 8601 (UTC) in ``current``; archive rows keep the
archive's epoch milliseconds (``*_ms``), as stored.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from schemas.api_interests import InterestsOut

EXPORT_VERSION = 1


class ExportIdentity(BaseModel):
    """Every identifier scorestream links to the person."""

    contact_id: str
    user_id: str | None
    anonymous_ids: list[str]
    email: str | None
    merged_ids: list[str] = Field(description="Contacts merged into this one (their ids are the person's too).")


class ExportArchive(BaseModel):
    """What the archive holds about the person, each list oldest first (at most `limit` rows each)."""

    status: Literal["complete", "truncated", "unavailable"] = Field(
        description="`truncated`: a list had more rows than `limit` (named in `truncated`); `unavailable`: the "
        "archive could not be read (`detail` says why; the lists are empty, the rest of the export stands)."
    )
    detail: str | None = None
    truncated: list[str] = Field(default_factory=list)
    contacts: list[dict[str, Any]] = Field(default_factory=list, description="The `contacts` table's rows.")
    events: list[dict[str, Any]] = Field(
        default_factory=list,
        description="Events, with their properties, traits and context; a rejected record's raw text in `raw`.",
    )
    score_ledger: list[dict[str, Any]] = Field(default_factory=list)
    stage_transitions: list[dict[str, Any]] = Field(default_factory=list)
    triggers: list[dict[str, Any]] = Field(default_factory=list)
    webhook_deliveries: list[dict[str, Any]] = Field(
        default_factory=list, description="Deliveries about the person: the payload sent and each attempt (no secret)."
    )


class ExportOut(BaseModel):
    """``GET /v1/contacts/{id}/export``."""

    export_version: int = EXPORT_VERSION
    exported_at: datetime
    contact_id: str
    identity: ExportIdentity
    traits: dict[str, Any]
    current: dict[str, Any] | None = Field(
        description="The contact as `GET /v1/contacts/{id}` shows it now (`ContactOut`); null when only the archive "
        "knows them."
    )
    orders: list[dict[str, Any]] = Field(
        description="The order and refund events (the model's `value.order_events` / `refund_events`) from the archive."
    )
    interests: InterestsOut | None = Field(
        default=None,
        description="The interest profile as `GET /v1/contacts/{id}/interests` shows it now; null when the model "
        "keeps none or only the archive knows them.",
    )
    archive: ExportArchive
