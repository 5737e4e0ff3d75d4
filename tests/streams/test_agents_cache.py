"""The worker's cache of decoded contact states (``streams.agents.DecodedStates``)."""

from __future__ import annotations

from schemas.state import encode
from scorestream import ContactState, apply_events
from streams.agents import DecodedStates
from tests.factories import DEFAULT_MODEL, make_event


def _state(user: str, opens: int) -> ContactState:
    state = apply_events(None, user, [make_event(user_id=user) for _ in range(opens)], DEFAULT_MODEL)
    assert state is not None
    return state


def test_a_cached_state_is_used_only_while_the_stored_bytes_are_the_same() -> None:
    cache = DecodedStates(10)
    state = _state("u1", 2)
    raw = encode(state)
    cache.put("u1", raw, state)
    assert cache.get("u1", bytes(raw)) is state  # equal bytes, another object: still a hit

    other = _state("u1", 3)
    fresh = cache.get("u1", encode(other))  # written by someone else: decoded, not the cached one
    assert fresh is not state and fresh == other
    assert cache.get("u1", None) is None and "u1" not in cache.entries


def test_least_recently_used_entries_go_first_and_zero_disables() -> None:
    cache = DecodedStates(2)
    states = {u: _state(u, 1) for u in ("a", "b", "c")}
    raws = {u: encode(s) for u, s in states.items()}
    cache.put("a", raws["a"], states["a"])
    cache.put("b", raws["b"], states["b"])
    assert cache.get("a", raws["a"]) is states["a"]  # a is now the most recent
    cache.put("c", raws["c"], states["c"])
    assert list(cache.entries) == ["a", "c"]
    cache.drop("a")
    assert list(cache.entries) == ["c"]

    off = DecodedStates(0)
    off.put("a", raws["a"], states["a"])
    assert not off.entries and off.get("a", raws["a"]) == states["a"]
