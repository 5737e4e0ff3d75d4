"""The Grafana dashboard and the Prometheus alert rules in deploy/: well formed, and every metric
their PromQL names is one the code serves (``promtool`` is not installed here, so the YAML's
structure is checked by hand and the expressions by their identifiers)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY

import telemetry.http_metrics  # noqa: F401  the API's request histogram is a family of the API process
from telemetry import metrics

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "deploy" / "grafana" / "scorestream.json"
ALERTS = REPO / "deploy" / "prometheus" / "alerts.yml"

PROMQL_WORDS = {
    *("sum", "max", "min", "avg", "count", "by", "without", "on", "ignoring", "group_left", "group_right"),
    *("and", "or", "unless", "offset", "bool"),
    *("rate", "increase", "delta", "deriv", "histogram_quantile", "clamp_min", "clamp_max", "absent"),
    *("max_over_time", "min_over_time", "avg_over_time", "absent_over_time", "topk"),
}
LABELS = {
    *("topic", "partition", "reason", "stage", "type", "outcome", "table", "stream", "route", "method", "status"),
    *("version", "role", "le", "job", "instance"),
}
PROMETHEUS_OWN = {"up"}  # Prometheus' own series for every target
DURATION = re.compile(r"^\d+[smhd]$")


def served() -> set[str]:
    """Every family the processes serve: scorestream's, and prometheus_client's default process
    and Python collectors (``process_cpu_seconds_total``, ...)."""
    defaults = {
        sample.name
        for family in REGISTRY.collect()
        if family.name.startswith(("process_", "python_"))
        for sample in family.samples
    }
    return metrics.families() | defaults


def identifiers(expr: str) -> set[str]:
    """The names in a PromQL expression: no label values (strings), numbers, durations or
    Grafana's ``$__...`` variables."""
    expr = re.sub(r'"[^"]*"', "", expr)
    expr = re.sub(r"\$__\w+", "", expr)
    expr = re.sub(r"\[\d+[smhd]\]", "", expr)
    return {t for t in re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", expr)}


def unknown_names(expr: str) -> set[str]:
    names = served()
    return {
        t
        for t in identifiers(expr)
        if t not in names and t not in PROMQL_WORDS and t not in LABELS and t not in PROMETHEUS_OWN
    }


def test_the_name_check_catches_a_metric_the_code_does_not_serve() -> None:
    assert unknown_names('sum by (topic) (rate(scorestream_events_in_total{topic="x"}[5m]))') == set()
    assert unknown_names("rate(scorestream_events_total[5m])") == {"scorestream_events_total"}
    assert unknown_names("sum by (contact) (scorestream_build_info)") == {"contact"}


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def panel_targets(board: dict[str, Any]) -> list[tuple[str, str]]:
    return [(p["title"], t["expr"]) for p in board["panels"] if p["type"] != "row" for t in p["targets"]]


def test_the_dashboard_is_a_grafana_dashboard_over_a_chosen_prometheus() -> None:
    board = dashboard()
    assert board["uid"] and board["title"] == "scorestream" and board["schemaVersion"] >= 36
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in board["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24 and grid["h"] >= 1
        if panel["type"] == "row":
            continue
        assert panel["type"] == "timeseries" and panel["targets"], panel["title"]
        assert panel["datasource"]["uid"] == "${datasource}"
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}" and target["refId"]


def test_every_dashboard_query_names_served_metrics_only() -> None:
    for title, expr in panel_targets(dashboard()):
        assert unknown_names(expr) == set(), f"{title}: {expr}"


@pytest.mark.parametrize(
    "needed",
    [
        "scorestream_events_in_total",
        "scorestream_events_accepted_total",
        "scorestream_dead_letters_total",
        "scorestream_worker_consumer_lag_records",
        "scorestream_worker_batch_duration_seconds_bucket",
        "scorestream_webhook_deliveries_total",
        "scorestream_webhook_attempt_duration_seconds_bucket",
        "scorestream_api_request_duration_seconds_count",
        "scorestream_api_request_duration_seconds_bucket",
        "scorestream_sink_rows_inserted_total",
        "scorestream_sink_insert_errors_total",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
    ],
)
def test_the_dashboard_shows_what_the_issue_asks(needed: str) -> None:
    assert any(needed in identifiers(expr) for _, expr in panel_targets(dashboard()))


def rules() -> list[dict[str, Any]]:
    loaded = yaml.safe_load(ALERTS.read_text())
    assert set(loaded) == {"groups"}
    found: list[dict[str, Any]] = []
    for group in loaded["groups"]:
        assert set(group) == {"name", "rules"} and group["rules"], group.get("name")
        found.extend(group["rules"])
    return found


def test_the_alert_rules_are_well_formed() -> None:
    names = [rule["alert"] for rule in rules()]
    assert len(names) == len(set(names))
    for rule in rules():
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule["alert"]
        assert isinstance(rule["expr"], str) and rule["expr"].strip()
        assert rule["expr"].count("(") == rule["expr"].count(")"), rule["alert"]
        assert "for" not in rule or DURATION.match(rule["for"]), rule["alert"]
        assert rule["labels"]["severity"] in ("warning", "critical")
        assert rule["annotations"]["summary"] and rule["annotations"].get("description")


def test_every_alert_names_served_metrics_only() -> None:
    for rule in rules():
        assert unknown_names(rule["expr"]) == set(), f"{rule['alert']}: {rule['expr']}"


@pytest.mark.parametrize(
    ("alert", "metric"),
    [
        ("ScorestreamConsumerLagGrowing", "scorestream_worker_consumer_lag_records"),
        ("ScorestreamDeadLettersSpiking", "scorestream_dead_letters_total"),
        ("ScorestreamWebhookDeliveriesFailing", "scorestream_webhook_deliveries_total"),
        ("ScorestreamWorkerNotReady", "scorestream_worker_ready"),
        ("ScorestreamNoWorker", "scorestream_build_info"),
        ("ScorestreamApi5xx", "scorestream_api_request_duration_seconds_count"),
    ],
)
def test_the_alerts_the_issue_asks_for_are_there(alert: str, metric: str) -> None:
    by_name = {rule["alert"]: rule for rule in rules()}
    assert metric in identifiers(by_name[alert]["expr"])


def test_the_dead_letter_reasons_an_alert_names_exist() -> None:
    """``ScorestreamProcessingErrors`` filters on reason codes: they must be codes the worker uses."""
    source = "\n".join(p.read_text() for p in (REPO / "streams").glob("*.py"))
    expr = {rule["alert"]: rule for rule in rules()}["ScorestreamProcessingErrors"]["expr"]
    reasons = re.search(r'reason=~"([^"]+)"', expr)
    assert reasons is not None
    for reason in reasons[1].split("|"):
        assert f'"{reason}"' in source, reason
