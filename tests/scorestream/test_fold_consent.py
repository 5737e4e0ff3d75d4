"""Consent through the whole fold from raw Segment JSON (replay's ``Fold``: the worker's stages in
one process, the same codecs; a shadow or a replay from the archive reads the same raw records):
anonymous history, an identify that links it, consent-less email events, a withdrawal arriving
late. Any order, any batching, duplicates: the same contacts and the same scores."""

from __future__ import annotations

import random
from typing import Any

from analytics.replay import Fold
from schemas.model_file import load_model
from schemas.state import decode_state
from scorestream import engagement_at
from tests.factories import DAY, HOUR, T0, iso, segment_json

MODEL = load_model()  # consent: engagement needs analytics or marketing; default granted
NOW = T0 + 10 * DAY

Record = tuple[str, bytes | None, int]


def record(channel: str, mid: str, ts: int, consent: dict[str, bool] | None = None, **fields: Any) -> Record:
    context = {"consent": {"categoryPreferences": consent}} if consent is not None else {}
    return (channel, segment_json(messageId=mid, timestamp=iso(ts), context=context, **fields), ts)


def history() -> list[Record]:
    user, anon = "crm-7", "anon-7"
    out = [
        record("web", f"p{i}", T0 + i * HOUR, {"analytics": True}, type="page", userId=None, anonymousId=anon)
        for i in range(4)
    ]
    out.append(
        record(
            "web", "id", T0 + 5 * HOUR, None, type="identify", userId=user, anonymousId=anon, traits={"email": "a@b.c"}
        )
    )
    out += [
        record("email", f"e{i}", T0 + DAY + i * HOUR, None, event="Email Opened", userId=user, anonymousId=None)
        for i in range(6)
    ]
    # the withdrawal: a page view whose consent denies, stamped after the first email open
    out.append(
        record(
            "web",
            "withdraw",
            T0 + DAY + HOUR // 2,
            {"analytics": False, "marketing": False},
            type="page",
            userId=user,
            anonymousId=anon,
        )
    )
    return out


def fold(records: list[Record], batch: int) -> Fold:
    f = Fold(MODEL)
    f.run(records, batch=batch)
    return f


def test_a_late_withdrawal_in_any_order_and_batching_gives_the_same_contact() -> None:
    records = history()
    expected = fold(records, batch=1000)
    user = decode_state(expected.contacts["crm-7"])
    assert user.consent == {"analytics": False, "marketing": False}
    assert "anon-7" in user.anonymous_ids and user.email == "a@b.c"
    score = engagement_at(user, MODEL, NOW)
    later_opens = [f'"messageId":"e{i}"'.encode() for i in range(1, 6)]
    first_open_only = fold([r for r in records if r[1] and not any(m in r[1] for m in later_opens)], batch=1000)
    assert score == engagement_at(decode_state(first_open_only.contacts["crm-7"]), MODEL, NOW)
    never_withdrawn = fold([r for r in records if r[1] and b'"withdraw"' not in r[1]], batch=1000)
    assert score.score < engagement_at(decode_state(never_withdrawn.contacts["crm-7"]), MODEL, NOW).score
    rng = random.Random(7)
    for batch in (1, 3, 1000):
        shuffled = records + rng.sample(records, 4)
        rng.shuffle(shuffled)
        other = fold(shuffled, batch=batch)
        again = decode_state(other.contacts["crm-7"])
        assert engagement_at(again, MODEL, NOW) == score
        assert again.hits == user.hits and again.consent_log == user.consent_log
