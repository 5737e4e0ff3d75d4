"""The console's contact page shows a contact's manual adjustments (docs/api.md "Adjustments"): each
with its reason, who, its points decayed to now, and the undone ones marked, as
``GET /v1/contacts/{id}/adjustments`` lists them; nothing for a contact without any."""

from __future__ import annotations

import html

from fastapi import FastAPI

from api.app import create_api
from schemas.model_file import load_model
from schemas.settings import Settings
from tests.api.view_bytes import ready_replica
from tests.console.test_contacts import Browser, signed_in, values
from tests.factories import DAY, HOUR, T0, make_event
from tests.scorestream.test_adjustments import adjusted, reverted

KEY = "console-adjust-admin-0123456789"
READ = "console-adjust-read-0123456789"
MODEL = load_model()
NOW = T0 + DAY


def build() -> FastAPI:
    settings = Settings(api_keys=f"{KEY},{READ}:read:reader", console_secret="a" * 32)  # type: ignore[arg-type]
    events = [
        make_event(user_id="user-1", timestamp_ms=T0),
        adjusted("a-1", 30, ts=T0 + HOUR, group="product", reason="Asked for a quote", by="Ann"),
        adjusted("a-2", -10, ts=T0 + 2 * HOUR, reason="Competitor", by="Bob"),
        reverted("a-2", T0 + 3 * HOUR, by="Cleo"),
    ]
    contacts = {"user-1": events, "user-2": [make_event(user_id="user-2", timestamp_ms=T0)]}
    return create_api(settings, model=MODEL, replica=ready_replica(MODEL, contacts, NOW), clock=lambda: NOW)


def test_the_contact_page_lists_adjustments_as_the_api_does() -> None:
    app = build()
    page = signed_in(app, READ).get("/console/contacts/user-1")
    assert page.status_code == 200
    listed = Browser(app).get("/v1/contacts/user-1/adjustments", headers={"Authorization": f"Bearer {KEY}"}).json()
    shown = values(page.text)
    text = html.unescape(page.text)
    assert [a["adjustment_id"] for a in listed["adjustments"]] == ["a-2", "a-1"]
    for a in listed["adjustments"]:
        assert float(shown[f"adjustment-{a['adjustment_id']}"]) == a["points_now"]
    assert float(shown["adjustment-a-2"]) == 0.0 and float(shown["adjustment-a-1"]) > 0
    assert "Asked for a quote" in text and "by Ann" in text and "undone</strong> by Cleo" in text


def test_a_contact_without_adjustments_has_no_card() -> None:
    page = signed_in(build(), READ).get("/console/contacts/user-2")
    assert page.status_code == 200 and 'data-testid="adjustments"' not in page.text
