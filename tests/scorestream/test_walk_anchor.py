"""The walk from an anchor at an instant shared by later checkpoints: what those checkpoints did
at that instant is walked again from the anchor, not kept from the previous walk as well (it was
announced twice: a threshold crossed, a stage entered)."""

from __future__ import annotations

import random

import pytest

from schemas.state import decode_state, encode
from scorestream import ContactState
from scorestream.fold import step
from tests.factories import T0
from tests.scorestream.test_walk import SMALL, identify, page
from tests.scorestream.test_walk import test_a_walk_resumed_from_any_kept_position_equals_a_walk_from_the_anchor as case


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("pages", [9, 17, 30])
def test_many_events_at_one_instant_folded_in_batches_walk_alike_from_the_anchor(pages: int, seed: int) -> None:
    """Pricing pages all at one instant, delivered shuffled four at a time to a model that folds
    past 8 hits: walks resumed from every kept position equal the walk from the anchor."""
    case.hypothesis.inner_test([(0, 0)] * pages, seed, True)  # type: ignore[attr-defined]


@pytest.mark.parametrize("seed", range(4))
def test_the_history_keeps_the_stays_entered_at_the_anchors_instant(seed: int) -> None:
    """An identified contact with many pages at one instant, folded in batches: after every batch
    the history ends in the journey's stage (the lead entered at the anchor's instant is kept)
    and no crossing is listed twice."""
    events = [page("/pricing", T0) for _ in range(24)] + [identify(T0)]
    random.Random(seed).shuffle(events)
    state: ContactState | None = None
    for a in range(0, len(events), 4):
        state, *_ = step(state, "user-1", events[a : a + 4], SMALL)
        assert state is not None and state.journey is not None
        state = decode_state(encode(state))
        journey = state.journey
        assert journey is not None
        assert journey.history[-1].stage == journey.stage
        assert [e.stage for e in journey.history][:2] == ["subscriber", "lead"]
        assert len(set(journey.fired)) == len(journey.fired)
