"""What the core emits on the triggers topic matches the published contract."""

from __future__ import annotations

import orjson
import pytest
from pydantic import ValidationError

from schemas.triggers import Trigger
from scorestream.fold import Tick, step
from scorestream.triggers import journey_triggers, make_trigger
from tests.factories import DEFAULT_MODEL, HOUR, T0, make_event


def test_every_trigger_the_lifecycle_emits_validates_against_the_contract() -> None:
    lc = DEFAULT_MODEL.lifecycle
    assert lc is not None
    events = [
        make_event(kind="identify", event=None, channel="web", traits={"email": "a@leadforge.io"}),
        make_event(event="Product Added", channel="web", timestamp_ms=T0 + HOUR),
        make_event(event="Order Completed", channel="store", timestamp_ms=T0 + 3 * HOUR, properties={"order_id": "o"}),
        make_event(event="Whitepaper Downloaded", channel="web", timestamp_ms=T0 + 4 * HOUR),
        make_event(event="Webinar Registered", channel="web", timestamp_ms=T0 + 4 * HOUR + 1),
    ]
    state, *_ = step(None, "user-1", [*events, Tick(T0 + 400 * 86_400_000)], DEFAULT_MODEL)
    assert state is not None and state.journey is not None
    found = journey_triggers(None, state.journey, "user-1", DEFAULT_MODEL, lc)
    kinds = {t["type"] for t in found}
    assert kinds == {
        "stage.changed",
        "contact.disqualified",
        "cart.abandoned",
        "customer.lapsed",
        "score.threshold_crossed",
    }
    for trigger in found:
        parsed = Trigger.model_validate_json(orjson.dumps(trigger))
        assert parsed.model_dump(mode="json", exclude_unset=True) == trigger  # a field it leaves out: its default


def test_the_contract_refuses_what_is_not_a_trigger() -> None:
    good = make_trigger("stage.changed", at_ms=T0, model_version="m@1", contact_id="c", before="a", after="b")
    Trigger.model_validate(good)
    for bad in ({**good, "type": "stage.exploded"}, {**good, "id": "x"}, {**good, "extra": 1}):
        with pytest.raises(ValidationError):
            Trigger.model_validate(bad)
    with pytest.raises(ValueError, match="unknown trigger type"):
        make_trigger("nope", at_ms=T0, model_version="m", contact_id="c")
