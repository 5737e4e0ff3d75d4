"""Webhook rules of the core: signatures checked with the reference library, filters, retry schedule."""

from __future__ import annotations

import json
import time

import pytest
import standardwebhooks

from scorestream.delivery import (
    DEFAULT_SCHEDULE_S,
    Filter,
    address_refusal,
    delivery_id,
    headers,
    new_secret,
    outcome,
    retry_delay_s,
    should_disable,
    trigger_payload,
    wants,
)
from scorestream.triggers import make_trigger

SECRET = new_secret(bytes(range(32)))
OTHER = new_secret(bytes(range(1, 33)))


def stage_change(after: str = "mql", model: str = "default@abc") -> dict[str, object]:
    return make_trigger(
        "stage.changed", at_ms=1_700_000_000_000, model_version=model, contact_id="u1", before="lead", after=after
    )


def test_signature_verifies_with_the_standard_webhooks_library() -> None:
    body = trigger_payload(stage_change())
    now = int(time.time())
    hdrs = headers([SECRET], "msg_1", now, body)
    parsed = standardwebhooks.Webhook(SECRET).verify(body, hdrs)
    assert parsed["type"] == "stage.changed"
    assert parsed["data"]["after"] == "mql"
    assert parsed["timestamp"] == "2023-11-14T22:13:20.000Z"
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        standardwebhooks.Webhook(OTHER).verify(body, hdrs)
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        standardwebhooks.Webhook(SECRET).verify(body + b" ", hdrs)


def test_during_a_rotation_both_secrets_sign() -> None:
    body = json.dumps({"type": "x"}).encode()
    hdrs = headers([OTHER, SECRET], "msg_2", int(time.time()), body)
    assert len(hdrs["webhook-signature"].split(" ")) == 2
    standardwebhooks.Webhook(SECRET).verify(body, hdrs)
    standardwebhooks.Webhook(OTHER).verify(body, hdrs)


def test_delivery_id_is_stable_and_distinct_per_subscription() -> None:
    assert delivery_id("trg_a", "wh_1") == delivery_id("trg_a", "wh_1")
    assert delivery_id("trg_a", "wh_1") != delivery_id("trg_a", "wh_2")
    assert delivery_id("trg_a", "wh_1").startswith("msg_")


def test_filters() -> None:
    assert wants(Filter.of(["*"]), stage_change())
    assert not wants(Filter.of(["cart.abandoned"]), stage_change())
    assert wants(Filter.of(["stage.changed"], stages=["mql", "sql"]), stage_change("mql"))
    assert not wants(Filter.of(["stage.changed"], stages=["sql"]), stage_change("mql"))
    threshold = make_trigger(
        "score.threshold_crossed", at_ms=1, model_version="default@abc", contact_id="u1", before={}, after={}
    )
    assert not wants(Filter.of(["*"], stages=["mql"]), threshold), "a stage filter needs a stage"
    assert wants(Filter.of(["*"], models=["default"]), stage_change())
    assert wants(Filter.of(["*"], models=["default@abc"]), stage_change())
    assert not wants(Filter.of(["*"], models=["b2c"]), stage_change())
    segment = make_trigger(
        "rfm.segment_changed", at_ms=1, model_version="m@1", contact_id="u", before="New Customers", after="Champions"
    )
    assert wants(Filter.of(["rfm.segment_changed"], segments=["Champions"]), segment)
    assert not wants(Filter.of(["rfm.segment_changed"], segments=["Lost"]), segment)
    with pytest.raises(ValueError, match="unknown event types"):
        Filter.of(["stage.change"])


def test_group_filter_lets_through_only_those_groups_threshold_crossings() -> None:
    overall = make_trigger(
        "score.threshold_crossed", at_ms=1, model_version="default@abc", contact_id="u1", before={}, after={}
    )
    hardware = {**overall, "group": "hardware"}
    training = {**overall, "group": "training"}
    only_hardware = Filter.of(["score.threshold_crossed"], groups=["hardware"])
    assert wants(only_hardware, hardware)
    assert not wants(only_hardware, training)
    assert not wants(only_hardware, overall), "the overall score's crossings carry no group"
    assert not wants(Filter.of(["*"], groups=["hardware"]), stage_change()), "a group filter needs a group"
    assert wants(Filter.of(["*"], groups=["hardware", "training"]), training)
    assert wants(Filter.of(["score.threshold_crossed"]), hardware), "no group filter: every group"
    assert not wants(Filter.of(["score.threshold_crossed"], groups=[]), hardware), "an empty list matches nothing"
    assert not wants(Filter.of(["*"], groups=["hardware"], models=["b2c"]), hardware), "every filter holds"


def test_retry_schedule() -> None:
    assert retry_delay_s(DEFAULT_SCHEDULE_S, 1, 0.5) == pytest.approx(5.0)
    assert 0.9 * 300 <= retry_delay_s(DEFAULT_SCHEDULE_S, 2, 0.0) <= 300  # type: ignore[operator]
    assert 300 <= retry_delay_s(DEFAULT_SCHEDULE_S, 2, 0.999) <= 1.1 * 300  # type: ignore[operator]
    assert retry_delay_s(DEFAULT_SCHEDULE_S, 9, 0.5) == pytest.approx(86400)
    assert retry_delay_s(DEFAULT_SCHEDULE_S, 10, 0.5) is None, "ten attempts, then the dead letter"
    assert retry_delay_s(DEFAULT_SCHEDULE_S, 1, 0.5, retry_after_s=42) == 42
    assert retry_delay_s(DEFAULT_SCHEDULE_S, 1, 0.5, retry_after_s=10**9) == 86400


def test_outcomes_and_disabling() -> None:
    assert [outcome(c) for c in (200, 204, 410, 429, 500, 404)] == [
        "success",
        "success",
        "gone",
        "retry",
        "retry",
        "retry",
    ]
    day = 86_400_000
    assert not should_disable(None, 10 * day, 5 * day)
    assert not should_disable(6 * day, 10 * day, 5 * day)
    assert should_disable(5 * day, 10 * day, 5 * day)


@pytest.mark.parametrize(
    ("address", "refused"),
    [
        ("127.0.0.1", True),
        ("10.1.2.3", True),
        ("192.168.0.1", True),
        ("172.16.5.4", True),
        ("169.254.169.254", True),
        ("100.64.0.1", True),
        ("0.0.0.0", True),
        ("::1", True),
        ("fd00::1", True),
        ("fe80::1%eth0", True),
        ("::ffff:127.0.0.1", True),
        ("224.0.0.1", True),
        ("8.8.8.8", False),
        ("2606:4700:4700::1111", False),
        ("64:ff9b::7f00:1", True),  # NAT64 (well-known prefix) of 127.0.0.1
        ("64:ff9b::a9fe:a9fe", True),
        ("64:ff9b::808:808", False),  # NAT64 of a public address: DNS64 networks reach it so
        ("64:ff9b:1::808:808", True),  # local-use NAT64: refused whatever it embeds
        ("::7f00:1", True),  # IPv4-compatible (deprecated)
        ("::808:808", True),
        ("::ffff:0:7f00:1", True),  # SIIT
        ("::ffff:8.8.8.8", False),
        ("2002:7f00:1::", True),  # 6to4 of 127.0.0.1
        ("2002:c0a8:0101::1", True),  # 6to4 of 192.168.1.1
        ("2002:808:808::1", False),
        ("2001::1", True),  # Teredo
        ("2001:0:4136:e378:8000:63bf:3fff:fdd2", True),
        ("fec0::1", True),  # site-local (deprecated)
        ("feff::1", True),
    ],
)
def test_address_refusal(address: str, refused: bool) -> None:
    assert (address_refusal(address) is not None) is refused
