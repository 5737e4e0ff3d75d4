"""End to end: consent with Segment's own client (segment-analytics-python) through the HTTP
collector, scored by the real worker, read from the real API (docs/model.md "Consent").

The bundled default model needs `analytics` or `marketing` granted for engagement scoring.
"""

from __future__ import annotations

import uuid
from typing import Any

import httpx
from segment.analytics import Client  # type: ignore[import-untyped]

from tests.e2e.service import WRITE_KEY, Service

DENIED = {"analytics": False, "marketing": False, "functional": True}
GRANTED = {"analytics": True, "marketing": False, "functional": True}


def contact(http: httpx.Client, ident: str) -> dict[str, Any] | None:
    r = http.get(f"/v1/contacts/{ident}")
    return r.json() if r.status_code == 200 else None


def client(service: Service, errors: list[Any]) -> Client:
    return Client(
        WRITE_KEY,
        host=service.url,
        on_error=lambda exc, batch: errors.append((exc, batch)),
        upload_interval=0.1,
        max_retries=2,
    )


def send(segment: Client, user: str, anon: str, preferences: dict[str, bool], email: str) -> None:
    """An identify, a pricing page view and a demo request, each with ``preferences`` as its consent."""
    context = {"consent": {"categoryPreferences": preferences}}
    segment.identify(user, {"email": email, "title": "VP Marketing"}, context=context, anonymous_id=anon)
    segment.page(user, name="Pricing", properties={"path": "/pricing"}, context=context, anonymous_id=anon)
    segment.track(user, "Demo Requested", {"plan": "pro"}, context=context, anonymous_id=anon)


def test_denied_consent_is_not_scored_but_links_and_shows_and_a_grant_starts_scoring(service: Service) -> None:
    run = uuid.uuid4().hex[:8]
    denied_user, denied_anon = f"consent-no-{run}", f"consent-no-anon-{run}"
    granted_user, granted_anon = f"consent-yes-{run}", f"consent-yes-anon-{run}"
    errors: list[Any] = []
    segment = client(service, errors)
    send(segment, denied_user, denied_anon, DENIED, f"no-{run}@example.com")
    send(segment, granted_user, granted_anon, GRANTED, f"yes-{run}@example.com")
    segment.flush()
    segment.join()
    assert errors == []

    with service.client() as http:
        granted = service.wait_for(
            lambda: (c := contact(http, granted_user)) is not None and len(c["engagement"]["top"]) >= 2 and c
        )
        assert granted["engagement"]["score"] > 0
        assert granted["consent"]["categoryPreferences"] == GRANTED

        # the denied contact exists, its ids are linked and its consent is shown, but it earned nothing
        denied = service.wait_for(
            lambda: (
                (c := contact(http, denied_user)) is not None
                and c["consent"] is not None
                and c["identity"]["email"] == f"no-{run}@example.com"
                and denied_anon in c["identity"]["anonymous_ids"]
                and c
            )
        )
        assert denied["consent"]["categoryPreferences"] == DENIED
        assert denied["consent"]["at"]
        assert denied["engagement"]["score"] == 0.0
        assert denied["engagement"]["top"] == []
        assert denied["traits"]["title"] == "VP Marketing"  # identity and traits are kept
        by_anonymous = contact(http, denied_anon)
        by_email = contact(http, f"no-{run}@example.com")
        assert by_anonymous is not None and by_anonymous["contact_id"] == denied_user
        assert by_email is not None and by_email["contact_id"] == denied_user

        # consent granted later: scoring starts from that instant (the earlier events stay unscored)
        segment = client(service, errors)  # a joined client sends no more
        segment.track(
            denied_user,
            "Demo Requested",
            {"plan": "pro"},
            context={"consent": {"categoryPreferences": GRANTED}},
            anonymous_id=denied_anon,
        )
        segment.flush()
        segment.join()
        assert errors == []
        rescored = service.wait_for(
            lambda: (c := contact(http, denied_user)) is not None and c["engagement"]["score"] > 0 and c
        )
        assert rescored["consent"]["categoryPreferences"] == GRANTED
        assert {c["rule"] for c in rescored["engagement"]["top"]} == {"demo-requested"}
        assert rescored["engagement"]["score"] < granted["engagement"]["score"]
