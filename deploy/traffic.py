"""Realistic synthetic Segment traffic from a seed: for ``make demo``, tests and benchmarks.

Contacts are drawn Zipf-like (a few very active, a long tail); each starts anonymous and may
identify. Events mix website pages and e-commerce, email engagement and offline-store orders.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

TITLES = [
    "CEO",
    "VP Marketing",
    "Head of Growth",
    "Marketing Manager",
    "Engineer",
    "Student",
    "Director of Sales",
    "Analyst",
]
INDUSTRIES = ["software", "retail", "e-commerce", "manufacturing", "education", "financial services", "media"]
COUNTRIES = ["US", "GB", "DE", "PL", "CZ", "HR", "FR", "BR", "IN"]
DOMAINS = ["acme.com", "globex.io", "initech.pl", "gmail.com", "umbrella.cz", "example.edu", "hooli.hr"]
ACCOUNTS = 400
PAGES = [
    "/",
    "/pricing",
    "/blog/rfm-explained",
    "/blog/lead-scoring",
    "/demo",
    "/careers",
    "/products/shoes",
    "/products/bag",
    "/docs",
]
PRODUCTS = [("sku-1", "Shoes", 89.0), ("sku-2", "Bag", 129.0), ("sku-3", "Watch", 349.0), ("sku-4", "Coat", 599.0)]


@dataclass(frozen=True)
class Record:
    channel: str
    key: bytes | None
    value: bytes
    contact: int


def iso(ms: int) -> str:
    """ISO 8601 UTC with a trailing ``Z``, as Segment producers write event times."""
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat().replace("+00:00", "Z")


class Traffic:
    """Seeded generator; the same seed gives the same messages.

    Event times are spread at random over ``[start_ms, start_ms + span_ms)`` (a backfill: each
    contact's events out of order), or with ``live_jitter_ms`` stamped at generation time minus up
    to that much (live traffic: SDKs batch and clocks differ by seconds, not days).
    """

    def __init__(
        self,
        contacts: int,
        seed: int = 7,
        start_ms: int = 1_790_000_000_000,
        span_ms: int = 30 * 86_400_000,
        live_jitter_ms: int | None = None,
    ):
        self.live_jitter_ms = live_jitter_ms
        self.rng = random.Random(seed)
        self.contacts = contacts
        self.start_ms = start_ms
        self.span_ms = span_ms
        self.seq = 0
        self.identified: set[int] = set()
        weights = [1.0 / (rank + 1) ** 1.1 for rank in range(contacts)]
        total = sum(weights)
        acc = 0.0
        self._cdf: list[float] = []
        for w in weights:
            acc += w / total
            self._cdf.append(acc)

    def _pick(self) -> int:
        import bisect

        return min(bisect.bisect_left(self._cdf, self.rng.random()), self.contacts - 1)

    def user_id(self, c: int) -> str:
        return f"user-{c}"

    def anonymous_id(self, c: int) -> str:
        return f"anon-{c}"

    def email(self, c: int) -> str:
        return f"person{c}@{DOMAINS[c % len(DOMAINS)]}"

    def _base(self, c: int, kind: str, ts: int) -> dict[str, Any]:
        self.seq += 1
        msg: dict[str, Any] = {"type": kind, "messageId": f"m-{self.seq}", "timestamp": iso(ts)}
        if c in self.identified:
            msg["userId"] = self.user_id(c)
            msg["anonymousId"] = self.anonymous_id(c) if self.rng.random() < 0.5 else None
        else:
            msg["anonymousId"] = self.anonymous_id(c)
            msg["userId"] = None
        return msg

    def message(self) -> tuple[str, int, dict[str, Any]]:
        c = self._pick()
        offset = self.rng.random()
        if self.live_jitter_ms is not None:
            ts = int(time.time() * 1000) - int(offset * self.live_jitter_ms)
        else:
            ts = self.start_ms + int(offset * self.span_ms)
        roll = self.rng.random()
        if c not in self.identified and (roll < 0.06 or 0.70 <= roll < 0.90):
            # newly known: the CRM or the ESP identifies the person with their traits
            self.identified.add(c)
            msg = self._base(c, "identify", ts)
            msg["anonymousId"] = self.anonymous_id(c)
            msg["traits"] = {
                "email": self.email(c),
                "title": TITLES[c % len(TITLES)],
                "industry": INDUSTRIES[c % len(INDUSTRIES)],
                "employees": [10, 80, 400, 2500][c % 4],
                "address": {"country": COUNTRIES[c % len(COUNTRIES)]},
            }
            return "web", c, msg
        if c in self.identified and 0.06 <= roll < 0.08:
            # a B2B contact is tied to its company's account (a few hundred accounts)
            msg = self._base(c, "group", ts)
            company = c % ACCOUNTS
            msg["groupId"] = f"acct-{company}"
            msg["traits"] = {
                "name": f"Company {company}",
                "industry": INDUSTRIES[company % len(INDUSTRIES)],
                "employees": [10, 80, 400, 2500][company % 4],
            }
            return "web", c, msg
        if roll < 0.55:
            msg = self._base(c, "page", ts)
            path = self.rng.choice(PAGES)
            msg["name"] = path.strip("/") or "home"
            msg["properties"] = {"path": path, "url": f"https://shop.example{path}"}
            return "web", c, msg
        if roll < 0.70:
            msg = self._base(c, "track", ts)
            sku, name, price = self.rng.choice(PRODUCTS)
            msg["event"] = self.rng.choice(["Product Viewed", "Product Viewed", "Product Added", "Checkout Started"])
            msg["properties"] = {"product_id": sku, "name": name, "price": price}
            return "web", c, msg
        if roll < 0.90:
            msg = self._base(c, "track", ts)
            msg["event"] = self.rng.choice(
                ["Email Delivered", "Email Opened", "Email Opened", "Email Link Clicked", "Unsubscribed"]
                if roll > 0.895
                else ["Email Delivered", "Email Opened", "Email Link Clicked"]
            )
            msg["properties"] = {"campaign_id": f"cmp-{self.rng.randint(1, 20)}", "email_id": f"e-{self.seq}"}
            return "email", c, msg
        msg = self._base(c, "track", ts)
        sku, name, price = self.rng.choice(PRODUCTS)
        qty = self.rng.randint(1, 3)
        msg["event"] = "Order Completed" if roll < 0.995 else "Order Refunded"
        msg["properties"] = {
            "order_id": f"o-{self.seq}",
            "total": round(price * qty, 2),
            "currency": "EUR",
            "products": [{"product_id": sku, "name": name, "price": price, "quantity": qty}],
        }
        return ("store" if roll < 0.95 else "web"), c, msg

    def records(self, n: int) -> Iterator[Record]:
        for _ in range(n):
            channel, c, msg = self.message()
            key = (msg.get("userId") or msg.get("anonymousId") or "").encode() or None
            yield Record(channel=channel, key=key, value=orjson.dumps(msg), contact=c)
