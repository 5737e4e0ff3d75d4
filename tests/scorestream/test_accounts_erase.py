"""An erased member leaves its account entirely (``scorestream.accounts``: ``erased`` updates):
no snapshot names it any more, its stale snapshots cannot bring it back, in any order, and new
collection after the erasure makes a new member."""

from __future__ import annotations

import itertools

import msgspec

from schemas.accounts import MEMBERS_VERSION, MemberBatch, decode_account, decode_members, encode, member_batch
from scorestream import apply_events
from scorestream.accounts import MAX_ERASED, account_view, apply_member_updates, erased_update, erased_updates
from scorestream.privacy import contact_key
from tests.factories import DAY, HOUR, T0, make_event
from tests.scorestream.test_accounts import MODEL, fold, update


def test_an_erased_member_is_removed_and_only_its_key_stays() -> None:
    state = fold(update("ann", "decision_maker", 30.0, T0), update("bob", "buyer", 10.0, T0))
    state, _ = apply_member_updates(state, "acme", [erased_update("ann", "acme", T0 + HOUR)], MODEL)
    assert set(state.members) == {"bob"}
    assert state.erased == {contact_key("ann"): T0 + HOUR}
    assert "ann" not in encode(state).decode(errors="replace")  # the stored account names no erased id
    assert [m.contact_id for m in account_view(state, MODEL, T0 + DAY).members] == ["bob"]
    assert decode_account(encode(state)) == state


def test_stale_snapshots_cannot_bring_an_erased_member_back_in_any_order() -> None:
    updates = [
        update("ann", "decision_maker", 30.0, T0),
        update("ann", "decision_maker", 35.0, T0 + HOUR, traits={"plan": "pro"}, traits_at=(T0 + HOUR, "m-2")),
        update("ann", "decision_maker", 40.0, T0 + 2 * HOUR, member=False),
        erased_update("ann", "acme", T0 + 2 * HOUR),
        update("bob", "buyer", 10.0, T0),
    ]
    outcomes = set()
    for order in itertools.permutations(updates):
        state = fold(*order)
        assert set(state.members) == {"bob"}, order
        outcomes.add((tuple(sorted(state.members.items())), tuple(sorted(state.erased.items()))))
    assert len(outcomes) == 1
    redelivered = fold(*updates, *updates)  # at-least-once: all of them again
    assert set(redelivered.members) == {"bob"}


def test_new_collection_after_the_erasure_is_a_new_member() -> None:
    state = fold(update("ann", "decision_maker", 30.0, T0), erased_update("ann", "acme", T0 + HOUR))
    state = fold(update("ann", "other", 2.0, T0 + DAY), state=state)
    assert state.members["ann"].at_ms == T0 + DAY and state.members["ann"].role == "other"


def test_erased_keys_are_bounded_to_the_latest() -> None:
    updates = [erased_update(f"c-{n}", "acme", T0 + n) for n in range(MAX_ERASED + 5)]
    state = fold(*updates)
    assert len(state.erased) == MAX_ERASED
    assert contact_key("c-0") not in state.erased and contact_key(f"c-{MAX_ERASED + 4}") in state.erased


def test_erased_updates_name_every_account_of_the_contact_at_its_latest_instant() -> None:
    contact = apply_events(
        None,
        "ann",
        [
            make_event(kind="group", event=None, user_id="ann", group_id="old", timestamp_ms=T0),
            make_event(kind="group", event=None, user_id="ann", group_id="acme", timestamp_ms=T0 + HOUR),
        ],
        MODEL,
    )
    assert contact.account_id == "acme"
    got = erased_updates(contact)
    assert [(u.account_id, u.at_ms, u.erased, u.member) for u in got] == [
        ("acme", T0 + HOUR, True, False),
        ("old", T0 + HOUR, True, False),
    ]


def test_a_member_batch_is_version_2_only_when_it_erases() -> None:
    plain = member_batch([update("ann", "buyer", 1.0)])
    assert plain.v == 1 and decode_members(encode(plain)) == plain
    erasing = member_batch([update("ann", "buyer", 1.0), erased_update("bob", "acme", T0)])
    assert erasing.v == MEMBERS_VERSION == 2
    assert decode_members(encode(erasing)).items[1].erased
    # a build before version 2 refuses such a batch rather than reading it as a departure
    old = msgspec.msgpack.decode(encode(erasing), type=MemberBatch)
    assert old.v > 1
