"""End to end: ONE contact with 100,000 orders on the store topic and 10,000 trait keys from
identify calls, on the real broker. The contact is readable with every order counted, the worker
keeps running, and no record of the contacts changelog comes near the 1 MB message limit
(the state's bounds: docs/architecture.md, "Bounds").
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

import httpx
import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from schemas.model_file import load_model
from schemas.state import decode_state
from scorestream.contact import MAX_TRAITS
from scorestream.rfm import DAY_MS
from tests.e2e.service import Service
from tests.factories import iso

USER = "whale-1"
ORDERS = 100_000
TRAIT_CALLS = 100
KEYS_PER_CALL = 100  # 10,000 trait keys in all
RATE = load_model().value.rates["USD"]
MESSAGE_LIMIT = 1_048_576  # the producer's max_request_size and the broker's message.max.bytes


def _order(i: int, ts: int) -> bytes:
    total = 0 if i % 1000 == 0 else 1.25  # a free order every thousand: counted, worth nothing
    return orjson.dumps(
        {
            "type": "track",
            "event": "Order Completed",
            "messageId": f"order-{i}",
            "timestamp": iso(ts),
            "userId": USER,
            "properties": {"order_id": f"O-{i:06d}", "total": total, "currency": "USD"},
        }
    )


def _identify(call: int, ts: int) -> bytes:
    traits: dict[str, Any] = {f"attr_{call:03d}_{k:03d}": call * 1000 + k for k in range(KEYS_PER_CALL)}
    if call == 0:
        traits["email"] = "whale@example.com"
    return orjson.dumps(
        {"type": "identify", "messageId": f"identify-{call}", "timestamp": iso(ts), "userId": USER, "traits": traits}
    )


async def _changelog_records(bootstrap: str, topic: str) -> list[tuple[bytes | None, bytes | None]]:
    """Every record of ``topic`` up to its end offsets now."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_bytes=64 << 20,
        max_partition_fetch_bytes=16 << 20,
    )
    await consumer.start()
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        if not partitions:
            await consumer._client.force_metadata_update()  # a topic created since the consumer started
            partitions = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        out: list[tuple[bytes | None, bytes | None]] = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            behind = [tp for tp in tps if await consumer.position(tp) < ends[tp]]
            if not behind:
                break
            for records in (await consumer.getmany(timeout_ms=500)).values():
                out.extend((r.key, r.value) for r in records)
        return out
    finally:
        await consumer.stop()


def test_one_contact_with_100k_orders_and_10k_trait_keys(service: Service) -> None:
    now = int(time.time() * 1000)
    start = now - 12 * DAY_MS
    step = (10 * DAY_MS) // ORDERS  # 8.64 s apart, over ten days
    records: list[tuple[str, bytes | None, bytes]] = [
        ("web", USER.encode(), _identify(c, start - DAY_MS + c * 60_000)) for c in range(TRAIT_CALLS)
    ]
    records += [("store", USER.encode(), _order(i, start + i * step)) for i in range(ORDERS)]
    worker = service.worker
    assert worker is not None
    began = time.monotonic()
    service.publish(records)
    published = time.monotonic() - began

    def scored() -> dict[str, Any] | None:
        try:
            with service.client() as http:
                r = http.get(f"/v1/contacts/{USER}")
        except httpx.HTTPError:
            return None
        if r.status_code != 200:
            return None
        body: dict[str, Any] = r.json()
        rfm = body.get("rfm")
        return body if rfm is not None and rfm["frequency"] == ORDERS else None

    body = service.wait_for(scored, timeout=900, interval=1.0)
    took = time.monotonic() - began
    rfm = body["rfm"]
    free = len(range(0, ORDERS, 1000))
    assert rfm["frequency"] == ORDERS
    assert math.isclose(rfm["monetary"], (ORDERS - free) * 1.25 * RATE, rel_tol=1e-12)
    assert rfm["first_order"] is not None and rfm["last_order"] is not None
    assert body["stage"]["name"] == "customer"
    assert len(body["traits"]) == MAX_TRAITS and body["traits"]["email"] == "whale@example.com"
    assert body["identity"]["email"] == "whale@example.com"
    # the newest identify call's keys are all kept
    assert all(f"attr_{TRAIT_CALLS - 1:03d}_{k:03d}" in body["traits"] for k in range(KEYS_PER_CALL))

    assert worker.poll() is None, service.logs("worker")  # the same process: it never stopped
    assert "Traceback" not in service.logs("worker")

    topic = f"ss-{service.suffix}-contacts-changelog"

    def folded_orders(records: list[tuple[bytes | None, bytes | None]]) -> int:
        states = [decode_state(v) for k, v in records if v is not None and k is not None and USER.encode() in k]
        return max(
            (len(s.value.orders) + s.value.folded.orders for s in states if s.value and s.value.folded), default=0
        )

    # the API's view runs up to a state flush ahead of the changelog (write-behind, docs/architecture.md):
    # read it again until the newest state is there
    deadline = time.monotonic() + 60
    while folded_orders(records_read := asyncio.run(_changelog_records(service.bootstrap, topic))) < ORDERS:
        assert time.monotonic() < deadline, f"the changelog never held all {ORDERS} orders"
        time.sleep(1)
    sizes = [len(v) for _, v in records_read if v is not None]
    assert sizes, f"no record on {topic}"
    largest = max(sizes)
    print(
        f"\n100k orders + 10k trait keys: published in {published:.1f} s, scored in {took:.1f} s; "
        f"{len(sizes)} changelog records, the largest {largest} bytes ({largest / MESSAGE_LIMIT:.1%} of 1 MB)"
    )
    assert largest < MESSAGE_LIMIT // 4  # far from the limit, not just under it
    whale = [decode_state(v) for k, v in records_read if v is not None and k is not None and USER.encode() in k]
    final = max(whale, key=lambda s: (s.value.folded.orders + len(s.value.orders)) if s.value and s.value.folded else 0)
    assert final.value is not None and final.value.folded is not None and final.traits_capped
    assert len(final.value.orders) <= 512 and final.value.folded.orders + len(final.value.orders) == ORDERS
