"""The JSON Schema files producers use are generated from the models and never stale."""

from __future__ import annotations

import pytest

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


@pytest.mark.parametrize(
    ("url", "allow_private", "refused"),
    [
        ("https://hooks.example.com/x", False, False),
        ("http://hooks.example.com/x", False, True),
        ("http://hooks.example.com/x", True, False),
        ("https://127.0.0.1/x", False, True),
        ("https://127.0.0.1/x", True, False),
        ("https://[::1]:8443/x", False, True),
        ("https://169.254.169.254/latest/meta-data", False, True),
        ("https://localhost/x", False, True),
        ("https://user:pw@hooks.example.com/", False, True),
        ("ftp://hooks.example.com/", True, True),
        ("hooks.example.com/x", True, True),
        ("https://8.8.8.8/x", False, False),
    ],
)
def test_webhook_url_refusal(url: str, allow_private: bool, refused: bool) -> None:
    from schemas.webhooks import url_refusal

    assert (url_refusal(url, allow_private) is not None) is refused
