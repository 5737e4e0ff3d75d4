"""The worker's population feed without Kafka: the index follows changed contacts, the topic's
records update the current model, segments come from it."""

from __future__ import annotations

from typing import cast

from schemas.model_file import load_model
from schemas.population import encode_record
from schemas.settings import Settings
from scorestream import Event, apply_events
from scorestream.population import PopulationModel, customer_facts
from scorestream.rfm import RfmBoundaries, rfm_score, summary
from streams.app import Wiring
from streams.population_feed import PartitionIndex, PopulationFeed
from tests.factories import DAY, T0, make_event

MODEL = load_model()


def feed() -> PopulationFeed:
    return PopulationFeed(cast(Wiring, None), Settings(), MODEL)  # add/apply/segment_of never touch Kafka


def buy(contact: str, order_id: str, total: float, ts: int = T0) -> list[Event]:
    return [
        make_event(
            user_id=contact,
            event="Order Completed",
            channel="store",
            timestamp_ms=ts,
            properties={"order_id": order_id, "total": total},
        )
    ]


def test_the_index_follows_customers_and_forgets_non_customers_and_merged_contacts() -> None:
    f = feed()
    visitor = apply_events(None, "v-1", [make_event(user_id="v-1")], MODEL)
    f.add(2, visitor)
    assert f.indexes[2].customers == {}
    buyer = apply_events(None, "u-1", buy("u-1", "o1", 30.0), MODEL)
    f.add(2, buyer)
    assert f.indexes[2].customers["u-1"][1] == customer_facts(buyer.value)
    refunded = apply_events(
        buyer,
        "u-1",
        [make_event(user_id="u-1", event="Order Refunded", timestamp_ms=T0 + DAY, properties={"order_id": "o1"})],
        MODEL,
    )
    f.add(2, refunded)
    assert "u-1" not in f.indexes[2].customers
    again = apply_events(None, "u-2", buy("u-2", "o2", 10.0), MODEL)
    f.add(2, again)
    again.merged_into = "u-3"  # a forwarding record keeps its ledger: it must not count twice
    f.add(2, again)
    assert "u-2" not in f.indexes[2].customers


def test_adds_during_a_rebuild_are_remembered_as_newer_than_the_table() -> None:
    f = feed()
    f.indexes[1] = PartitionIndex(touched=set())
    f.add(1, apply_events(None, "v-9", [make_event(user_id="v-9")], MODEL))
    f.add(1, apply_events(None, "u-9", buy("u-9", "o9", 5.0), MODEL))
    assert f.indexes[1].touched == {"v-9", "u-9"}


def test_the_current_model_and_segments_come_from_the_topic() -> None:
    f = feed()
    buyer = apply_events(None, "u-1", buy("u-1", "o1", 30.0), MODEL)
    assert f.current() is None and f.segment_of(buyer, T0 + DAY) is None
    bounds = RfmBoundaries((float(T0 - 4 * DAY),) * 4, (1.0,) * 4, (10.0,) * 4, 10)
    model = PopulationModel(T0, 10, (0, 1, 2, 3), bounds, 0.001)
    f.apply(*encode_record(model))
    assert f.current() == model
    expected = rfm_score(summary(buyer.value, T0 + DAY), bounds, MODEL.value.segments)
    assert expected is not None and (expected.r, expected.f, expected.m) == (5, 1, 5)
    assert f.segment_of(buyer, T0 + DAY) == expected.segment == "New Customers"
    f.apply(b"model", b"\xc1")  # an unreadable record is skipped, the model stays
    assert f.current() == model
