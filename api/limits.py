"""Rate limits per API key and scope, in this process's memory: a token bucket per key and scope.

A key has a budget per scope of the routes it calls (``SCORESTREAM_RATE_LIMIT_READ``, ``_WRITE``,
``_ADMIN``, parsed by the ``limits`` library: ``2000/second``, ``100 per 5 seconds``): an admin key
reading contacts spends its read budget. The budget is a token bucket holding ``amount`` tokens
that refills at ``amount`` per period, kept as one number per key and scope, the time the bucket
will be full again (the generic cell rate algorithm, GCRA): a request costing ``c`` fits while the
bucket holds ``c`` tokens. A burst of ``amount`` passes at once, then requests pass at the
sustained rate. Beyond the budget: 429 ``rate_limited`` with ``Retry-After`` (when the request
would fit) and the IETF draft's ``RateLimit-Limit``, ``RateLimit-Remaining`` and ``RateLimit-Reset``.

Why not ``limits``' own strategies: its moving window keeps one object per request for a whole
window (thousands per key at a few thousand requests a second), and its in-memory storage sweeps
them from a timer thread started every 10 ms; under ``wrk`` at about 6,700 lookups/s the API's p99
went from 8 ms without limits to 108 ms with one (``bench.api_middleware --middleware-parts``,
docs/performance.md). A bucket is one float per key and scope, updated in place, no thread and no
allocation per request.

Requests without a valid key can be limited per client address
(``SCORESTREAM_RATE_LIMIT_UNAUTHENTICATED``, off by default): 429 in place of their 401. The counts
live in the process: ``N`` API processes each let a key make its budget (docs/api.md, "Rate limits").
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from limits import RateLimitItem

from api.errors import ApiError
from schemas.api_keys import KeyEntry

SWEEP_S = 60.0  # how often full buckets of client addresses are forgotten (their state is the default one)


@dataclass(frozen=True)
class Bucket:
    """A limit as a token bucket: ``amount`` tokens, refilled in ``period_s``."""

    item: RateLimitItem

    @property
    def amount(self) -> int:
        return int(self.item.amount)

    @property
    def period_s(self) -> float:
        return float(self.item.get_expiry())

    @property
    def interval_s(self) -> float:
        """The time one token takes to come back."""
        return self.period_s / self.amount


class RateLimits:
    """The budgets of every key of a process, per scope (None: that scope is not limited)."""

    def __init__(self, items: dict[str, RateLimitItem | None], clock: Callable[[], float] = time.monotonic) -> None:
        self.buckets = {scope: Bucket(item) for scope, item in items.items() if item is not None}
        self.full_at: dict[tuple[str, str], float] = {}  # (who, scope) -> when that bucket is full again
        self.clock = clock
        self._next_sweep = 0.0

    def charge(self, key: KeyEntry, scope: str, cost: int = 1, paid: int = 0) -> None:
        """Spend ``cost`` of ``key``'s ``scope`` budget, of which ``paid`` was spent already (by
        the route's dependency), else 429 (nothing more spent). A cost above the whole budget
        costs the whole budget: a batch larger than the limit still goes through, once the bucket is full."""
        bucket = self.buckets.get(scope)
        if bucket is None:
            return
        due = min(cost, bucket.amount) - paid
        if due > 0 and not self._take(bucket, (key.name, scope), due):
            raise self.refusal(bucket, (key.name, scope), f"API key {key.name!r} is over its {scope} rate limit")

    def charge_address(self, address: str) -> None:
        """Count a request without a valid key against its client address (``unauthenticated``,
        off by default); 429 beyond, in place of the 401."""
        bucket = self.buckets.get("unauthenticated")
        if bucket is None:
            return
        now = self.clock()
        if now >= self._next_sweep:  # addresses come and go: forget those whose bucket is full again
            self._next_sweep = now + SWEEP_S
            self.full_at = {k: t for k, t in self.full_at.items() if k[0] != "address" or t > now}
        if not self._take(bucket, ("address", address), 1):
            raise self.refusal(bucket, ("address", address), "too many requests without a valid API key")

    def _take(self, bucket: Bucket, ids: tuple[str, str], tokens: int) -> bool:
        """Take ``tokens`` from the bucket if it holds them (GCRA: the bucket is full at
        ``full_at``; taking moves that time ``tokens`` intervals later, at most one period ahead)."""
        now = self.clock()
        full_at = max(self.full_at.get(ids, now), now) + tokens * bucket.interval_s
        if full_at - now > bucket.period_s + 1e-9:
            return False
        self.full_at[ids] = full_at
        return True

    def remaining(self, bucket: Bucket, ids: tuple[str, str]) -> tuple[int, float]:
        """Tokens left in the bucket now, and the seconds until one more request fits."""
        now = self.clock()
        ahead = max(0.0, self.full_at.get(ids, now) - now)  # the tokens missing, in time
        tokens = math.floor((bucket.period_s - ahead) / bucket.interval_s + 1e-9)
        return tokens, max(0.0, ahead + bucket.interval_s - bucket.period_s)

    def refusal(self, bucket: Bucket, ids: tuple[str, str], what: str) -> ApiError:
        """The 429 for the spent budget ``ids``: when a request fits again, and the headers."""
        tokens, wait_s = self.remaining(bucket, ids)
        reset_s = max(1, math.ceil(wait_s))
        headers = {
            "Retry-After": str(reset_s),
            "RateLimit-Limit": str(bucket.amount),
            "RateLimit-Remaining": str(max(0, tokens)),
            "RateLimit-Reset": str(reset_s),
            "RateLimit-Policy": f"{bucket.amount};w={bucket.item.get_expiry()}",
        }
        message = f"{what} ({bucket.item}) in this API process; retry in {reset_s} s"
        return ApiError(429, "rate_limited", message, headers=headers)
