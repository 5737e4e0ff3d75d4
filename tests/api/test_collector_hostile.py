"""The collector makes the worker's decision for every message of the hostile corpus
(tests/hostile/): a single-message route answers 400 with the reason the worker dead-letters it
with, or accepts it and publishes a message the worker reads as the same event; in a batch the
message is dead-lettered alone with that reason, or the whole body is refused with it when the
body itself cannot be read (a message that is not JSON, past a double, or nested past orjson's
1,024 levels). Never a 500: Segment's libraries retry those for ever."""

from __future__ import annotations

import pytest

from schemas.events import decode
from tests import hostile
from tests.api.test_collector import AUTH, NOW, FakePublisher, make_app, post

CORPUS = hostile.load()
NOT_A_MESSAGE = {"empty-value", "whitespace-only"}  # in a batch these are no element at all


@pytest.mark.parametrize("case", CORPUS, ids=[case.name for case in CORPUS])
def test_a_single_message_route_decides_as_the_worker(case: hostile.Case) -> None:
    kind = case.route_type
    if kind is None:  # the route would set the type this message gets wrong: see the batch test
        assert case.reason == "unknown_type"
        return
    pub = FakePublisher()
    r = post(make_app(pub), f"/v1/{kind}", content=case.raw, auth=AUTH, headers={"content-type": "application/json"})
    if case.reason != hostile.ACCEPTED:
        assert r.status_code == 400, r.text
        assert r.json()["code"] == case.reason, r.json()
        assert pub.records == []
        return
    assert r.status_code == 200, r.text
    [sent] = pub.records
    assert sent.topic == "events.web"
    assert decode(sent.value, "web", NOW) == decode(case.raw, "web", NOW)


@pytest.mark.parametrize("case", [c for c in CORPUS if c.name not in NOT_A_MESSAGE], ids=lambda c: c.name)
def test_a_batch_dead_letters_the_message_alone_or_refuses_an_unreadable_body(case: hostile.Case) -> None:
    pub = FakePublisher()
    valid = b'{"type":"track","event":"Demo Requested","userId":"u-ok","timestamp":"2026-09-21T14:00:00Z"}'
    body = b'{"batch":[' + valid + b"," + case.raw + b"]}"
    r = post(make_app(pub), "/v1/batch", content=body, auth=AUTH, headers={"content-type": "application/json"})
    if r.status_code == 400:  # the body cannot be read: nothing published, the reason is the message's
        assert case.reason != hostile.ACCEPTED
        assert r.json()["code"] == case.reason, r.json()
        assert pub.records == []
        return
    assert r.status_code == 200, r.text
    answer = r.json()
    published = [x for x in pub.records if x.topic == "events.web"]
    dead = [x for x in pub.records if x.topic == "events.deadletter"]
    if case.reason == hostile.ACCEPTED:
        assert (answer["accepted"], answer["rejected"], len(published), dead) == (2, [], 2, [])
        assert decode(published[1].value, "web", NOW) == decode(case.raw, "web", NOW)
        return
    assert answer["accepted"] == 1 and len(published) == 1
    assert [(x["index"], x["reason"]) for x in answer["rejected"]] == [(1, case.reason)]
    [letter] = dead
    assert dict(letter.headers or [])["scorestream.reason"] == case.reason.encode()
    assert letter.value  # the message as it would have been published


def test_the_corpus_reaches_both_routes() -> None:
    batch_only = {c.name for c in CORPUS if c.route_type is None}
    assert batch_only == {c.name for c in CORPUS if c.reason == "unknown_type"}  # every other one: both routes
    assert len(CORPUS) - len(batch_only) >= 100
