"""The JSON Schema files producers use are generated from the models and never stale."""

from __future__ import annotations

from schemas.generate import OUT, documents, render


def test_committed_json_schemas_are_current() -> None:
    docs = documents()
    on_disk = {p.name for p in OUT.glob("*.json")}
    assert on_disk == set(docs), "run `make schemas`: files differ from the models"
    for name, doc in docs.items():
        assert (OUT / name).read_text() == render(doc), f"{name} is stale: run `make schemas`"


def test_message_schema_covers_every_type() -> None:
    doc = documents()["segment-message.v1.json"]
    mapping = doc["discriminator"]["mapping"]
    assert set(mapping) == {"identify", "track", "page", "screen", "group", "alias"}
