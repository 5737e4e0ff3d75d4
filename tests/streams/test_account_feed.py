"""The contacts stage's feed to the accounts stage (``streams.account_feed.AccountFeed``)."""

from __future__ import annotations

from typing import Any, cast

from kafka_io.partitioner import partition_for
from schemas.accounts import decode_members
from scorestream import ContactState, apply_events
from streams.account_feed import AccountFeed
from streams.app import Wiring
from tests.factories import DEFAULT_MODEL, T0, make_event

PARTITIONS = 4


class FakeTopic:
    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    def send_soon(self, **kwargs: Any) -> None:
        self.sent.append(kwargs)


class FakeWiring:
    def __init__(self) -> None:
        self.accounts_topic = FakeTopic()


def feed() -> tuple[AccountFeed, FakeTopic]:
    w = FakeWiring()
    return AccountFeed(cast(Wiring, w), DEFAULT_MODEL, PARTITIONS), w.accounts_topic


def member(user: str, account: str, *more: Any) -> ContactState:
    group = make_event(user_id=user, kind="group", event=None, group_id=account, timestamp_ms=T0)
    return apply_events(None, user, [group, *more], DEFAULT_MODEL)


def test_one_record_per_partition_keyed_by_an_account_and_no_repeats() -> None:
    f, topic = feed()
    accounts = [f"acct-{i}" for i in range(12)]
    states = [member(f"u{i}", account) for i, account in enumerate(accounts)]
    for state in states:
        f.add(state)
    f.add(apply_events(None, "b2c", [make_event(user_id="b2c")], DEFAULT_MODEL))  # no account: nothing
    f.flush()
    partitions = {partition_for(a.encode(), PARTITIONS) for a in accounts}
    assert sorted(r["partition"] for r in topic.sent) == sorted(partitions)
    seen = []
    for record in topic.sent:
        items = decode_members(record["value"]).items
        assert {partition_for(u.account_id.encode(), PARTITIONS) for u in items} == {record["partition"]}
        assert record["key"] == items[0].account_id.encode()
        seen += [u.contact_id for u in items]
    assert sorted(seen) == sorted(f"u{i}" for i in range(12))
    # the same states again: nothing to send; a changed one: only it
    topic.sent.clear()
    for state in states:
        f.add(state)
    f.flush()
    assert topic.sent == []
    f.add(
        apply_events(
            states[3], "u3", [make_event(user_id="u3", event="Demo Requested", timestamp_ms=T0 + 1)], DEFAULT_MODEL
        )
    )
    f.flush()
    assert [u.contact_id for r in topic.sent for u in decode_members(r["value"]).items] == ["u3"]


def test_within_a_batch_only_the_latest_update_of_a_member_is_sent() -> None:
    f, topic = feed()
    f.add(member("u1", "acme"))
    f.add(member("u1", "acme", make_event(user_id="u1", event="Demo Requested", timestamp_ms=T0 + 1)))
    f.flush()
    items = [u for r in topic.sent for u in decode_members(r["value"]).items]
    assert len(items) == 1 and items[0].score > 0


def test_moving_sends_a_departure_to_the_old_account() -> None:
    f, topic = feed()
    moved = member("u1", "old", make_event(user_id="u1", kind="group", event=None, group_id="new", timestamp_ms=T0 + 5))
    f.add(moved)
    f.flush()
    items = {u.account_id: u for r in topic.sent for u in decode_members(r["value"]).items}
    assert items["new"].member and not items["old"].member

    # it stays gone: later changes of the contact send nothing more to the old account
    topic.sent.clear()
    f.add(
        apply_events(
            moved, "u1", [make_event(user_id="u1", event="Demo Requested", timestamp_ms=T0 + 9)], DEFAULT_MODEL
        )
    )
    f.flush()
    assert [u.account_id for r in topic.sent for u in decode_members(r["value"]).items] == ["new"]
