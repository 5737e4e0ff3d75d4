"""HTTP bodies of the regulations API (v1): ``/v1/regulations``, shaped as Segment's Public API.

Segment's field names (camelCase) and envelopes (``{"data": {...}}``) are kept, so privacy tooling
written against Segment's ``/regulations`` can point at scorestream. The records these bodies
show are ``schemas/regulations.py``'s; the service that carries them out is ``api/regulations.py``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from schemas.regulations import MAX_SUBJECTS, STORES, Regulation, RegulationType, Status, SubjectType
from schemas.times import at_of, dt_of

MAX_SUBJECT_ID_CHARS = 512
DEFAULT_PAGE = 50
MAX_PAGE = 200

SegmentStatus = Literal["INITIALIZED", "RUNNING", "FINISHED", "FAILED"]
SEGMENT_STATUS: dict[str, SegmentStatus] = {
    "pending": "INITIALIZED",
    "running": "RUNNING",
    "done": "FINISHED",
    "failed": "FAILED",
}
FROM_SEGMENT: dict[str, Status] = {v: k for k, v in SEGMENT_STATUS.items()}  # type: ignore[misc]


class RegulationIn(BaseModel):
    """``POST /v1/regulations``: Segment's "create regulation" body."""

    model_config = ConfigDict(extra="forbid")

    regulationType: RegulationType = Field(
        description="SUPPRESS (stop collecting), SUPPRESS_WITH_DELETE (stop collecting and delete everything held), "
        "DELETE_ONLY (delete everything held up to now; new events are collected again), UNSUPPRESS (lift an "
        "earlier suppression: collection resumes, the deleted past stays deleted)."
    )
    subjectType: SubjectType = Field(description="What the subject ids are: USER_ID, ANONYMOUS_ID or EMAIL.")
    subjectIds: list[str] = Field(
        min_length=1,
        max_length=MAX_SUBJECTS,
        description=f"1 to {MAX_SUBJECTS} ids (each 1 to {MAX_SUBJECT_ID_CHARS} characters); duplicates count once.",
    )

    @field_validator("subjectIds")
    @classmethod
    def _ids(cls, ids: list[str]) -> list[str]:
        for i, value in enumerate(ids):
            if not value.strip():
                raise ValueError(f"subjectIds[{i}]: empty")
            if len(value) > MAX_SUBJECT_ID_CHARS:
                raise ValueError(f"subjectIds[{i}]: longer than {MAX_SUBJECT_ID_CHARS} characters")
        return sorted(set(ids))


class RegulateId(BaseModel):
    regulateId: str = Field(description="The regulation's id (`GET /v1/regulations/{id}`).")


class RegulationCreated(BaseModel):
    """The answer to ``POST /v1/regulations`` (Segment's shape)."""

    data: RegulateId


class StoreOut(BaseModel):
    name: str = Field(description="privacy_list, worker, api, archive, deliveries or deadletter.")
    status: Status
    detail: str | None = Field(description="A failure's reason, or what done means for this store.")
    startedAt: datetime | None
    finishedAt: datetime | None
    count: int = Field(description="What was removed or written there (entries, contacts, rows, records).")


class RegulationOut(BaseModel):
    """One regulation. Its subject ids are never shown (the requester knows them; the record keeps
    them only until the regulation is done)."""

    id: str
    regulationType: RegulationType
    subjectType: SubjectType
    overallStatus: SegmentStatus = Field(
        description="Segment's name of the status: INITIALIZED, RUNNING, FINISHED, FAILED."
    )
    status: Status = Field(description="scorestream's name of the status: pending, running, done, failed.")
    createdAt: datetime
    finishedAt: datetime | None
    stores: list[StoreOut] = Field(description="Each store's part, in the order they are worked on.")
    subjectCount: int = Field(description="Distinct subject ids requested.")


class RegulationData(BaseModel):
    regulation: RegulationOut


class RegulationEnvelope(BaseModel):
    """``GET /v1/regulations/{id}``."""

    data: RegulationData


class Pagination(BaseModel):
    current: str | None = Field(description="The cursor of this page (None: the first).")
    next: str | None = Field(description="The cursor of the next page (None: this is the last).")
    totalEntries: int = Field(description="Regulations matching the filter.")


class RegulationsData(BaseModel):
    regulations: list[RegulationOut]
    pagination: Pagination


class RegulationList(BaseModel):
    """``GET /v1/regulations``: newest first."""

    data: RegulationsData


def regulation_out(record: Regulation) -> RegulationOut:
    stores = [
        StoreOut(
            name=name,
            status=s.status,
            detail=s.detail,
            startedAt=dt_of(s.started_at_ms),
            finishedAt=dt_of(s.finished_at_ms),
            count=s.count,
        )
        for name in STORES
        if (s := record.stores.get(name)) is not None
    ]
    return RegulationOut(
        id=record.id,
        regulationType=record.regulation_type,
        subjectType=record.subject_type,
        overallStatus=SEGMENT_STATUS[record.status],
        status=record.status,
        createdAt=at_of(record.created_at_ms),
        finishedAt=dt_of(record.finished_at_ms),
        stores=stores,
        subjectCount=len(record.subject_keys),
    )
