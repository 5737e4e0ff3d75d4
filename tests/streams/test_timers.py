"""The worker's index of due contacts (streams/timers.py)."""

from __future__ import annotations

import asyncio

import msgspec

from scorestream.fold import Tick
from streams.timers import BEATS_PER_INTERVAL, TickClock, TimerIndex, beat_interval_s


def test_due_contacts_come_out_once_in_due_order_and_superseded_instants_are_ignored() -> None:
    index = TimerIndex()
    index.set("a", 300)
    index.set("b", 100)
    index.set("a", 50)  # moved earlier
    index.set("c", 200)
    index.set("c", None)  # nothing due any more
    assert index.pop_due(250, limit=10) == [("a", 50), ("b", 100)]
    assert index.pop_due(10_000, limit=10) == []
    assert len(index) == 0


def test_the_heap_stays_bounded_when_due_instants_keep_moving() -> None:
    index = TimerIndex()
    for i in range(50_000):
        index.set(f"c{i % 100}", 1_000_000 + i)
    assert len(index) == 100
    assert len(index._heap) <= 2 * 100 + 1024
    # the last instants set: c<k> at 1,049,900 + k
    assert index.pop_due(1_049_949, limit=1000) == [(f"c{k}", 1_049_900 + k) for k in range(50)]


class _Wall:
    """The clock's wall time, moved by the test."""

    def __init__(self, ms: int) -> None:
        self.ms = ms

    def __call__(self) -> int:
        return self.ms


def _clock(due: dict[str, int], wall: _Wall, max_ticks: int) -> tuple[TickClock, list[list[tuple[str, Tick]]]]:
    """A clock over a table holding ``due`` (contact -> next due instant), and what each beat sent."""
    table = [(key.encode(), msgspec.msgpack.encode({"journey": {"next_due_ms": ms}})) for key, ms in due.items()]
    sent: list[list[tuple[str, Tick]]] = []
    clock = TickClock(TimerIndex(), lambda: frozenset({0}), lambda: table, sent.append, max_ticks, wall_ms=wall)
    return clock, sent


def _beat(clock: TickClock, wall: _Wall, beats: int, interval_s: float = 1.0) -> None:
    """``beats`` beats of the worker's clock timer, the wall clock moving a beat between them."""

    async def run() -> None:
        for _ in range(beats):
            wall.ms += int(beat_interval_s(interval_s) * 1000)
            await clock.tick()

    asyncio.run(run())


def test_the_clock_beats_ten_times_an_interval() -> None:
    assert BEATS_PER_INTERVAL == 10
    assert beat_interval_s(1.0) == 0.1
    assert beat_interval_s(0.5) == 0.05


def test_a_seconds_due_contacts_are_ticked_in_slices_across_it_each_within_a_beat_of_its_due_time() -> None:
    start = 1_790_000_000_000
    due = {f"c{i}": start + i for i in range(1_000)}  # one due every millisecond for a second
    wall = _Wall(start)
    clock, sent = _clock(due, wall, max_ticks=5_000)
    _beat(clock, wall, beats=11)
    ticked = {key: tick.at_ms for batch in sent for key, tick in batch}
    assert ticked.keys() == due.keys()
    assert len(sent) >= 10 and max(len(batch) for batch in sent) <= 101, [len(b) for b in sent]  # 100 ms of dues
    assert all(0 <= ticked[key] - due[key] <= 100 for key in due)  # a beat (100 ms) late at most


def test_a_crowd_due_at_one_instant_is_paced_over_the_beats_earliest_first() -> None:
    start = 1_790_000_000_000
    due = {f"c{i:04}": start + (i % 5) for i in range(2_000)}  # a campaign's carts, due together
    wall = _Wall(start)
    clock, sent = _clock(due, wall, max_ticks=1_000)  # 1,000 a second: 100 a beat
    _beat(clock, wall, beats=20)
    assert [len(batch) for batch in sent] == [100] * 20
    order = [due[key] for batch in sent for key, _ in batch]
    assert order == sorted(order)
    assert {key for batch in sent for key, _ in batch} == due.keys()
    _beat(clock, wall, beats=2)
    assert len(sent) == 20, "nothing is ticked twice"
