"""Customer value in the API, in process (no Kafka): the population reader fed directly, the
population topic's records, ``value_body`` and ``GET /v1/models/clv``."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import UTC, datetime

import httpx
import pytest

from api.app import create_api
from api.population_reader import PopulationReader
from api.replica import Replica
from kafka_io.clients import KafkaConnection
from schemas.model_file import load_model
from schemas.population import MODEL_KEY, decode_record, encode_record, partition_key
from schemas.settings import Settings
from schemas.state import UnsupportedVersion
from schemas.value import ClvModelOut, ValueOut
from scorestream import apply_events
from scorestream.population import (
    PopulationModel,
    build_partition_summary,
    build_population_model,
    contact_hash,
    customer_facts,
)
from scorestream.view import view_of
from tests.factories import DAY, T0, make_event
from tests.scorestream.test_population import END, _facts, simulate

KEY = "unit-test-key-0123456789"
MODEL = load_model()


def _model(customers: int = 600, min_fit: int = 100) -> PopulationModel:
    items = [(contact_hash(f"c-{i}"), _facts(c)) for i, c in enumerate(simulate(customers, seed=2))]
    return build_population_model([build_partition_summary(0, items, END, 1000)], END, None, 1000, min_fit)


def test_records_round_trip_under_their_keys_and_a_newer_version_is_refused() -> None:
    model = _model()
    summary = build_partition_summary(3, [(1, _facts(simulate(1, seed=1)[0]))], END, 10)
    assert encode_record(summary)[0] == partition_key(3) == b"partition:3"
    assert encode_record(model)[0] == MODEL_KEY
    for record in (summary, model):
        assert decode_record(*encode_record(record)) == record
    assert decode_record(b"something-else", b"\x80") is None
    assert decode_record(MODEL_KEY, None) is None
    with pytest.raises(UnsupportedVersion):
        decode_record(*encode_record(replace(model, v=2)))


def test_value_body_before_and_after_a_population_model() -> None:
    reader = PopulationReader(kafka=KafkaConnection("127.0.0.1:1"), topic="p")
    orders = [
        make_event(event="Order Completed", channel="web", timestamp_ms=T0, properties={"order_id": "1", "total": 40}),
        make_event(
            event="Order Completed",
            channel="store",
            timestamp_ms=T0 + 5 * DAY,
            properties={"order_id": "2", "total": 60},
        ),
    ]
    state = view_of(apply_events(None, "u-1", orders, MODEL), MODEL)  # the view the worker sends
    now = T0 + 10 * DAY
    body = reader.value_body(state, now)
    ValueOut.model_validate(body)
    assert body["rfm"]["frequency"] == 2 and body["rfm"]["recency_days"] == 5.0
    assert body["rfm"]["first_order"] == datetime.fromtimestamp(T0 / 1000, tz=UTC)
    assert (body["rfm"]["r"], body["rfm"]["segment"], body["clv"]["p_alive"]) == (None, None, None)
    reader.apply(*encode_record(_model()))
    body = reader.value_body(state, now)
    ValueOut.model_validate(body)
    assert body["rfm"]["r"] in range(1, 6) and isinstance(body["rfm"]["segment"], str)
    assert 0.0 < body["clv"]["p_alive"] <= 1.0
    assert body["clv"]["expected_purchases_90d"] > 0 and body["clv"]["clv_90d"] > 0
    assert body["clv"]["model_fitted_at"] == datetime.fromtimestamp(END / 1000, tz=UTC)
    visitor = view_of(apply_events(None, "u-2", [make_event(user_id="u-2")], MODEL), MODEL)
    assert reader.value_body(visitor, now) == {"rfm": None, "clv": None}


def test_models_clv_is_503_until_the_first_fit_then_the_parameters() -> None:
    reader = PopulationReader(kafka=KafkaConnection("127.0.0.1:1"), topic="p")
    settings = Settings(api_keys=KEY, population_interval_s=60)  # type: ignore[arg-type]
    replica = Replica(kafka=KafkaConnection("127.0.0.1:1"), views_topic="c", status_topic="s")
    app = create_api(settings, model=MODEL, replica=replica, population=reader)
    assert app.state.population is reader

    async def get() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as client:
            return await client.get("/v1/models/clv", headers={"Authorization": f"Bearer {KEY}"})

    first = asyncio.run(get())
    assert first.status_code == 503 and first.headers["retry-after"] == "60"
    assert first.json()["code"] == "not_fitted"
    reader.apply(*encode_record(_model(customers=50, min_fit=100)))  # boundaries, but too few to fit
    unfitted = asyncio.run(get())
    assert unfitted.status_code == 503 and "50 customers" in unfitted.json()["detail"]
    model = _model()
    reader.apply(*encode_record(model))
    ok = asyncio.run(get())
    assert ok.status_code == 200
    body = ClvModelOut.model_validate(ok.json())
    assert model.fit is not None and model.boundaries is not None
    assert body.bgnbd.r == model.fit.bgnbd.params.r and body.gamma_gamma.q == model.fit.gamma_gamma.params.q
    assert body.sample_size == 600 and body.customers == 600
    assert body.fitted_at == datetime.fromtimestamp(END / 1000, tz=UTC)
    assert body.rfm_boundaries is not None and body.rfm_boundaries.frequency == list(model.boundaries.frequency)
    assert body.rfm_boundaries.rank_error == 0.001


def test_customer_facts_of_a_contact_state_built_by_the_fold() -> None:
    order = make_event(event="Order Completed", timestamp_ms=T0, properties={"order_id": "1", "total": 40})
    state = apply_events(None, "u-1", [order], MODEL)
    facts = customer_facts(state.value)
    assert facts is not None and (facts.frequency, facts.last_order_ms) == (1, T0)
