"""A regulation's erase order in the fold (``scorestream.fold.step`` with ``Erase``): the contact
and everything before the order in its inbox are forgotten, what it held is returned for the
report, and what comes after starts a new contact as if the erased past had never been seen."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from scorestream import Event
from scorestream.fold import Absorb, Erased, Message, Tick, step
from scorestream.identity import MergeInto
from scorestream.privacy import Erase
from tests.factories import DAY, DEFAULT_MODEL, HOUR, T0, make_event
from tests.scorestream.test_fold import STORY, identify, order, page, track

MODEL = DEFAULT_MODEL
ERASE = Erase("reg-1")


def anonymous_page(ts: int, anonymous_id: str, user: str = "ann") -> Event:
    return make_event(kind="page", event=None, user_id=user, anonymous_id=anonymous_id, path="/", timestamp_ms=ts)


AFTER = [
    identify(T0 + 10 * DAY),
    page("/pricing", T0 + 10 * DAY + HOUR),
    order(T0 + 11 * DAY, "o-9", 90.0),
]


def test_an_erase_order_forgets_the_contact_and_reports_what_it_held() -> None:
    held = step(None, "ann", [*STORY, anonymous_page(T0 + DAY, "a-1")], MODEL).state
    assert held is not None and held.email and "a-1" in held.anonymous_ids

    folded = step(held, "ann", [ERASE], MODEL)
    assert folded.state is None and folded.outgoing == [] and folded.triggers == [] and folded.next_due_ms is None
    (erased,) = folded.erased
    assert erased.regulation_id == "reg-1"
    assert erased.state is held  # what the report names: user id, anonymous ids, email, account
    assert erased.state.email == "ann@acme.com" and erased.state.user_id == "ann"


def test_an_order_for_nobody_finds_nothing() -> None:
    assert step(None, "ghost", [ERASE], MODEL).erased == (Erased("reg-1", None),)
    assert step(None, "ghost", [ERASE, ERASE], MODEL).erased == (Erased("reg-1", None), Erased("reg-1", None))


def test_messages_before_the_order_are_erased_with_it_and_reported() -> None:
    # an inbox holding the contact's last events and the order: they are folded into what is
    # reported (their anonymous id leads further), and nothing of them is kept
    folded = step(None, "ann", [*STORY, anonymous_page(T0 + DAY, "a-2"), Tick(T0 + 3 * DAY), ERASE], MODEL)
    assert folded.state is None and folded.triggers == []
    (erased,) = folded.erased
    assert erased.state is not None and "a-2" in erased.state.anonymous_ids


def test_what_follows_the_order_is_a_new_contact_as_if_the_past_had_never_been_seen() -> None:
    before = step(None, "ann", STORY, MODEL).state
    erased_then = step(before, "ann", [ERASE, *AFTER], MODEL)
    fresh = step(None, "ann", AFTER, MODEL)
    assert erased_then.state == fresh.state
    assert erased_then.triggers == fresh.triggers  # announced as a new contact's journey
    assert erased_then.next_due_ms == fresh.next_due_ms
    assert len(erased_then.erased) == 1 and erased_then.erased[0].state is not None


def test_the_same_inbox_split_across_batches_gives_the_same_outcome() -> None:
    inbox: list[Message] = [*STORY, ERASE, *AFTER]
    whole = step(None, "ann", list(inbox), MODEL)
    for cut in range(1, len(inbox)):
        first = step(None, "ann", inbox[:cut], MODEL)
        second = step(first.state, "ann", inbox[cut:], MODEL)
        assert second.state == whole.state, cut
        assert len(first.erased) + len(second.erased) == 1


@settings(max_examples=40, deadline=None)
@given(st.permutations(AFTER), st.permutations(STORY), st.booleans())
def test_replaying_what_the_gate_lets_through_after_an_erasure_gives_the_fresh_state(
    after: list[Event], story: list[Event], duplicate: bool
) -> None:
    """Erase, then a replay of the sources: the erased past is dropped before the fold (the
    privacy list), the events after it arrive in any order, duplicated or not: the state is the
    one of a contact that only ever saw them."""
    state = step(None, "ann", story, MODEL).state
    state = step(state, "ann", [ERASE], MODEL).state
    assert state is None
    replayed = step(state, "ann", [*after, *(after if duplicate else [])], MODEL).state
    assert replayed == step(None, "ann", AFTER, MODEL).state


def test_a_forwarding_record_is_erased_and_names_its_owner_and_forwards_nothing() -> None:
    merged = step(None, "anonymous:a-1", [anonymous_page(T0, "a-1", user=""), MergeInto("ann", "m-1")], MODEL)
    forwarding = merged.state
    assert forwarding is not None and forwarding.merged_into == "ann"
    folded = step(forwarding, "anonymous:a-1", [ERASE, track("Late", T0 + HOUR, user="")], MODEL)
    (erased,) = folded.erased
    assert erased.state is not None and erased.state.merged_into == "ann"
    # after the order, the contact is new: the late event is its own, not forwarded to ann
    assert folded.outgoing == [] and folded.state is not None and folded.state.merged_into is None


def test_an_absorbed_state_before_the_order_is_reported_with_its_ids() -> None:
    other = step(None, "bob", [identify(T0, user="bob")], MODEL).state
    assert other is not None
    folded = step(None, "ann", [identify(T0), Absorb(other), ERASE], MODEL)
    (erased,) = folded.erased
    assert erased.state is not None and "bob" in erased.state.merged_ids
    assert folded.state is None
