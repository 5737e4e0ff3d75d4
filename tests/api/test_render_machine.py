"""The explanation of machine traffic in e-mail (docs/model.md "Machine traffic") in the contact's
body: the API renders it from the compact view as the full state says (``contact_oracle``)."""

from __future__ import annotations

import orjson
from pydantic import TypeAdapter

from api.render import ContactRenderer
from api.replica import Decoded
from schemas.api import ContactOut
from schemas.model_file import load_model
from schemas.view import encode_view
from scorestream import apply_events
from scorestream.view import view_of
from tests.api.contact_oracle import contact_out
from tests.factories import DAY, HOUR, T0
from tests.scorestream.test_machine import apple_mpp, human, scanner

MODEL = load_model()
contact_adapter = TypeAdapter(ContactOut)


def test_the_body_explains_machine_traffic_as_the_full_state_does() -> None:
    state = apply_events(None, "user-1", [*scanner(), *apple_mpp(), *human()], MODEL)
    view = view_of(state, MODEL)
    render = ContactRenderer(MODEL)
    for now in (T0 + 3 * HOUR, T0 + 2 * DAY):
        body = orjson.loads(render.contact_json(Decoded(encode_view(view), view), now))
        oracle = orjson.loads(contact_adapter.dump_json(contact_out(state, MODEL, now)))
        assert body["engagement"]["machine"] == oracle["engagement"]["machine"]
        assert body["engagement"]["score"] == oracle["engagement"]["score"]
        machine = {m["rule"]: m for m in body["engagement"]["machine"]}
        assert machine["email-clicked"]["events"] == 4
        assert machine["email-clicked"]["reason"] == "4 links clicked within 3 s of delivery"
        assert machine["email-clicked"]["points"] > 0  # the person's clicks count
        assert machine["email-opened"]["reason"] == "opened by a privacy proxy"


def test_a_scanner_only_contact_shows_zero_points_and_why() -> None:
    state = apply_events(None, "user-1", scanner()[:5], MODEL)
    view = view_of(state, MODEL)
    body = orjson.loads(ContactRenderer(MODEL).contact_json(Decoded(encode_view(view), view), T0 + HOUR))
    assert body["engagement"]["score"] == 0.0 and body["engagement"]["top"] == []
    assert [(m["rule"], m["points"], m["events"]) for m in body["engagement"]["machine"]] == [("email-clicked", 0.0, 4)]
