"""Replay and the privacy list: a replay leaves out every event the list restricts, as the worker's
ingest does, so it never rebuilds an erased person (an anonymous history linked to them included)
while everyone else's state is what it would be without them."""

from __future__ import annotations

from analytics.replay import Fold, _restricted_row, views
from scorestream.privacy import PrivacyList, Restriction, subject_key
from tests.analytics.test_replay import AS_OF, MODEL, records
from tests.factories import MINUTE, T0, iso, segment_json

ERASED_AT = T0 + 10 * MINUTE


def person() -> list[tuple[str, bytes | None, int]]:
    """Someone with an anonymous history, an identify (linking it), and a visit after the erasure."""
    return [
        ("web", segment_json(type="page", userId=None, anonymousId="anon-x", timestamp=iso(T0)), T0),
        (
            "web",
            segment_json(
                type="identify",
                userId="erased-user",
                anonymousId="anon-x",
                timestamp=iso(T0 + MINUTE),
                traits={"email": "x@example.com"},
            ),
            T0 + MINUTE,
        ),
        ("web", segment_json(type="page", userId="erased-user", anonymousId=None, timestamp=iso(T0 + 2 * MINUTE)), T0),
    ]


def erased() -> PrivacyList:
    privacy = PrivacyList()
    for kind, value in (("user", "erased-user"), ("anonymous", "anon-x"), ("email", "x@example.com")):
        privacy.put(subject_key(kind, value), Restriction("r", erased_before_ms=ERASED_AT))  # type: ignore[arg-type]
    return privacy


def test_a_replay_does_not_rebuild_an_erased_person() -> None:
    others = records(600, 30)
    plain = Fold(MODEL)
    plain.run(others)
    replayed = Fold(MODEL, privacy=erased())
    replayed.run([*person(), *others])
    assert replayed.suppressed == 3
    assert not {"erased-user", "anonymous:anon-x"} & set(replayed.contacts)
    assert not any("anon-x" in key for key in replayed.links)
    assert views(replayed.contacts, MODEL, AS_OF) == views(plain.contacts, MODEL, AS_OF)  # the others untouched

    # without the list the same records build them
    unrestricted = Fold(MODEL)
    unrestricted.run([*person(), *others])
    assert "erased-user" in unrestricted.contacts and unrestricted.suppressed == 0


def test_events_after_the_erasure_are_new_collection() -> None:
    after = (
        "web",
        segment_json(type="page", userId="erased-user", anonymousId=None, timestamp=iso(ERASED_AT + MINUTE)),
        ERASED_AT + MINUTE,
    )
    f = Fold(MODEL, privacy=erased())
    f.run([*person(), after])
    assert f.suppressed == 3 and set(f.contacts) == {"erased-user"}  # started anew from its new event


def test_archived_rows_are_decided_by_the_ids_they_hold() -> None:
    privacy = erased()
    raw = segment_json(type="identify", userId="someone", traits={"email": "X@example.com"})
    assert _restricted_row(privacy, raw, T0, T0, "identify", "someone", "", "")  # by the email of its traits
    assert _restricted_row(privacy, b"{}", T0, T0, "alias", "someone", "", "anon-x")  # an alias's previous id
    assert not _restricted_row(privacy, b"{}", T0, T0, "track", "someone", "", "anon-x")  # previous id: alias only
    assert not _restricted_row(privacy, b"{}", ERASED_AT, ERASED_AT, "page", "erased-user", "", "")  # after it
    assert _restricted_row(privacy, "{}", ERASED_AT, ERASED_AT - 1, "page", "erased-user", None, None)
