"""The API and the webhook side forget an erased person (issue 18), on the real broker.

- Webhook deliveries: a real dispatcher process retries deliveries of two contacts to a receiver
  that fails them; :func:`api.erasure.forget_deliveries` for one contact tombstones its deliveries
  on the partitions they live on; the API's delivery list (the real route over a delivery log
  following the topic) no longer shows them, nor does a new API process's; the dispatcher stops
  retrying them (the other contact's go on) and, restarted, does not send them again.
- Privacy: the dispatcher follows the privacy list: a trigger about an erased contact's past makes
  no delivery (not even a record); one after the erasure does.
- Views: a contacts replica on RocksDB following a real views topic forgets a tombstoned contact by
  every id and email, and a replica restarted on its store (resuming from its stored offsets) has
  none of them either.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import httpx
import pytest
from aiokafka import AIOKafkaProducer

from api.app import create_api
from api.erasure import api_forgets, forget_deliveries
from api.replica import Replica
from api.webhook_backend import WebhookBackend
from api.webhook_store import DeliveryLog
from kafka_io.clients import KafkaConnection
from kafka_io.topics import ensure_topics
from schemas.model_file import load_model
from schemas.regulations import PrivacyEntry, encode_json
from schemas.settings import Settings
from scorestream import apply_events
from scorestream.delivery import TEST_TYPE, delivery_id, new_secret
from scorestream.privacy import contact_key
from tests.api.view_bytes import view_bytes
from tests.e2e.hooks import Hooks, _read_all, subscription, trigger
from tests.e2e.service import wait_for
from tests.factories import make_event
from tests.webhook_receiver import Receiver

KEY = "e2e-test-key-0123456789"
MODEL = load_model()
PATH = "/erase"


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    r = Receiver().start()
    # every real delivery fails (retried on the schedule), test sends succeed
    r.rules[PATH] = lambda req, seen: (200, {}) if b'"' + TEST_TYPE.encode() + b'"' in req.body else (500, {})
    yield r
    r.stop()


@pytest.fixture(scope="module")
def hooks(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hooks]:
    h = Hooks(
        kafka_bootstrap,
        tmp_path_factory.mktemp("erase-hooks"),
        env_extra={"SCORESTREAM_WEBHOOK_RETRY_SCHEDULE": ",".join(["0.5"] * 200)},
    )
    h.create_topics()
    h.start()
    yield h
    code = h.stop()
    assert code == 0, h.logs()


def attempts(receiver: Receiver, ids: set[str]) -> int:
    return sum(1 for r in receiver.at(PATH) if r.webhook_id in ids)


def api_settings(hooks: Hooks) -> Settings:
    """The API's settings for the dispatcher's deployment (its app id and topics), with a key."""
    base = hooks.settings
    return Settings(
        kafka_bootstrap=base.kafka_bootstrap,
        app_id=base.app_id,
        topic_triggers=base.topic_triggers,
        partitions=base.partitions,
        api_keys=KEY,  # type: ignore[arg-type]
    )


async def route_ids(settings: Settings, backend: WebhookBackend, sub_id: str) -> list[str]:
    """The delivery ids ``GET /v1/webhooks/{id}/deliveries`` lists."""
    contacts = Replica(kafka=KafkaConnection("127.0.0.1:1"), views_topic="c", status_topic="s")
    app = create_api(settings, model=MODEL, replica=contacts, webhooks=backend)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as client:
        r = await client.get(f"/v1/webhooks/{sub_id}/deliveries", headers={"Authorization": f"Bearer {KEY}"})
        assert r.status_code == 200, r.text
        return [d["id"] for d in r.json()["data"]]


def test_forgotten_deliveries_are_gone_from_the_api_and_never_sent_again(hooks: Hooks, receiver: Receiver) -> None:
    tag = f"m{uuid.uuid4().hex[:8]}"
    sub = subscription(receiver.url(PATH), tag, new_secret(os.urandom(32)))
    hooks.subscribe(sub)
    hooks.known(sub, receiver, PATH)
    erased = [trigger(tag, "c-erased", 1), trigger(tag, "c-erased", 2)]
    kept = [trigger(tag, "c-kept", 3)]
    hooks.triggers([*erased, *kept])
    erased_ids = {delivery_id(t["id"], sub.id) for t in erased}
    kept_ids = {delivery_id(t["id"], sub.id) for t in kept}
    # both contacts' deliveries are being retried (the erased one's first is the head of its lane)
    wait_for(lambda: attempts(receiver, kept_ids) >= 2 and attempts(receiver, erased_ids) >= 2, 30, "retries")
    settings = api_settings(hooks)

    async def forget() -> tuple[list[str], int, list[str], list[str], int]:
        backend = WebhookBackend.from_settings(settings)
        await backend.start()
        try:
            await asyncio.wait_for(backend.deliveries.caught_up.wait(), 30)
            await asyncio.wait_for(backend.store.caught_up.wait(), 30)
            before = await route_ids(settings, backend, sub.id)
            count = await forget_deliveries(settings, ["c-erased"], backend.deliveries, regulation_id="r-e2e")
            after = await route_ids(settings, backend, sub.id)
            fresh = DeliveryLog(KafkaConnection.of(settings), settings.deliveries_topic)  # another API process
            await fresh.start()
            try:
                await asyncio.wait_for(fresh.caught_up.wait(), 30)
                others = sorted(fresh.by_id)
            finally:
                await fresh.stop()
            again = await forget_deliveries(settings, ["c-erased"], regulation_id="r-e2e")
            return before, count, after, others, again
        finally:
            await backend.stop()

    before, count, after, others, again = asyncio.run(forget())
    assert erased_ids | kept_ids <= set(before)
    assert count == 2
    assert not erased_ids & set(after) and kept_ids <= set(after)
    assert not erased_ids & set(others) and kept_ids <= set(others)
    assert again == 0  # its tombstones are read: nothing left to forget

    time.sleep(1.0)  # an attempt that was in flight when the command arrived ends
    sent = attempts(receiver, erased_ids)
    kept_before = attempts(receiver, kept_ids)
    time.sleep(4.0)
    assert attempts(receiver, erased_ids) == sent, hooks.logs()  # no retry any more
    assert attempts(receiver, kept_ids) > kept_before  # the other contact's still go on
    latest = latest_records(hooks)
    assert {latest[d] for d in erased_ids} == {None}  # the last record of each is a tombstone
    assert all(latest[d] is not None for d in kept_ids)

    hooks.stop()  # restarted: recovery reads the tombstones and skips them
    hooks.start()
    hooks.known(sub, receiver, PATH, timeout=60)
    kept_before = attempts(receiver, kept_ids)
    time.sleep(4.0)
    assert attempts(receiver, erased_ids) == sent, hooks.logs()
    assert attempts(receiver, kept_ids) > kept_before
    log = (hooks.data_dir / "dispatcher.log").read_text()
    assert all(f"delivery {d} forgotten" in log for d in erased_ids)  # by the running dispatcher
    assert "c-erased" not in log  # logs name deliveries, never the contact


def test_the_dispatcher_sends_nothing_of_an_erased_contacts_past(hooks: Hooks, receiver: Receiver) -> None:
    """A trigger still unread when the regulation came (or read again) makes no delivery: the
    dispatcher follows the privacy list; a later trigger (new collection) is delivered."""
    tag = f"m{uuid.uuid4().hex[:8]}"
    sub = subscription(receiver.url(PATH), tag, new_secret(os.urandom(32)))
    hooks.subscribe(sub)
    hooks.known(sub, receiver, PATH)
    past, kept = trigger(tag, "c-past", 1), trigger(tag, "c-other", 2)
    erased_at = int(past["at_ms"]) + 1
    entry = PrivacyEntry(regulation_id="r-past", erased_before_ms=erased_at)
    hooks.publish(hooks.settings.privacy_topic, [(contact_key("c-past").encode(), encode_json(entry), None)])
    time.sleep(1.5)  # the dispatcher reads the entry within a fetch (0.5 s)
    later = trigger(tag, "c-past", 5)
    later["at_ms"] = erased_at + 1000
    hooks.triggers([past, kept, later])
    wanted = {delivery_id(t["id"], sub.id) for t in (kept, later)}
    wait_for(lambda: wanted <= {r.webhook_id for r in receiver.at(PATH)}, 20, "deliveries", hooks.logs)
    time.sleep(1.0)
    assert delivery_id(past["id"], sub.id) not in {r.webhook_id for r in receiver.at(PATH)}
    assert delivery_id(past["id"], sub.id) not in latest_records(hooks)  # not even recorded


def latest_records(hooks: Hooks) -> dict[str, bytes | None]:
    """The last record of each delivery id on the deliveries topic (None: a tombstone)."""
    records = asyncio.run(_read_all(hooks.bootstrap, hooks.settings.deliveries_topic))
    return {r.key.decode(): r.value for r in sorted(records, key=lambda r: (r.partition, r.offset))}


# -- views -------------------------------------------------------------------------------------


def test_a_replica_on_disk_forgets_a_tombstoned_contact_and_a_restart_does_not_bring_it_back(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    suffix = uuid.uuid4().hex[:8]
    settings = Settings(kafka_bootstrap=kafka_bootstrap, app_id=f"erase-views-{suffix}", partitions=2)
    asyncio.run(ensure_topics(settings))
    identify = make_event(kind="identify", user_id="u-1", anonymous_id="a-1", traits={"email": "Ann@Acme.com"})
    page = make_event(kind="page", event=None, channel="web", user_id="u-1", anonymous_id="a-2", path="/pricing")
    other = make_event(kind="identify", user_id="u-2", anonymous_id="b-1", traits={"email": "bob@acme.com"})
    views = [
        (b"u-1", view_bytes(apply_events(None, "u-1", [identify, page], MODEL), MODEL)),
        (b"u-2", view_bytes(apply_events(None, "u-2", [other], MODEL), MODEL)),
    ]
    person = ["u-1", "a-1", "a-2", "ann@acme.com"]

    async def publish(records: Sequence[tuple[bytes, bytes | None]]) -> None:
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
        await producer.start()
        try:
            for key, value in records:
                await producer.send_and_wait(settings.views_topic, value, key=key)
        finally:
            await producer.stop()

    def replica() -> Replica:
        return Replica(
            kafka=KafkaConnection.of(settings),
            views_topic=settings.views_topic,
            status_topic=settings.status_topic,
            store_dir=tmp_path / "api" / settings.app_id,
        )

    async def first_run() -> None:
        await publish(views)
        r = replica()
        await r.start()
        try:
            await asyncio.wait_for(r.caught_up.wait(), 30)
            await wait_async(lambda: all(r.find(i) is not None for i in person), "the person's views")
            assert not api_forgets(r, ["u-1"], ["a-1", "a-2"], ["ann@acme.com"])
            await publish([(b"u-1", None)])  # the worker's tombstone for the erased contact
            await wait_async(lambda: api_forgets(r, ["u-1"], ["a-1", "a-2"], ["Ann@Acme.com"]), "forgotten")
            assert r.store.anonymous_owner("a-1") is None and r.store.email_owner("ann@acme.com") is None
        finally:
            await r.stop()

    async def restarted() -> None:
        r = replica()
        await r.start()
        try:
            await asyncio.wait_for(r.caught_up.wait(), 30)
            assert [r.find(i) for i in person] == [None] * len(person)
            assert r.store.anonymous_owner("a-2") is None and r.store.owned("u-1") == set()
            found = r.find("bob@acme.com")
            assert found is not None and found.view.contact_id == "u-2"
        finally:
            await r.stop()

    asyncio.run(first_run())
    asyncio.run(restarted())


async def wait_async(check: Callable[[], bool], what: str) -> None:
    """Until ``check()`` holds (20 s at most)."""
    deadline = time.monotonic() + 20.0
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)
