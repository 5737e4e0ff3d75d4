"""The worker's index of due contacts (streams/timers.py)."""

from __future__ import annotations

from streams.timers import TimerIndex


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
