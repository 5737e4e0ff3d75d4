"""The privacy list's one decision (scorestream.privacy): keys, suppression, erasure."""

from __future__ import annotations

import hashlib

from hypothesis import given
from hypothesis import strategies as st

from scorestream.privacy import (
    PrivacyList,
    Restriction,
    contact_key,
    event_subjects,
    subject_key,
)
from tests.factories import T0, make_event


def test_a_subject_key_is_the_sha256_of_kind_and_identifier_and_holds_no_plaintext() -> None:
    key = subject_key("user", "ada-42")
    assert key == hashlib.sha256(b"user:ada-42").hexdigest()
    assert "ada" not in key
    assert subject_key("user", "x") != subject_key("anonymous", "x")  # kinds never collide


def test_emails_are_keyed_as_the_core_keeps_them() -> None:
    assert subject_key("email", "  Ada@Example.COM ") == subject_key("email", "ada@example.com")


def test_a_contact_id_stands_for_its_user_or_anonymous_id() -> None:
    assert contact_key("ada-42") == subject_key("user", "ada-42")
    assert contact_key("anonymous:a-1") == subject_key("anonymous", "a-1")


def test_event_subjects_are_every_identifier_the_event_carries() -> None:
    event = make_event(user_id="u", anonymous_id="a", traits={"email": "E@x.io"})
    assert set(event_subjects(event)) == {("user", "u"), ("anonymous", "a"), ("email", "E@x.io")}
    alias = make_event(kind="alias", user_id="u2", anonymous_id=None, previous_id="old")
    assert ("user", "old") in set(event_subjects(alias))
    group = make_event(kind="group", group_id="acme", traits={"email": "sales@acme.io"})
    assert ("email", "sales@acme.io") not in set(event_subjects(group))  # the account's email, not the person's


def test_an_empty_list_decides_nothing() -> None:
    assert PrivacyList().decide(make_event()) is None
    assert not PrivacyList()


def test_suppression_drops_what_was_sent_or_happened_from_its_instant_on() -> None:
    privacy = PrivacyList({subject_key("user", "user-1"): Restriction("r1", suppressed_from_ms=T0)})
    assert privacy.decide(make_event(timestamp_ms=T0 - 1), record_ms=T0 - 1) is None  # collected before
    assert privacy.decide(make_event(timestamp_ms=T0 - 1), record_ms=T0) == "suppressed"  # sent after
    assert privacy.decide(make_event(timestamp_ms=T0), record_ms=None) == "suppressed"
    assert privacy.decide(make_event(user_id="someone-else", timestamp_ms=T0 + 5)) is None


def test_erasure_drops_the_past_by_event_time_and_lets_new_collection_in() -> None:
    privacy = PrivacyList({subject_key("anonymous", "a-1"): Restriction("r2", erased_before_ms=T0)})
    old = make_event(user_id=None, anonymous_id="a-1", timestamp_ms=T0 - 1)
    assert privacy.decide(old, record_ms=T0 + 10_000) == "erased"  # a late record of the erased past
    assert privacy.decide(make_event(user_id=None, anonymous_id="a-1", timestamp_ms=T0)) is None
    assert privacy.contact_erased("anonymous:a-1")
    assert not privacy.contact_erased("user-1")


def test_a_suppressed_email_catches_an_event_that_carries_it() -> None:
    privacy = PrivacyList({subject_key("email", "ada@example.com"): Restriction("r3", suppressed_from_ms=0)})
    event = make_event(kind="identify", user_id="new-id", traits={"email": "ADA@example.com"})
    assert privacy.decide(event) == "suppressed"


def test_erased_wins_over_suppressed_and_lifting_an_entry_lets_events_in() -> None:
    privacy = PrivacyList()
    privacy.put(subject_key("user", "user-1"), Restriction("r4", suppressed_from_ms=0))
    privacy.put(subject_key("email", "e@x.io"), Restriction("r5", erased_before_ms=T0 + 1))
    event = make_event(traits={"email": "e@x.io"})
    assert privacy.decide(event) == "erased"
    privacy.put(subject_key("email", "e@x.io"), None)
    privacy.put(subject_key("user", "user-1"), None)
    assert privacy.decide(event) is None and len(privacy) == 0


@given(
    suppressed=st.one_of(st.none(), st.integers(0, 100)),
    erased=st.one_of(st.none(), st.integers(0, 100)),
    event_ms=st.integers(0, 100),
    record_ms=st.one_of(st.none(), st.integers(0, 100)),
)
def test_the_decision_is_a_function_of_the_instants_only(
    suppressed: int | None, erased: int | None, event_ms: int, record_ms: int | None
) -> None:
    decision = Restriction("r", suppressed, erased).decide(event_ms, record_ms)
    latest = event_ms if record_ms is None else max(event_ms, record_ms)
    expected = (
        "erased"
        if erased is not None and event_ms < erased
        else "suppressed"
        if suppressed is not None and latest >= suppressed
        else None
    )
    assert decision == expected
