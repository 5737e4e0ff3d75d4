"""Identity resolution: routing keys, anonymous visitors, links, redeliveries and aliases."""

from __future__ import annotations

from scorestream import IdentityLink, resolve
from scorestream.identity import MergeInto, Routed, anonymous_contact_id, routing_key
from tests.factories import HOUR, T0, make_event

# --- routing_key ---------------------------------------------------------------------------------


def test_routing_key_anonymous_event_goes_to_identity() -> None:
    assert routing_key(make_event(user_id=None, anonymous_id="a1")) == ("identity", "a1")


def test_routing_key_linking_event_goes_to_identity_by_anonymous_id() -> None:
    assert routing_key(make_event(user_id="u1", anonymous_id="a1")) == ("identity", "a1")


def test_routing_key_user_only_event_goes_straight_to_contact() -> None:
    assert routing_key(make_event(user_id="u1", anonymous_id=None)) == ("contact", "u1")


def test_routing_key_alias_goes_to_identity_by_previous_id() -> None:
    alias = make_event(kind="alias", event=None, user_id="u1", anonymous_id="a9", previous_id="old-id")
    assert routing_key(alias) == ("identity", "old-id")


def test_anonymous_contact_id() -> None:
    assert anonymous_contact_id("a1") == "anonymous:a1"


# --- resolve -------------------------------------------------------------------------------------


def test_anonymous_events_go_to_the_anonymous_contact_until_linked() -> None:
    first = make_event(user_id=None, anonymous_id="a1")
    link, routed = resolve(None, "a1", first)
    assert link is None
    assert routed == [Routed(key="anonymous:a1", event=first)]
    second = make_event(user_id=None, anonymous_id="a1", timestamp_ms=T0 + HOUR)
    link, routed = resolve(link, "a1", second)
    assert link is None
    assert routed == [Routed(key="anonymous:a1", event=second)]


def test_user_and_anonymous_id_creates_link_and_merges() -> None:
    linking = make_event(user_id="u1", anonymous_id="a1", message_id="link-msg", timestamp_ms=T0 + 5)
    link, routed = resolve(None, "a1", linking)
    assert link == IdentityLink(contact_id="u1", linked_ms=T0 + 5, message_id="link-msg")
    assert routed == [
        Routed(key="anonymous:a1", merge=MergeInto(target="u1", message_id="link-msg")),
        Routed(key="u1", event=linking),
    ]
    # from now on anonymous-only events for a1 go to the user
    later = make_event(user_id=None, anonymous_id="a1", timestamp_ms=T0 + HOUR)
    link2, routed = resolve(link, "a1", later)
    assert link2 == link
    assert routed == [Routed(key="u1", event=later)]


def test_redelivered_linking_message_re_emits_the_merge() -> None:
    linking = make_event(user_id="u1", anonymous_id="a1", message_id="link-msg")
    link, first = resolve(None, "a1", linking)
    link_again, again = resolve(link, "a1", linking)
    assert link_again == link
    assert again == first
    assert any(r.merge is not None for r in again)


def test_other_events_of_the_linked_user_do_not_re_merge() -> None:
    link, _ = resolve(None, "a1", make_event(user_id="u1", anonymous_id="a1", message_id="link-msg"))
    other = make_event(user_id="u1", anonymous_id="a1", message_id="other")
    link2, routed = resolve(link, "a1", other)
    assert link2 == link
    assert routed == [Routed(key="u1", event=other)]


def test_later_different_user_does_not_move_the_link() -> None:
    link, _ = resolve(None, "a1", make_event(user_id="u1", anonymous_id="a1", message_id="first"))
    claim = make_event(user_id="u2", anonymous_id="a1", message_id="second", timestamp_ms=T0 - HOUR)
    link2, routed = resolve(link, "a1", claim)
    assert link2 == link
    assert link2 is not None
    assert link2.contact_id == "u1"
    assert routed == [Routed(key="u2", event=claim)]
    anon = make_event(user_id=None, anonymous_id="a1")
    assert resolve(link2, "a1", anon)[1] == [Routed(key="u1", event=anon)]


def test_alias_merges_both_previous_contacts() -> None:
    alias = make_event(
        kind="alias", event=None, user_id="u1", anonymous_id=None, previous_id="old", message_id="alias-msg"
    )
    key = routing_key(alias)[1]
    link, routed = resolve(None, key, alias)
    merge = MergeInto(target="u1", message_id="alias-msg")
    assert link == IdentityLink(contact_id="u1", linked_ms=alias.timestamp_ms, message_id="alias-msg")
    assert routed == [
        Routed(key="anonymous:old", merge=merge),
        Routed(key="old", merge=merge),
        Routed(key="u1", event=alias),
    ]
    # redelivery re-emits both merges
    assert resolve(link, key, alias) == (link, routed)


def test_event_whose_user_id_is_the_key_is_not_a_link() -> None:
    event = make_event(user_id="same", anonymous_id="same")
    link, routed = resolve(None, "same", event)
    assert link is None
    assert routed == [Routed(key="same", event=event)]
