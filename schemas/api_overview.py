"""HTTP body of ``GET /v1/reports/overview`` (v1): what the console's front page shows from the
archive: contacts per stage and the top movers of the last hour. Times are ISO 8601 (UTC)."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field


class StageCountOut(BaseModel):
    stage: str | None = Field(description="A stage of the model (in its order), then others by name; null: none.")
    contacts: int = Field(description="Active contacts in this stage now.")
    share: float = Field(description="Their share of `contacts` (0 to 1).")


class MoverOut(BaseModel):
    """A contact whose engagement rose in the window."""

    contact_id: str
    user_id: str | None
    email: str | None
    stage: str | None
    engagement: float = Field(description="Engagement now (decayed to `as_of`), as `GET /v1/contacts/{id}` shows it.")
    engagement_band: str
    engagement_before: float = Field(
        description="Engagement at `since` (the last score before it, decayed to then); 0 for a contact new since."
    )
    rise: float = Field(description="`engagement` minus `engagement_before` (with `?group=`: the group's rise).")
    fit: float
    fit_grade: str
    grade: str = Field(description="Fit letter x engagement band (of `engagement`).")
    last_seen: datetime | None
    group_score: float | None = Field(
        default=None,
        description="With `?group=`: the score group's score now; `rise` is then this minus `group_before`.",
    )
    group_before: float | None = Field(default=None, description="With `?group=`: its score at `since`.")


class OverviewOut(BaseModel):
    as_of: datetime = Field(description="The instant engagement is decayed to (the request time).")
    model: str = Field(description="The model version whose score ledger the movers are read from (the active one).")
    contacts: int = Field(description="Active contacts in the archive (the sum of `stages`).")
    stages: list[StageCountOut] = Field(description="Contacts per stage, in the model's stage order.")
    since: datetime = Field(description="The start of the movers' window (`as_of` minus `window_minutes`).")
    window_minutes: int
    movers: list[MoverOut] = Field(description="Largest rise first (ties by contact id); rises above 0 only.")
    group: str | None = Field(default=None, description="The score group the movers are ranked by (`?group=`), if any.")
