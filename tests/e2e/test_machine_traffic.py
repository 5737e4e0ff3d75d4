"""End to end on the real broker: machine traffic in e-mail (docs/model.md "Machine traffic").
Realistic sequences published to events.email, scored by the real worker with the bundled default
model, read from the real API: a security scanner's clicks and Apple's privacy proxy's open earn
nothing and are explained; the person's later click, and a person reading an e-mail, count."""

from __future__ import annotations

import math
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from tests.e2e.service import Service

SECOND, MINUTE, HOUR, DAY = 1_000, 60_000, 3_600_000, 86_400_000
HALF_LIFE = 14 * DAY  # the default model's engagement.half_life
APPLE_PROXY = "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko)"
IPHONE = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148"
LINKS = [f"https://example.com/{p}" for p in ("pricing", "demo", "blog", "unsubscribe")]


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat().replace("+00:00", "Z")


def email(
    user: str, name: str, mid: str, ts: int, message: str, link: str | None = None, agent: str | None = None
) -> bytes:
    props: dict[str, Any] = {"email_id": message, "campaign_id": "spring-launch"}
    if link is not None:
        props["link_url"] = link
    body: dict[str, Any] = {
        "type": "track",
        "messageId": mid,
        "timestamp": iso(ts),
        "userId": user,
        "event": name,
        "properties": props,
    }
    if agent is not None:
        body["context"] = {"userAgent": agent}
    return orjson.dumps(body)


def contact(api: Any, user: str) -> dict[str, Any] | None:
    r = api.get(f"/v1/contacts/{user}")
    return r.json() if r.status_code == 200 else None


def decayed(points: float, at: int, as_of: int) -> float:
    return points * math.pow(2.0, -(as_of - at) / HALF_LIFE)


def test_scanner_and_proxy_traffic_earn_nothing_and_say_why_people_count(service: Service) -> None:
    run = uuid.uuid4().hex[:8]
    scanned, apple, reader = f"scanned-{run}", f"apple-{run}", f"reader-{run}"
    t = int(time.time() * 1000) - 2 * DAY
    records: list[tuple[str, bytes | None, bytes]] = []

    def add(user: str, *messages: bytes) -> None:
        records.extend(("email", user.encode(), m) for m in messages)

    # a security gateway: the four links fetched 1-3 s after delivery (sent before the delivery:
    # the order of arrival does not matter), then the person clicks the pricing link 2 h later
    add(
        scanned,
        *(
            email(scanned, "Email Link Clicked", f"{run}-s{i}", t + (1 + i * 2 // 3) * SECOND, "e-1", link)
            for i, link in enumerate(LINKS)
        ),
        email(scanned, "Email Delivered", f"{run}-sd", t, "e-1"),
        email(scanned, "Email Link Clicked", f"{run}-sh", t + 2 * HOUR, "e-1", LINKS[0], IPHONE),
    )
    # Apple Mail Privacy Protection: the proxy's open at delivery, a real click the next day
    add(
        apple,
        email(apple, "Email Delivered", f"{run}-ad", t, "e-2"),
        email(apple, "Email Opened", f"{run}-ao", t + 900, "e-2", agent=APPLE_PROXY),
        email(apple, "Email Link Clicked", f"{run}-ac", t + DAY, "e-2", LINKS[1], IPHONE),
    )
    # a person: opens 40 minutes after delivery, clicks one link a minute later
    add(
        reader,
        email(reader, "Email Delivered", f"{run}-rd", t, "e-3"),
        email(reader, "Email Opened", f"{run}-ro", t + 40 * MINUTE, "e-3", agent=IPHONE),
        email(reader, "Email Link Clicked", f"{run}-rc", t + 41 * MINUTE, "e-3", LINKS[0], IPHONE),
    )
    service.publish(records)

    with service.client() as api:
        body = service.wait_for(
            lambda: (
                (c := contact(api, scanned)) is not None and c["engagement"]["machine"] and c["engagement"]["top"] and c
            )
        )
        as_of = int(datetime.fromisoformat(body["engagement"]["as_of"]).timestamp() * 1000)
        assert body["engagement"]["score"] == pytest.approx(decayed(6, t + 2 * HOUR, as_of), abs=1e-5)
        [machine] = body["engagement"]["machine"]
        assert (machine["rule"], machine["events"]) == ("email-clicked", 4)
        assert machine["reason"] == "4 links clicked within 3 s of delivery"

        body = service.wait_for(lambda: (c := contact(api, apple)) is not None and c["engagement"]["machine"] and c)
        as_of = int(datetime.fromisoformat(body["engagement"]["as_of"]).timestamp() * 1000)
        assert body["engagement"]["score"] == pytest.approx(decayed(6, t + DAY, as_of), abs=1e-5)
        assert [(m["rule"], m["points"], m["reason"]) for m in body["engagement"]["machine"]] == [
            ("email-opened", 0.0, "opened by a privacy proxy")
        ]

        body = service.wait_for(
            lambda: (c := contact(api, reader)) is not None and len(c["engagement"]["top"]) == 2 and c
        )
        as_of = int(datetime.fromisoformat(body["engagement"]["as_of"]).timestamp() * 1000)
        expected = decayed(2, t + 40 * MINUTE, as_of) + decayed(6, t + 41 * MINUTE, as_of)
        assert body["engagement"]["score"] == pytest.approx(expected, abs=1e-5)
        assert body["engagement"]["machine"] == []
