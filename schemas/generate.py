"""Generate ``schemas/json/*.json`` from the contract models (``make schemas``).

``tests/schemas/test_generate.py`` regenerates in memory and fails when a committed file is stale.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec
from pydantic import BaseModel, TypeAdapter

from schemas import (
    accounts,
    api,
    api_accounts,
    api_adjustments,
    api_analytics,
    api_overview,
    api_privacy,
    api_quality,
    api_regulations,
    events,
    population,
    registry,
    state,
    triggers,
    value,
    view,
    webhooks,
)

OUT = Path(__file__).parent / "json"


def _pydantic(model: type[BaseModel] | TypeAdapter[Any], title: str) -> dict[str, Any]:
    schema = model.json_schema() if isinstance(model, TypeAdapter) else model.model_json_schema()
    schema["title"] = title
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return schema


def documents() -> dict[str, dict[str, Any]]:
    """File name -> JSON Schema document."""
    docs: dict[str, dict[str, Any]] = {
        f"segment-message.v{events.CONTRACT_VERSION}.json": _pydantic(events.MESSAGE_ADAPTER, "Segment message")
    }
    for model in (events.Identify, events.Track, events.Page, events.Screen, events.Group, events.Alias):
        docs[f"segment-{model.__name__.lower()}.v{events.CONTRACT_VERSION}.json"] = _pydantic(model, model.__name__)
    bodies: tuple[type[BaseModel], ...] = (
        api.ContactOut,
        api.BatchGetIn,
        api.BatchGetOut,
        api.ModelOut,
        api.ModelsOut,
        api.Problem,
        api.ValidationProblem,
        value.ValueOut,
        value.ClvModelOut,
        value.ChurnReportOut,
        api_accounts.AccountOut,
        webhooks.WebhookIn,
        webhooks.WebhookPatch,
        webhooks.WebhookOut,
        webhooks.WebhookCreated,
        webhooks.RotateOut,
        webhooks.DeliveryOut,
        api_analytics.ContactListOut,
        api_analytics.HistoryOut,
        api_analytics.FunnelOut,
        api_analytics.RfmReportOut,
        api_analytics.PersonasOut,
        api_analytics.ForecastOut,
        api_analytics.GroupsReportOut,
        api_overview.OverviewOut,
        api_privacy.ExportOut,
        api_regulations.RegulationIn,
        api_regulations.RegulationCreated,
        api_regulations.RegulationEnvelope,
        api_regulations.RegulationList,
        api_adjustments.AdjustmentIn,
        api_adjustments.AdjustmentOut,
        api_adjustments.AdjustmentListOut,
        api_adjustments.RevertOut,
        api_quality.JourneyOut,
        api_quality.JourneyReportOut,
        api_quality.ScoreQualityOut,
    )
    docs[f"triggers-trigger.v{triggers.TRIGGER_VERSION}.json"] = _pydantic(triggers.Trigger, "Trigger")
    for body in bodies:
        docs[f"api-{body.__name__}.v1.json"] = _pydantic(body, body.__name__)
    internal = {
        f"state-contact.v{state.STATE_VERSION}.json": msgspec.json.schema(state.ContactState),
        "state-identity-link.v1.json": msgspec.json.schema(state.IdentityLink),
        f"internal-envelope.v{state.ENVELOPE_VERSION}.json": msgspec.json.schema(state.Envelope),
        f"internal-population-summary.v{population.POPULATION_VERSION}.json": msgspec.json.schema(
            population.PartitionSummary
        ),
        f"internal-population-model.v{population.POPULATION_VERSION}.json": msgspec.json.schema(
            population.PopulationModel
        ),
        f"state-account.v{accounts.ACCOUNT_STATE_VERSION}.json": msgspec.json.schema(accounts.AccountState),
        f"state-contact-view.v{view.VIEW_VERSION}.json": msgspec.json.schema(view.ContactView),
        f"internal-member-batch.v{accounts.MEMBERS_VERSION}.json": msgspec.json.schema(accounts.MemberBatch),
    }
    records = {
        "webhook-subscription": webhooks.SubscriptionRecord,
        "webhook-delivery": webhooks.DeliveryRecord,
        "webhook-command": webhooks.CommandRecord,
    }
    for name, rec in (("models-namespace", registry.NamespaceRecord), ("models-active", registry.ActiveRecord)):
        doc = msgspec.json.schema(rec)
        doc["$comment"] = "JSON records of the models registry topic <app>.models (see schemas/registry.py)."
        docs[f"internal-{name}.v{registry.REGISTRY_VERSION}.json"] = doc
    for name, record in records.items():
        doc = msgspec.json.schema(record)
        doc["$comment"] = "JSON records of a webhook topic (see schemas/webhooks.py)."
        docs[f"internal-{name}.v{webhooks.WEBHOOKS_VERSION}.json"] = doc
    for name, doc in internal.items():
        doc["$comment"] = "Encoded as MessagePack on the wire; this schema describes its structure."
        docs[name] = doc
    return docs


def render(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=2, sort_keys=True) + "\n"


def main() -> None:
    OUT.mkdir(exist_ok=True)
    docs = documents()
    for old in OUT.glob("*.json"):
        if old.name not in docs:
            old.unlink()
    for name, doc in docs.items():
        (OUT / name).write_text(render(doc))
    print(f"wrote {len(docs)} schemas to {OUT}")


if __name__ == "__main__":
    main()
