"""HTTP bodies of a contact's interest profile (``GET /v1/contacts/{id}/interests``) and of the
rising-categories report (``GET /v1/reports/interests``), v1. Times are ISO 8601 (UTC)."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

from schemas.times import DAY_MS, at_of
from scorestream.interests import Affinity, InterestsView, profile_at
from scorestream.rules.interests import InterestRules
from scorestream.view import ContactView


class InterestOut(BaseModel):
    """A category or brand and the contact's affinity for it, decayed to `as_of`."""

    key: str
    affinity: float


class ProductInterestOut(BaseModel):
    """A product (its `product_id`, else `sku`) with its latest display name, when one was sent."""

    id: str
    name: str | None
    affinity: float


class InterestsOut(BaseModel):
    """A contact's interest profile: decayed affinity (sum of the points of its interest events,
    each halved every `interests.half_life` of the model) per category, brand and product, the
    top `interests.top` of each, and the top `interests.not_bought` products seen but never in an
    order (a free order counts as bought)."""

    contact_id: str
    as_of: datetime = Field(
        description="The instant the affinities are decayed to (the request time, or the profile's newest event when later)."
    )
    half_life_days: float
    categories: list[InterestOut]
    brands: list[InterestOut]
    products: list[ProductInterestOut]
    seen_not_bought: list[ProductInterestOut]


def interests_out(contact: ContactView, rules: InterestRules, now_ms: int) -> InterestsOut:
    """A contact's profile from its view, decayed to ``now_ms`` (the route, the console's contact
    page and the export all show it so)."""
    view = contact.interests
    profile = profile_at(view, rules, now_ms) if view is not None else InterestsView(now_ms)
    return InterestsOut(
        contact_id=contact.contact_id,
        as_of=at_of(profile.at_ms),
        half_life_days=rules.half_life_ms / DAY_MS,
        categories=_keys(profile.categories),
        brands=_keys(profile.brands),
        products=_products(profile.products),
        seen_not_bought=_products(profile.not_bought),
    )


def _keys(items: list[Affinity]) -> list[InterestOut]:
    return [InterestOut(key=a.key, affinity=round(a.affinity, 6)) for a in items]


def _products(items: list[Affinity]) -> list[ProductInterestOut]:
    return [ProductInterestOut(id=a.key, name=a.name, affinity=round(a.affinity, 6)) for a in items]


class RisingCategoryOut(BaseModel):
    """A category's interest points in the window and in the window before it."""

    category: str
    points: float = Field(description="Interest points in the window (the model's `interests.events` and `paths`).")
    previous: float = Field(description="Interest points in the window before it.")
    change: float = Field(description="`points - previous`.")
    ratio: float | None = Field(description="`points / previous`; null when `previous` is 0.")
    contacts: int = Field(description="Contacts (user or anonymous ids) with interest events for it in the window.")


class InterestsReportOut(BaseModel):
    """Categories rising: interest points per category in the window against the window before it,
    from the event archive, ordered by `change` (largest rise first)."""

    as_of: datetime
    window_days: float
    start: datetime = Field(description="The window's start (inclusive); it ends at `as_of` (exclusive).")
    previous_start: datetime = Field(description="The previous window's start; it ends at `start`.")
    categories: list[RisingCategoryOut]
