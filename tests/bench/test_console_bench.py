"""The console's bench (``bench.console``) at a tiny scale on the real broker: the archive and the
views are multiplied exactly, every page is timed, the lookups are measured with and without the
open consoles."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import console, probes
from scorestream.view import ContactView


def test_a_view_copy_prefixes_every_id_and_keeps_the_rest() -> None:
    view = ContactView(
        contact_id="anon-1",
        model_version="default@x",
        user_id="user-1",
        anonymous_ids=["anon-1", "anon-9"],
        email="ann@acme.com",
        merged_ids=["anon-7"],
        account_id="acct-3",
        first_seen_ms=5,
    )
    copied = console.view_copy(view, 4)
    assert (copied.contact_id, copied.user_id, copied.email, copied.account_id) == (
        "c4-anon-1",
        "c4-user-1",
        "c4-ann@acme.com",
        "c4-acct-3",
    )
    assert copied.anonymous_ids == ["c4-anon-1", "c4-anon-9"]
    assert copied.merged_ids == ["c4-anon-7"]
    assert copied.merged_into is None
    assert (copied.model_version, copied.first_seen_ms) == ("default@x", 5)
    assert console.lookup_id(copied) == "c4-user-1"


def test_percentiles_are_nearest_rank() -> None:
    values = [float(v) for v in range(1, 21)]
    assert probes.percentile(values, 0.95) == 19.0  # the one the bench's summary uses
    assert console.summary([3.0, 1.0, 2.0]) == {"median": 2.0, "p95": 3.0}


@pytest.mark.kafka
def test_the_bench_runs_at_a_tiny_scale(kafka_bootstrap: str, tmp_path: Path) -> None:
    figures = console.run(
        kafka_bootstrap, tmp_path, sizes=[60], real_contacts=40, events_per_contact=4, loads=1, rounds=1, seconds=1
    )
    (size,) = figures["sizes"]
    real = size["build"]["real_contacts"]
    assert real > 0
    copies = size["build"]["copies"]
    assert copies >= 2
    assert size["contacts"] == copies * real
    archive = size["build"]["archive"]
    for table in console.COPIED:  # every original row copied once per copy, nothing merged away
        assert archive[table] == copies * archive[f"{table}_originals"], table
    assert archive["contacts_active"] == size["contacts"]  # the archive's contacts are the API's
    overview = size["first_paint"]["overview"]
    assert overview["status"] == 200
    assert overview["fcp_ms"]["median"] > 0
    assert overview["response_end_ms"]["median"] <= overview["fcp_ms"]["median"]
    assert size["api_routes"]["funnel"]["statuses"] == [200]  # the same numbers' JSON route, timed
    assert size["api_routes"]["funnel"]["ms"]["median"] > 0
    load = size["extra_load"]
    assert load["none"]["lookups_per_s"] > 0 and load["five"]["lookups_per_s"] > 0
    assert load["none"]["errors"] == load["five"]["errors"] == 0
    assert load["ratio_lookups_per_s"] > 0
    assert "|" in console.markdown({"command": "x", "date": "d", "figures": figures})
