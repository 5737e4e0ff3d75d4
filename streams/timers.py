"""Time-driven transitions: the worker's clock, sent to contacts as ticks when they come due.

Each contact's state says when time alone would next change it (``journey.next_due_ms``: a cart
timer, a lapse timer, engagement decaying past a guard or a threshold). The worker keeps those
instants for the contacts of the partitions it owns in a heap; its clock beats
``BEATS_PER_INTERVAL`` times every ``timer_interval_s`` and each beat sends a
:class:`~scorestream.fold.Tick` to each contact due by then, on the contacts topic, keyed like its
events. So the ticks of a second reach the contacts stage in slices across it, not all at once
(at most ``max_ticks / BEATS_PER_INTERVAL`` a beat: a crowd of contacts due at the same instant,
the carts of a campaign's clicks, is paced over the beats that follow). The contacts agent applies
a tick like any message (so it is ordered with the contact's events, written to the changelog,
and replayed after a crash), walks the lifecycle to the tick's instant, emits the triggers and
records the contact's next due instant.

Nothing is held only in memory: the due instants live in the contact states (the contacts table,
restored from its changelog), and the heap is rebuilt from the table whenever the worker's
partitions change (start, rebalance). A tick lost in a crash is sent again, since the contact
still says it is due. A trigger therefore fires at most ``timer_interval_s`` (a beat, when fewer
than ``max_ticks`` a second come due) plus the pipeline's latency after its due time (``make
bench`` measures it).
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

import msgspec

from scorestream.fold import Tick

log = logging.getLogger(__name__)
REBUILD_YIELD_EVERY = 5000
BEATS_PER_INTERVAL = 10
"""Beats of the clock per ``timer_interval_s``: each sends the ticks due by then."""


def beat_interval_s(timer_interval_s: float) -> float:
    """How often the clock beats (the worker's ``clock`` timer)."""
    return timer_interval_s / BEATS_PER_INTERVAL


class _DueView(msgspec.Struct):
    next_due_ms: int | None = None


class _StateView(msgspec.Struct):
    """The one field of a contact state the timer index needs (the decoder skips the rest)."""

    journey: _DueView | None = None
    merged_into: str | None = None


_view_decoder = msgspec.msgpack.Decoder(_StateView)


def due_of(raw: bytes) -> int | None:
    """The next due instant stored in an encoded contact state."""
    view = _view_decoder.decode(raw)
    if view.merged_into is not None or view.journey is None:
        return None
    return view.journey.next_due_ms


class TimerIndex:
    """Due instants of the contacts on this worker's partitions: a heap with lazy deletion."""

    def __init__(self) -> None:
        self.due: dict[str, int] = {}
        self._heap: list[tuple[int, str]] = []

    def set(self, key: str, due_ms: int | None) -> None:
        if due_ms is None:
            self.due.pop(key, None)
            return
        if self.due.get(key) != due_ms:
            self.due[key] = due_ms
            heapq.heappush(self._heap, (due_ms, key))
            if len(self._heap) > 2 * len(self.due) + 1024:  # superseded entries: compact
                self._heap = [(d, k) for k, d in self.due.items()]
                heapq.heapify(self._heap)

    def pop_due(self, now_ms: int, limit: int) -> list[tuple[str, int]]:
        """Up to ``limit`` contacts due at ``now_ms`` (removed: the tick's answer re-adds them)."""
        out: list[tuple[str, int]] = []
        heap = self._heap
        while heap and heap[0][0] <= now_ms and len(out) < limit:
            due, key = heapq.heappop(heap)
            if self.due.get(key) == due:
                del self.due[key]
                out.append((key, due))
        return out

    def clear(self) -> None:
        self.due.clear()
        self._heap.clear()

    def __len__(self) -> int:
        return len(self.due)


class TickClock:
    """Sends ticks to due contacts, a slice a beat (``max_ticks`` per ``timer_interval_s`` at
    most, spread over its ``beats``); rebuilds the index when the assignment changes."""

    def __init__(
        self,
        index: TimerIndex,
        assignment: Callable[[], frozenset[int]],
        table_items: Callable[[], Iterable[tuple[Any, bytes | None]]],
        send_ticks: Callable[[list[tuple[str, Tick]]], None],
        max_ticks: int,
        wall_ms: Callable[[], int] = lambda: int(time.time() * 1000),
        beats: int = BEATS_PER_INTERVAL,
    ) -> None:
        self.index = index
        self.assignment = assignment
        self.table_items = table_items
        self.send_ticks = send_ticks
        self.max_ticks = max_ticks
        self.per_beat = max(1, -(-max_ticks // beats))  # the interval's budget, spread over its beats
        self.wall_ms = wall_ms
        self.built_for: frozenset[int] | None = None
        self.unreadable = 0  # table values skipped by rebuilds (logged with their key)

    async def rebuild(self, partitions: frozenset[int]) -> None:
        self.index.clear()
        count = 0
        for raw_key, raw in self.table_items():
            count += 1
            if count % REBUILD_YIELD_EVERY == 0:
                await asyncio.sleep(0)
            if raw is None:
                continue
            try:
                key = raw_key.decode() if isinstance(raw_key, bytes) else str(raw_key)
                due = due_of(raw)
            except Exception as exc:  # one unreadable state must not stop every contact's timers
                self.unreadable += 1
                log.error(
                    "timer index: contacts key %r: unreadable state (%s: %s); skipped", raw_key, type(exc).__name__, exc
                )
                continue
            self.index.set(key, due)
        self.built_for = partitions
        log.info("timer index rebuilt: %d due contacts on partitions %s", len(self.index), sorted(partitions))

    async def tick(self) -> int:
        """One beat: rebuild if the partitions changed, then tick the contacts due by now (the
        earliest first, at most ``per_beat``; the rest on the next beats)."""
        partitions = self.assignment()
        if partitions != self.built_for:
            await self.rebuild(partitions)
        now = self.wall_ms()
        due = self.index.pop_due(now, self.per_beat)
        if due:
            self.send_ticks([(key, Tick(now)) for key, _ in due])
        return len(due)
