"""The webhook dispatcher end to end: the real process (``python -m deploy.cli dispatcher``) on the
real broker, delivering to a real local HTTP receiver; signatures checked with the
``standardwebhooks`` package."""

from __future__ import annotations

import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import standardwebhooks

from schemas.webhooks import CommandRecord, SubscriptionRecord
from scorestream.delivery import TEST_TYPE, delivery_id, new_secret
from tests.e2e.hooks import Hooks, now_ms, subscription, trigger
from tests.e2e.service import wait_for
from tests.webhook_receiver import Received, Receiver, hang


def real(path: str, receiver: Receiver) -> list[Received]:
    """Requests at ``path`` that are not test sends."""
    return [r for r in receiver.at(path) if orjson.loads(r.body)["type"] != TEST_TYPE]


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    r = Receiver().start()
    yield r
    r.stop()


@pytest.fixture(scope="module")
def hooks(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hooks]:
    h = Hooks(kafka_bootstrap, tmp_path_factory.mktemp("hooks"))
    h.create_topics()
    h.start()
    yield h
    code = h.stop()
    assert code == 0, h.logs()


def setup_sub(
    hooks: Hooks, receiver: Receiver, path: str, tag: str | None = None
) -> tuple[SubscriptionRecord, str, str]:
    tag = tag or f"m{uuid.uuid4().hex[:8]}"
    secret = new_secret(os.urandom(32))
    sub = subscription(receiver.url(path), tag, secret)
    hooks.subscribe(sub)
    hooks.known(sub, receiver, path)
    return sub, tag, secret


def test_delivered_signed_and_recorded(hooks: Hooks, receiver: Receiver) -> None:
    sub, tag, secret = setup_sub(hooks, receiver, "/signed")
    t = trigger(tag, "c-signed", 1)
    hooks.triggers([t])
    (got,) = wait_for(lambda: real("/signed", receiver), 10, "delivery", hooks.logs)
    verified = standardwebhooks.Webhook(secret).verify(got.body, got.headers)
    assert verified["type"] == "stage.changed" and verified["data"]["id"] == t["id"]
    assert got.webhook_id == delivery_id(t["id"], sub.id)
    assert got.headers["user-agent"] == "scorestream-webhooks/1"
    rec = hooks.record(got.webhook_id, lambda r: r.status == "succeeded")
    assert rec.body.encode() == got.body and rec.key == "c-signed" and rec.trigger_id == t["id"]
    assert secret not in hooks.logs() and secret not in rec.body


def test_retried_with_the_same_id_until_it_succeeds(hooks: Hooks, receiver: Receiver) -> None:
    receiver.rules["/flaky"] = lambda req, seen: (500, {}) if seen < 2 else (200, {})
    sub, tag, secret = setup_sub(hooks, receiver, "/flaky")
    t = trigger(tag, "c-flaky", 1)
    hooks.triggers([t])
    got = wait_for(lambda: [r for r in real("/flaky", receiver)][2:], 10, "third attempt", hooks.logs)
    attempts = real("/flaky", receiver)
    assert len(attempts) == 3 and len({r.webhook_id for r in attempts}) == 1
    assert attempts[0].webhook_id == delivery_id(t["id"], sub.id) == got[0].webhook_id
    for r in attempts:  # each attempt signed afresh, each verifies
        standardwebhooks.Webhook(secret).verify(r.body, r.headers)
    rec = hooks.record(attempts[0].webhook_id, lambda r: r.status == "succeeded")
    assert rec.attempt_count == 3
    assert [(a.outcome, a.status_code) for a in rec.attempts] == [
        ("http_error", 500),
        ("http_error", 500),
        ("success", 200),
    ]


def test_spent_schedule_dead_letters_and_commands_replay(hooks: Hooks, receiver: Receiver) -> None:
    state = {"up": False}
    receiver.rules["/down"] = lambda req, seen: (
        (200, {}) if state["up"] or orjson.loads(req.body)["type"] == TEST_TYPE else (500, {})
    )
    sub, tag, _ = setup_sub(hooks, receiver, "/down")
    t1, t2 = trigger(tag, "c-down-1", 1), trigger(tag, "c-down-2", 2)
    since = now_ms()
    hooks.triggers([t1, t2])
    d1, d2 = delivery_id(t1["id"], sub.id), delivery_id(t2["id"], sub.id)
    dead = hooks.record(d1, lambda r: r.status == "failed")
    assert dead.attempt_count == 4 and "retry schedule spent after 4 attempts" in (dead.reason or "")
    hooks.record(d2, lambda r: r.status == "failed")
    state["up"] = True
    hooks.command(dead.partition, CommandRecord("retry", sub.id, "r1", now_ms(), delivery_id=d1))
    back = hooks.record(d1, lambda r: r.status == "succeeded")
    assert back.attempt_count == 5 and back.attempts[-1].manual
    for p in range(hooks.partitions):  # as the API does: to every partition
        hooks.command(p, CommandRecord("retry_failed", sub.id, "r2", now_ms(), since_ms=since))
    again = hooks.record(d2, lambda r: r.status == "succeeded")
    assert again.attempt_count == 5 and again.scheduled_attempts == 0
    assert [r.webhook_id for r in real("/down", receiver)].count(d1) == 5


def test_410_disables_the_subscription(hooks: Hooks, receiver: Receiver) -> None:
    receiver.rules["/gone"] = lambda req, seen: (200, {}) if orjson.loads(req.body)["type"] == TEST_TYPE else (410, {})
    sub, tag, _ = setup_sub(hooks, receiver, "/gone")
    t1 = trigger(tag, "c-gone", 1)
    hooks.triggers([t1])
    rec = hooks.record(delivery_id(t1["id"], sub.id), lambda r: r.status == "failed")
    assert rec.attempt_count == 1 and "410" in (rec.reason or "")
    stored = wait_for(lambda: (s := hooks.subscriptions().get(sub.id)) and not s.enabled and s, 10, "disabled")
    assert stored.disabled_reason is not None and "410" in stored.disabled_reason
    assert stored.disabled_ms is not None and stored.revision == sub.revision + 1
    t2 = trigger(tag, "c-gone", 2)  # nothing more is sent: recorded failed, replayable later
    hooks.triggers([t2])
    later = hooks.record(delivery_id(t2["id"], sub.id), lambda r: r.status == "failed")
    assert later.reason == "subscription disabled" and later.attempt_count == 0
    assert len(real("/gone", receiver)) == 1


def test_one_contact_in_order_while_the_first_is_retried(hooks: Hooks, receiver: Receiver) -> None:
    first: dict[str, str] = {}

    def rule(req: Received, seen: int) -> tuple[int, dict[str, str]]:
        if orjson.loads(req.body)["type"] == TEST_TYPE:
            return 200, {}
        first.setdefault("id", req.webhook_id)
        return (500, {}) if req.webhook_id == first["id"] and seen < 2 else (200, {})

    receiver.rules["/order"] = rule
    sub, tag, _ = setup_sub(hooks, receiver, "/order")
    ts = [trigger(tag, "c-order", n) for n in range(6)]
    hooks.triggers(ts)
    expected = [delivery_id(t["id"], sub.id) for t in ts]
    wait_for(lambda: len(real("/order", receiver)) >= 8, 15, "all six delivered", hooks.logs)
    time.sleep(0.3)
    arrivals = [r.webhook_id for r in real("/order", receiver)]
    assert arrivals == [expected[0]] * 3 + expected[1:]


def test_a_dead_subscriber_does_not_delay_a_healthy_one(hooks: Hooks, receiver: Receiver) -> None:
    receiver.rules["/hanging"] = hang(5.0)
    tag = f"m{uuid.uuid4().hex[:8]}"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    hanging = subscription(receiver.url("/hanging"), tag, new_secret(os.urandom(32)))
    refused = subscription(f"http://127.0.0.1:{closed_port}/nobody", tag, new_secret(os.urandom(32)))
    hooks.subscribe(hanging)
    hooks.subscribe(refused)
    # written after the two others on the one subscriptions partition: once it is known, they are
    sub_ok, _, _ = setup_sub(hooks, receiver, "/healthy", tag)
    ts = [trigger(tag, f"c-iso-{n % 5}", n) for n in range(40)]
    published = time.time()
    hooks.triggers(ts)
    wait_for(lambda: len(real("/healthy", receiver)) >= 40, 10, "healthy got all", hooks.logs)
    got = real("/healthy", receiver)
    assert {r.webhook_id for r in got} == {delivery_id(t["id"], sub_ok.id) for t in ts}
    assert max(r.at for r in got) - published < 5.0, "the healthy subscriber was held up"
    assert len(real("/hanging", receiver)) >= 1  # the dead ones were tried meanwhile
    records = hooks.deliveries()
    to_refused = [r for r in records.values() if r.subscription_id == refused.id]
    assert to_refused and all(a.outcome == "connection_error" for r in to_refused for a in r.attempts)


def test_pending_retries_survive_a_kill(kafka_bootstrap: str, tmp_path: Path, receiver: Receiver) -> None:
    h = Hooks(kafka_bootstrap, tmp_path, env_extra={"SCORESTREAM_WEBHOOK_RETRY_SCHEDULE": "3,3,3"})
    h.create_topics()
    failing = {"on": True}
    receiver.rules["/restart"] = lambda req, seen: (
        (200, {}) if orjson.loads(req.body)["type"] == TEST_TYPE or not failing["on"] else (500, {})
    )
    h.start()
    try:
        sub, tag, _ = setup_sub(h, receiver, "/restart")
        ts = [trigger(tag, f"c-restart-{n}", n) for n in range(10)]
        expected = {delivery_id(t["id"], sub.id) for t in ts}
        h.triggers(ts)
        wait_for(lambda: {r.webhook_id for r in real("/restart", receiver)} >= expected, 10, "first attempts", h.logs)

        def retrying() -> bool:
            records = h.deliveries()
            return all(d in records and records[d].attempt_count >= 1 for d in expected)

        wait_for(retrying, 10, "first attempts recorded", h.logs)
        assert all(rec.status == "pending" for d, rec in h.deliveries().items() if d in expected)
        h.kill()
        failing["on"] = False
        h.start()
        ok_ids: set[str] = set()

        def all_ok() -> bool:
            ok_ids.update(d for d, rec in h.deliveries().items() if rec.status == "succeeded")
            return expected <= ok_ids

        wait_for(all_ok, 40, "all delivered after the restart", h.logs)
        assert {r.webhook_id for r in real("/restart", receiver)} & expected == expected  # each at least once
        started = time.monotonic()
        assert h.stop() == 0, h.logs()  # SIGTERM: a clean stop
        assert time.monotonic() - started < 15
        assert "recovered" in h.logs()
    finally:
        if h.proc is not None and h.proc.poll() is None:
            h.proc.kill()
            h.proc.wait()


class ConnectionCounter:
    """A TCP listener that only counts connections (anything reaching it would be a leak)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = int(self.sock.getsockname()[1])
        self.count = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            self.count += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()


def test_ssrf_guard_never_connects_to_loopback(kafka_bootstrap: str, tmp_path: Path) -> None:
    host = socket.gethostname()
    addresses = {info[4][0] for info in socket.getaddrinfo(host, 443, type=socket.SOCK_STREAM)}
    if "127.0.0.1" not in addresses:
        pytest.skip(f"{host} does not resolve to 127.0.0.1 here")
    h = Hooks(
        kafka_bootstrap,
        tmp_path,
        env_extra={"SCORESTREAM_WEBHOOK_ALLOW_PRIVATE": "false", "SCORESTREAM_WEBHOOK_RETRY_SCHEDULE": "0.2,0.2"},
    )
    h.create_topics()
    counter = ConnectionCounter()
    tag = f"m{uuid.uuid4().hex[:8]}"
    # a host name that resolves to loopback (refused at connection time) and a literal IP (refused by URL)
    by_name = subscription(f"https://{host}:{counter.port}/hook", tag, new_secret(os.urandom(32)))
    by_ip = subscription(f"https://127.0.0.1:{counter.port}/hook", tag, new_secret(os.urandom(32)))
    h.subscribe(by_name)
    h.subscribe(by_ip)
    h.start()
    try:
        t = trigger(tag, "c-ssrf", 1)
        h.triggers([t])
        for sub in (by_name, by_ip):
            rec = h.record(delivery_id(t["id"], sub.id), lambda r: r.status == "failed", timeout=20)
            assert rec.attempt_count == 3 and all(a.outcome == "refused" for a in rec.attempts), rec
            assert all("loopback" in (a.error or "") for a in rec.attempts), rec.attempts
        by_name_rec = h.deliveries()[delivery_id(t["id"], by_name.id)]
        assert (by_name_rec.attempts[0].error or "").startswith(f"{host}: ")  # the connection-time guard
        assert counter.count == 0
        assert h.stop() == 0, h.logs()
    finally:
        counter.close()
        if h.proc is not None and h.proc.poll() is None:
            h.proc.kill()
            h.proc.wait()


def test_beyond_the_queue_limit_deliveries_wait_on_the_topic_and_come_back_in_order(
    kafka_bootstrap: str, tmp_path: Path, receiver: Receiver
) -> None:
    limit = 3
    h = Hooks(
        kafka_bootstrap,
        tmp_path,
        env_extra={"SCORESTREAM_WEBHOOK_QUEUE_LIMIT": str(limit), "SCORESTREAM_WEBHOOK_RETRY_SCHEDULE": "0.3," * 30},
    )
    h.create_topics()
    up = {"on": False}
    receiver.rules["/backlog"] = lambda req, seen: (
        (200, {}) if up["on"] or orjson.loads(req.body)["type"] == TEST_TYPE else (500, {})
    )
    h.start()
    try:
        sub, tag, _ = setup_sub(h, receiver, "/backlog")
        keys = [f"c-backlog-{k}" for k in range(4)]
        ts = [trigger(tag, keys[n % 4], n) for n in range(20)]
        h.triggers(ts)
        expected = [delivery_id(t["id"], sub.id) for t in ts]
        wait_for(lambda: len(h.deliveries()) >= 21, 10, "all deliveries recorded", h.logs)  # 20 + the probe
        time.sleep(1.0)  # several retry rounds of what is in memory
        tried = {r.webhook_id for r in real("/backlog", receiver)}
        assert 0 < len(tried) <= limit * h.partitions, "only what fits in memory is attempted"
        assert "parking the next" in h.logs()
        # a restart while parked: recovery takes the oldest again and parks the rest
        assert h.stop() == 0, h.logs()
        h.start()
        up["on"] = True
        done: set[str] = set()

        def all_ok() -> bool:
            done.update(d for d, rec in h.deliveries().items() if rec.status == "succeeded")
            return set(expected) <= done

        wait_for(all_ok, 40, "every parked delivery delivered", h.logs)
        arrivals = [r.webhook_id for r in real("/backlog", receiver)]
        for key in keys:  # per contact, first arrivals in trigger order
            mine = [delivery_id(t["id"], sub.id) for t in ts if t["contact_id"] == key]
            firsts = list(dict.fromkeys(a for a in arrivals if a in mine))
            assert firsts == mine, key
        assert "deliveries back in memory" in h.logs()
        assert h.stop() == 0, h.logs()
    finally:
        if h.proc is not None and h.proc.poll() is None:
            h.proc.kill()
            h.proc.wait()


def test_failing_too_long_disables_and_deleting_fails_what_is_pending(
    kafka_bootstrap: str, tmp_path: Path, receiver: Receiver
) -> None:
    h = Hooks(
        kafka_bootstrap,
        tmp_path,
        env_extra={"SCORESTREAM_WEBHOOK_DISABLE_AFTER_S": "1", "SCORESTREAM_WEBHOOK_RETRY_SCHEDULE": "0.3," * 30},
    )
    h.create_topics()
    receiver.rules["/failing"] = lambda req, seen: (500, {})
    receiver.rules["/deleted"] = lambda req, seen: (500, {})
    tag = f"m{uuid.uuid4().hex[:8]}"
    failing = subscription(receiver.url("/failing"), tag, new_secret(os.urandom(32)))
    deleted = subscription(receiver.url("/deleted"), tag, new_secret(os.urandom(32)))
    h.subscribe(failing)
    h.subscribe(deleted)
    h.start()
    try:
        t = trigger(tag, "c-failing", 1)
        h.triggers([t])
        wait_for(lambda: receiver.at("/deleted"), 10, "a first attempt", h.logs)
        h.publish(h.settings.webhooks_topic, [(deleted.id.encode(), None, None)])  # a tombstone
        gone = h.record(delivery_id(t["id"], deleted.id), lambda r: r.status == "failed")
        assert gone.reason == "subscription deleted"
        stored = wait_for(lambda: (s := h.subscriptions().get(failing.id)) and not s.enabled and s, 15, "disabled")
        assert stored.disabled_reason is not None and stored.disabled_reason.startswith("failing since")
        assert stored.failing_since_ms is not None and stored.failing_since_ms <= now_ms() - 1000
        dead = h.record(delivery_id(t["id"], failing.id), lambda r: r.status == "failed")
        assert dead.reason == "subscription disabled" and dead.attempt_count >= 2
        assert f"webhook {failing.id} disabled: failing since" in h.logs()
        assert h.stop() == 0, h.logs()
    finally:
        if h.proc is not None and h.proc.poll() is None:
            h.proc.kill()
            h.proc.wait()


def test_two_dispatchers_share_the_partitions_and_a_rebalance_loses_nothing(
    kafka_bootstrap: str, tmp_path: Path, receiver: Receiver
) -> None:
    first = Hooks(kafka_bootstrap, tmp_path / "a", partitions=4)
    second = Hooks(kafka_bootstrap, tmp_path / "b", partitions=4, suffix=first.suffix)  # the same group
    first.create_topics()
    tag = f"m{uuid.uuid4().hex[:8]}"
    sub = subscription(receiver.url("/shared"), tag, new_secret(os.urandom(32)))
    first.subscribe(sub)
    first.start()
    try:
        sent: list[dict[str, object]] = []

        def send(n: int) -> None:
            batch = [trigger(tag, f"c-shared-{(len(sent) + i) % 40}", len(sent) + i) for i in range(n)]
            first.triggers(batch)
            sent.extend(batch)

        send(100)
        wait_for(lambda: "assigned: [0, 1, 2, 3]" in first.logs(), 30, "first dispatcher joined", first.logs)
        second.start()
        wait_for(lambda: "webhook partitions assigned" in second.logs(), 30, "second dispatcher joined", second.logs)
        send(100)
        wait_for(lambda: first.logs().count("webhook partitions assigned") >= 2, 30, "first one rebalanced", first.logs)
        assert second.stop() == 0, second.logs()
        send(100)
        expected = {delivery_id(str(t["id"]), sub.id) for t in sent}
        wait_for(lambda: {r.webhook_id for r in receiver.at("/shared")} >= expected, 30, "all delivered", first.logs)
        # RangeAssignor: every assignment pairs partition p of both topics; the second one got half
        assignments = []
        for h in (first, second):
            for line in (x for x in h.logs().splitlines() if "Setting newly assigned partitions" in x):
                triggers_parts = set(re.findall(rf"topic='triggers-{first.suffix}', partition=(\d+)", line))
                assert triggers_parts == set(re.findall(r"webhook-commands', partition=(\d+)", line)), line
                assignments.append((h is second, len(triggers_parts)))
        assert (True, 2) in assignments and (False, 2) in assignments
        assert first.stop() == 0, first.logs()
    finally:
        for h in (first, second):
            if h.proc is not None and h.proc.poll() is None:
                h.proc.kill()
                h.proc.wait()
