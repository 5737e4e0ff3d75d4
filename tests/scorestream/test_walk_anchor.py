"""The walk from an anchor at an instant shared by later checkpoints: what those checkpoints did
at that instant is walked again from the anchor, not kept from the previous walk as well (it was
announced twice: a threshold crossed, a stage entered)."""

from __future__ import annotations

import pytest

from tests.scorestream.test_walk import test_a_walk_resumed_from_any_kept_position_equals_a_walk_from_the_anchor as case


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("pages", [9, 17, 30])
def test_many_events_at_one_instant_folded_in_batches_walk_alike_from_the_anchor(pages: int, seed: int) -> None:
    """Pricing pages all at one instant, delivered shuffled four at a time to a model that folds
    past 8 hits: walks resumed from every kept position equal the walk from the anchor."""
    case.hypothesis.inner_test([(0, 0)] * pages, seed, True)  # type: ignore[attr-defined]
