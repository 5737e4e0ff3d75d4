"""The console's contact page explains machine traffic in e-mail (docs/model.md "Machine traffic"):
under "Why this score", each rule some of whose events a scanner or a privacy proxy made, with its
points and the reason ``GET /v1/contacts/{id}`` gives."""

from __future__ import annotations

import html

from fastapi import FastAPI

from api.app import create_api
from schemas.model_file import load_model
from schemas.settings import Settings
from tests.api.view_bytes import ready_replica
from tests.console.test_contacts import Browser, signed_in, values
from tests.factories import HOUR, T0
from tests.scorestream.test_machine import apple_mpp, human, scanner

KEY = "console-machine-admin-0123456789"
READ = "console-machine-read-0123456789"
MODEL = load_model()
NOW = T0 + 3 * HOUR


def build() -> FastAPI:
    settings = Settings(api_keys=f"{KEY},{READ}:read:reader", console_secret="m" * 32)  # type: ignore[arg-type]
    contacts = {"u-1": [*scanner(), *apple_mpp()], "u-2": scanner()[:5], "u-3": human()}
    return create_api(settings, model=MODEL, replica=ready_replica(MODEL, contacts, NOW), clock=lambda: NOW)


def test_the_why_list_shows_machine_traffic_as_the_api_explains_it() -> None:
    app = build()
    client = signed_in(app, READ)
    for contact in ("u-1", "u-2"):
        page = client.get(f"/console/contacts/{contact}")
        assert page.status_code == 200
        body = Browser(app).get(f"/v1/contacts/{contact}", headers={"Authorization": f"Bearer {KEY}"}).json()
        machine = body["engagement"]["machine"]
        assert machine
        shown = values(page.text)
        text = html.unescape(page.text)
        for m in machine:
            assert float(shown[f"machine-{m['rule']}"]) == m["points"]
            assert f"machine: {m['reason']}" in text
    assert "machine: 4 links clicked within 3 s of delivery" in text  # u-2: the scanner alone, 0 points
    assert float(shown["machine-email-clicked"]) == 0.0


def test_a_person_has_no_machine_lines() -> None:
    page = signed_in(build(), READ).get("/console/contacts/u-3")
    assert page.status_code == 200 and 'data-testid="machine"' not in page.text
