"""Rate limits per API key and scope, in this process's memory (the ``limits`` library).

A key has a budget per scope of the routes it calls (``SCORESTREAM_RATE_LIMIT_READ``, ``_WRITE``,
``_ADMIN``): an admin key reading contacts spends its read budget. The window moves (``limits``'
moving window: at most ``amount`` requests in any window of the period, each request's time kept
until it leaves the window, so a key holds at most ``amount`` entries; a hit is O(1) plus a
list insert). Beyond the budget: 429 ``rate_limited`` with ``Retry-After`` and the IETF draft's
``RateLimit-Limit``, ``RateLimit-Remaining`` and ``RateLimit-Reset``.

Requests without a valid key can be limited per client address
(``SCORESTREAM_RATE_LIMIT_UNAUTHENTICATED``, off by default): 429 in place of their 401.

The counts live in the process: ``N`` API processes each let a key make its budget (docs/api.md,
"Rate limits"). Why the moving window over ``limits``' sliding window counter: in limits 5.8 a
moving-window hit costs about half (4 against 8 µs, ``python -m timeit``), and it is exact.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from limits import RateLimitItem
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter

from api.errors import ApiError
from schemas.api_keys import KeyEntry


class InlineExpiryStorage(MemoryStorage):
    """``limits``' in-memory storage, whose expired entries the requests themselves drop, at most
    once a second, instead of a new timer thread every 10 ms.

    ``MemoryStorage`` starts a ``threading.Timer`` of 10 ms whenever the previous one has finished
    and a request comes: about 100 threads a second while requests flow, most of the limit's cost
    at a few thousand requests a second (3.7% of a core at 1,400 a second against 0.6% without
    limits; 1.7% with this class). Here the same sweep (``__expire_events``) runs on the event loop's thread once a
    second; until it runs, a moving window ignores the expired entries anyway (it compares
    times). Relies on the private names of limits 5.8 (pinned); ``tests/api/test_limits.py``
    checks no thread starts and the entries stay bounded."""

    SWEEP_S = 1.0

    def __init__(self) -> None:
        super().__init__()
        self._next_sweep = 0.0
        self._sweep: Callable[[], None] = getattr(self, "_MemoryStorage__expire_events")  # noqa: B009 (mangled)

    def _MemoryStorage__schedule_expiry(self) -> None:  # replaces the timer thread's scheduling
        now = time.monotonic()
        if now >= self._next_sweep:
            self._next_sweep = now + self.SWEEP_S
            self._sweep()


class RateLimits:
    """The budgets of every key of a process, per scope (None: that scope is not limited)."""

    def __init__(self, items: dict[str, RateLimitItem | None]) -> None:
        self.items = items
        self.storage = InlineExpiryStorage()
        self.limiter = MovingWindowRateLimiter(self.storage)

    def charge(self, key: KeyEntry, scope: str, cost: int = 1, paid: int = 0) -> None:
        """Spend ``cost`` of ``key``'s ``scope`` budget, of which ``paid`` was spent already (by
        the route's dependency), else 429 (nothing more spent). A cost above the whole budget
        costs the whole budget: a batch larger than the limit still goes through, once per window."""
        item = self.items.get(scope)
        if item is None:
            return
        due = min(cost, item.amount) - paid
        if due > 0 and not self.limiter.hit(item, key.name, scope, cost=due):
            raise self.refusal(item, (key.name, scope), f"API key {key.name!r} is over its {scope} rate limit ({item})")

    def charge_address(self, address: str) -> None:
        """Count a request without a valid key against its client address (``unauthenticated``,
        off by default); 429 beyond, in place of the 401."""
        item = self.items.get("unauthenticated")
        if item is not None and not self.limiter.hit(item, "address", address):
            raise self.refusal(item, ("address", address), f"too many requests without a valid API key ({item})")

    def refusal(self, item: RateLimitItem, ids: tuple[str, str], what: str) -> ApiError:
        """The 429 for the spent budget ``ids``: when a request fits again, and the headers."""
        reset_at, remaining = self.limiter.get_window_stats(item, *ids)
        reset_s = max(1, math.ceil(reset_at - time.time()))
        headers = {
            "Retry-After": str(reset_s),
            "RateLimit-Limit": str(item.amount),
            "RateLimit-Remaining": str(max(0, remaining)),
            "RateLimit-Reset": str(reset_s),
            "RateLimit-Policy": f"{item.amount};w={item.get_expiry()}",
        }
        return ApiError(429, "rate_limited", f"{what} in this API process; retry in {reset_s} s", headers=headers)
