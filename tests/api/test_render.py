"""The orjson bodies of the contact routes are byte for byte what the pydantic models produce.

FastAPI would serialise ``ContactOut`` / ``BatchGetOut`` with pydantic's Rust core
(``TypeAdapter.dump_json``); ``api.render`` builds the same JSON from plain dicts. These tests
keep the two in step (field order, float and datetime formatting, escaping) and check that the
per-view caches never serve a stale answer. The renderer reads a contact's compact view
(``scorestream.view``); the oracle renders the full state it was made from.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

import httpx
from pydantic import TypeAdapter

from api.app import create_api
from api.population_reader import PopulationReader
from api.render import ContactRenderer
from api.replica import Decoded, Replica, WorkerStatus
from kafka_io.clients import KafkaConnection
from schemas.api import BatchGetOut, ContactOut
from schemas.model_file import load_model
from schemas.population import encode_record
from schemas.settings import Settings
from schemas.view import encode_view
from scorestream import ContactState, Event, apply_events, fold
from scorestream.view import ContactView, view_of
from tests.api.contact_oracle import contact_out
from tests.api.test_population_reader import _model as population_model
from tests.factories import DAY, T0, make_event
from tests.grouped import GROUPED_MODEL

MODEL = load_model()
KEY = "unit-test-key-0123456789"
contact_adapter = TypeAdapter(ContactOut)
batch_adapter = TypeAdapter(BatchGetOut)

PAGES = ["/", "/pricing", "/demo", "/careers/x", "/blog/pricing", "/jobs"]
TRACKS = ["Email Opened", "Email Link Clicked", "Demo Requested", "Order Completed", "Product Added", "Order Refunded"]
SCALARS: list[Any] = [
    "CEO",
    "Engineering Manager",
    "software",
    1e16,
    1e-6,
    0.1 + 0.2,
    -0.0,
    2**63 - 1,
    12,
    5000,
    True,
    None,
    'tab\there "quoted" \\ / \u2028 é 😀 \x00\x1f',
]
# Segment's consent objects on some page views (the default model needs analytics or marketing)
CONSENTS: list[dict[str, bool] | None] = [None, {"analytics": True}, None, {"analytics": False, "marketing": False}]
# Containers only where no fit rule tests with ``in`` (the core's fit predicates hash the value).
CONTAINERS: list[Any] = [{"country": "GB", "city": "Zagreb", "nested": [1, 2.5, {"deep": None}]}, ["a", 1, 2.0]]


def random_state(rng: random.Random, n: int) -> ContactState:
    user = f"u-{n}"
    events: list[Event] = []
    for _ in range(rng.randint(1, 40)):
        ts = T0 - rng.randint(0, 40 * DAY) + rng.randint(0, 999)
        roll = rng.random()
        if roll < 0.4:
            consent = CONSENTS[(n + len(events)) % len(CONSENTS)]  # no draw: the same random contacts as before
            events.append(
                make_event(
                    kind="page",
                    event=None,
                    channel="web",
                    user_id=user,
                    path=rng.choice(PAGES),
                    timestamp_ms=ts,
                    consent=consent,
                )
            )
        elif roll < 0.8:
            channel = rng.choice(["email", "web", "store"])
            events.append(
                make_event(
                    event=rng.choice(TRACKS),
                    channel=channel,
                    user_id=user,
                    timestamp_ms=ts,
                    properties={"total": rng.choice([10, 500, 999.99])},
                )
            )
        else:
            traits = {rng.choice(["title", "industry", "employees", "note", "score"]): rng.choice(SCALARS)}
            traits[rng.choice(["note", "tags", "address"])] = rng.choice(CONTAINERS)
            if rng.random() < 0.5:
                traits["email"] = rng.choice([f"{user}@acme.com", f"{user}@gmail.com", f"{user}@uni.edu"])
            events.append(
                make_event(
                    kind="identify",
                    event=None,
                    user_id=user,
                    anonymous_id=f"a-{n}-{rng.randint(0, 3)}",
                    traits=traits,
                    timestamp_ms=ts,
                )
            )
    state = apply_events(None, user, events, MODEL)
    if rng.random() < 0.2:
        state.merged_ids = [f"anonymous:a-{n}-x"]
    return state


def view_bytes(state: ContactState) -> bytes:
    """What the worker sends to the views topic for ``state``."""
    return encode_view(view_of(state, MODEL))


def entry(state: ContactState) -> Decoded:
    return Decoded(view_bytes(state), view_of(state, MODEL))


def test_contact_bodies_match_pydantic() -> None:
    rng = random.Random(5)
    render = ContactRenderer(MODEL)
    for n in range(300):
        state = random_state(rng, n)
        decoded = entry(state)
        for now in (T0, T0 + rng.randint(0, 60 * DAY) + rng.randint(0, 999), T0 - 50 * DAY):
            expected = contact_adapter.dump_json(contact_out(state, MODEL, now))
            assert render.contact_json(decoded, now) == expected
            assert decoded.derived is not None
            assert render.contact_json(decoded, now) == expected  # with the cached parts


def test_group_scores_decay_at_their_half_lives_and_clamp_as_the_full_state_says() -> None:
    """The groups of the body, from the view, equal the core's on the full state (half-lives of 30 and
    7 days beside the overall 14, a weight 0, a max), and training's score is held at its max."""
    model = GROUPED_MODEL
    render = ContactRenderer(model)
    rng = random.Random(3)
    paths = ["/hardware/a", "/hardware/b", "/training/x", "/training/y", "/pricing", "/"]
    for n in range(40):
        user = f"g-{n}"
        events = [
            make_event(kind="page", event=None, channel="web", user_id=user, path=rng.choice(paths), timestamp_ms=ts)
            for ts in sorted(T0 - rng.randint(0, 20 * DAY) for _ in range(rng.randint(1, 25)))
        ]
        if rng.random() < 0.3:
            events.append(make_event(event="Hardware Quote Requested", channel="web", user_id=user, timestamp_ms=T0))
        state = apply_events(None, user, events, model)
        decoded = Decoded(encode_view(view_of(state, model)), view_of(state, model))
        for now in (T0, T0 + rng.randint(0, 40 * DAY)):
            expected = contact_adapter.dump_json(contact_out(state, model, now))
            assert render.contact_json(decoded, now) == expected
    state = apply_events(
        None,
        "keen",
        [
            make_event(kind="page", event=None, path=f"/training/{i}", user_id="keen", timestamp_ms=T0 + i)
            for i in range(9)
        ],
        model,
    )
    body = ContactOut.model_validate_json(render.contact_json(Decoded(b"", view_of(state, model)), T0 + 9))
    shown = {g.id: g for g in body.groups}
    assert [g.id for g in body.groups] == [g.id for g in model.groups]
    assert shown["training"].score == 30.0 and shown["training"].band == "hot"
    assert shown["training"].top[0].rule == "training-page" and shown["training"].top[0].points == 72.0
    assert shown["training"].half_life_days == 7.0 and shown["hardware"].score == 0.0
    assert body.engagement.score == 9.0, "a weight 0 group does not count in the overall score (page views do)"


def test_batch_body_matches_pydantic() -> None:
    rng = random.Random(9)
    states = [random_state(rng, n) for n in range(50)]
    render = ContactRenderer(MODEL)
    now = T0 + 123
    expected = batch_adapter.dump_json(
        BatchGetOut(contacts=[contact_out(s, MODEL, now) for s in states], not_found=["x", "é"])
    )
    assert render.batch_json([entry(s) for s in states], ["x", "é"], now) == expected
    assert render.batch_json([], [], now) == b'{"contacts":[],"not_found":[]}'


def test_traits_orjson_cannot_encode_use_pydantic() -> None:
    state = apply_events(None, "u-big", [make_event(user_id="u-big")], MODEL)
    state.traits = {"huge": 2**70}
    render = ContactRenderer(MODEL)
    decoded = Decoded(b"", view_of(state, MODEL))
    assert render.contact_json(decoded, T0) == contact_adapter.dump_json(contact_out(state, MODEL, T0))
    assert b'"huge":1180591620717411303424' in render.batch_json([decoded], [], T0)


def test_cached_parts_belong_to_one_model() -> None:
    state = apply_events(
        None, "u-1", [make_event(kind="identify", event=None, user_id="u-1", traits={"title": "CEO"})], MODEL
    )
    decoded = entry(state)
    other = load_model()  # an equal model, but another object: its renderer computes its own parts
    ContactRenderer(MODEL).contact_json(decoded, T0)
    first = decoded.derived
    assert ContactRenderer(other).contact_json(decoded, T0) == contact_adapter.dump_json(contact_out(state, other, T0))
    assert decoded.derived is not first


def test_replica_cache_follows_new_values_and_is_bounded() -> None:
    first = apply_events(None, "u-1", [make_event(user_id="u-1")], MODEL)
    size = len(view_bytes(first))
    replica = Replica(
        kafka=KafkaConnection("127.0.0.1:1"), views_topic="c", status_topic="s", decoded_cache_bytes=2 * size
    )
    replica.apply(b"u-1", view_bytes(first))
    a = replica.find("u-1")
    assert a is not None and a is replica.find("u-1")  # cached
    ContactRenderer(MODEL).contact_json(a, T0)
    assert a.derived is not None
    second = apply_events(
        first, "u-1", [make_event(kind="identify", event=None, user_id="u-1", traits={"title": "CEO"})], MODEL
    )
    replica.apply(b"u-1", view_bytes(second))
    b = replica.find("u-1")
    assert b is not None and b is not a and b.derived is None and b.view.traits == {"title": "CEO"}
    for i in range(2, 6):
        replica.apply(
            f"u-{i}".encode(), view_bytes(apply_events(None, f"u-{i}", [make_event(user_id=f"u-{i}")], MODEL))
        )
        assert replica.find(f"u-{i}") is not None
    assert len(replica._decoded) <= 2 and replica._decoded_bytes == sum(len(e.raw) for e in replica._decoded.values())
    assert replica.lookup("u-1") == b.view  # decoded again after eviction
    replica.states["u-1"] = view_bytes(first)  # bytes replaced behind the cache's back: not served stale
    assert replica.lookup("u-1") == view_of(first, MODEL)
    replica.apply(b"u-1", None)
    assert replica.lookup("u-1") is None
    assert replica._decoded_bytes == sum(len(e.raw) for e in replica._decoded.values())


def test_http_bodies_after_an_update() -> None:
    """Over HTTP: a changed contact is served with its new traits and fit, not the cached ones."""
    replica = Replica(kafka=KafkaConnection("127.0.0.1:1"), views_topic="c", status_topic="s")
    state = apply_events(None, "u-1", [make_event(user_id="u-1", anonymous_id="a-1")], MODEL)
    replica.apply(b"u-1", view_bytes(state))
    replica.caught_up.set()
    replica.workers["w1"] = WorkerStatus(state="ready", model=MODEL.version, at_ms=T0)
    app = create_api(Settings(api_keys=KEY), model=MODEL, replica=replica, clock=lambda: T0 + 5)  # type: ignore[arg-type]
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api")
    headers = {"Authorization": f"Bearer {KEY}"}

    async def get(path: str) -> httpx.Response:
        return await client.get(path, headers=headers)

    updated = apply_events(
        state, "u-1", [make_event(kind="identify", event=None, user_id="u-1", traits={"title": "CEO"})], MODEL
    )

    async def go() -> list[httpx.Response]:
        async with client:
            before = await get("/v1/contacts/u-1")
            replica.apply(b"u-1", view_bytes(updated))
            after = await get("/v1/contacts/u-1")
            batch = await client.post("/v1/contacts:batchGet", json={"ids": ["u-1", "nobody"]}, headers=headers)
            return [before, after, batch]

    before, after, batch = asyncio.run(go())
    assert before.headers["content-type"] == after.headers["content-type"] == "application/json"
    assert before.json()["traits"] == {}
    assert isinstance(replica.lookup("u-1"), ContactView)
    current = updated
    assert after.content == contact_adapter.dump_json(contact_out(current, MODEL, T0 + 5))
    assert after.json()["traits"] == {"title": "CEO"}
    assert "senior-title" in {c["rule"] for c in after.json()["fit"]["top"]}
    assert batch.content == batch_adapter.dump_json(
        BatchGetOut(contacts=[contact_out(current, MODEL, T0 + 5)], not_found=["nobody"])
    )


def test_a_body_with_every_part_is_a_valid_contact_out() -> None:
    """The renderer's body of a contact with a stage and its history, flags, a persona, an account,
    RFM facts and CLV validates against ``ContactOut`` (the documented response) and pydantic
    writes it back byte for byte: the OpenAPI document cannot drift from the renderer."""
    user = "u-all"
    events = [
        make_event(
            kind="identify",
            event=None,
            user_id=user,
            traits={"email": "ann@acme.com", "title": "CEO", "employees": 5000},
            timestamp_ms=T0,
        ),
        make_event(kind="page", event=None, channel="web", user_id=user, path="/careers/x", timestamp_ms=T0 + 1),
        make_event(kind="group", event=None, user_id=user, group_id="acme", timestamp_ms=T0 + 2),
        make_event(event="Demo Requested", channel="web", user_id=user, timestamp_ms=T0 + 3),
        make_event(
            event="Order Completed",
            channel="store",
            user_id=user,
            timestamp_ms=T0 + 4,
            properties={"order_id": "1", "total": 500},
        ),
    ]
    state = fold.step(None, user, [*events, fold.Tick(T0 + DAY)], MODEL).state
    assert state is not None
    state.merged_ids = ["anonymous:a-x"]
    population = PopulationReader(kafka=KafkaConnection("127.0.0.1:1"), topic="p")
    population.apply(*encode_record(population_model()))
    render = ContactRenderer(MODEL, population.value_body)
    now = T0 + 3 * DAY
    body = render.body(entry(state), now)
    out = ContactOut.model_validate(body, strict=True)
    assert out.stage is not None and out.stage.history and out.flags and out.persona == "executive"
    assert out.account_id == "acme" and out.identity.merged_ids == ["anonymous:a-x"]
    assert out.rfm is not None and out.rfm.segment is not None and out.clv is not None and out.clv.p_alive is not None
    assert out.fit.top and out.engagement.top and out.grade == f"{out.fit.grade}{out.engagement.band}"
    assert set(body) == set(ContactOut.model_fields)
    assert render.contact_json(entry(state), now) == contact_adapter.dump_json(out)
