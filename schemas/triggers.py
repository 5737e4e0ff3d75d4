"""The public contract of the ``triggers`` topic (``SCORESTREAM_TOPIC_TRIGGERS``), v1.

One JSON object per record, keyed by the contact id (or the account id for
``account.stage_changed``): per key, records are in the order the changes were computed. The
record is built by :func:`scorestream.triggers.make_trigger`; ``tests/schemas/test_triggers.py``
validates what the core builds against this model.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, WithJsonSchema

from scorestream.triggers import TRIGGER_VERSION, TYPES

__all__ = ["TRIGGER_VERSION", "Trigger", "TriggerType"]


def _known(kind: str) -> str:
    if kind not in TYPES:
        raise ValueError(f"unknown trigger type {kind!r}; one of {', '.join(TYPES)}")
    return kind


TriggerType = Annotated[str, AfterValidator(_known), WithJsonSchema({"type": "string", "enum": list(TYPES)})]


class InterestKey(BaseModel):
    """A category or brand of the contact's interest profile and its affinity at the trigger's instant."""

    model_config = ConfigDict(extra="forbid")

    key: str
    affinity: float


class InterestProduct(BaseModel):
    """A product of the interest profile (``name``: its latest display name, when known)."""

    model_config = ConfigDict(extra="forbid")

    id: str
    name: str | None
    affinity: float


class CartProduct(BaseModel):
    """A product put in the cart and not ordered since."""

    model_config = ConfigDict(extra="forbid")

    id: str
    name: str | None


class CartInterests(BaseModel):
    """What a ``cart.abandoned`` trigger carries for dynamic content (``scorestream.interests.cart_payload``)."""

    model_config = ConfigDict(extra="forbid")

    categories: list[InterestKey] = Field(description="The top 3 categories by affinity.")
    brands: list[InterestKey] = Field(description="The top 3 brands by affinity.")
    products: list[InterestProduct] = Field(description="The top 3 products by affinity.")
    cart_not_bought: list[CartProduct] = Field(
        description="Products put in the cart and not ordered since (the latest first, at most 10)."
    )


class Trigger(BaseModel):
    """A change that matters, with everything needed to act on it idempotently."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(
        pattern=r"^trg_[0-9a-f]{24}$",
        description="Stable id: the same change computed again (redelivery, replay) has the same id. "
        "Deliver each id once.",
    )
    type: TriggerType
    at_ms: int = Field(description="When the change happened, event time (ms since the epoch, UTC).")
    contact_id: str | None = Field(description="The contact (null for account triggers).")
    account_id: str | None = Field(description="The account (`account.stage_changed`), else null.")
    before: Any = Field(description="The value before: a stage name, a threshold state, a segment; null when none.")
    after: Any = Field(description="The value after (for timers: the timer id and the stage at that time).")
    rule: str | None = Field(description="The transition, timer or threshold that fired.")
    cause: str | None = Field(
        description="Message id of the event that caused it; null when time did (a timer, decay)."
    )
    model_version: str = Field(description="The model that computed it (`name@hash`).")
    v: Literal[1] = Field(default=1, description="Contract version (`TRIGGER_VERSION`).")
    interests: CartInterests | None = Field(
        default=None,
        description="`cart.abandoned` with a model that keeps interests: the contact's top interests and the "
        "cart's products not bought, as at the trigger's instant. Not part of the id.",
    )
    group: str | None = Field(
        default=None,
        description="`score.threshold_crossed` of a score group (the model file's `engagement.groups`): the "
        "group's id; its `before`/`after` name the score `engagement.<group>`. Absent for the overall score.",
    )
