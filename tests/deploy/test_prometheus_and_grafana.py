"""The Grafana dashboard and the Prometheus alert rules in deploy/: well formed, and every metric
their PromQL names is one the code serves (``promtool`` is not installed here, so the YAML's
structure is checked by hand and the expressions by their identifiers)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
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


# --- with promtool (Debian's `prometheus` package): the rules parse, and fire on the series they watch

PROMTOOL = shutil.which("promtool") or shutil.which("promtool", path=str(Path(sys.executable).parent))
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed (make promtool)")


def promtool(*args: str | Path) -> str:
    assert PROMTOOL is not None
    done = subprocess.run([PROMTOOL, *map(str, args)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@needs_promtool
def test_promtool_accepts_the_alert_rules() -> None:
    assert f"SUCCESS: {len(rules())} rules found" in promtool("check", "rules", ALERTS)


@needs_promtool
def test_promtool_parses_every_dashboard_query(tmp_path: Path) -> None:
    """Each panel query as a recording rule (Grafana's ``$__rate_interval`` as 5m): promtool parses them."""
    recorded = [
        {"record": f"dashboard:query_{i}", "expr": expr.replace("$__rate_interval", "5m")}
        for i, (_, expr) in enumerate(panel_targets(dashboard()))
    ]
    path = tmp_path / "dashboard.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": recorded}]}))
    assert f"SUCCESS: {len(recorded)} rules found" in promtool("check", "rules", path)


W = 'job="worker",instance="w:9300"'
# (alert, input series {series: values}, minute of evaluation, labels of the alerts expected then
# besides alertname and severity); an empty list: the alert must not fire
FIRING: list[tuple[str, dict[str, str], int, list[dict[str, str]]]] = [
    (
        "ScorestreamConsumerLagGrowing",
        {f'scorestream_worker_consumer_lag_records{{topic="events.web",partition="0",{W}}}': "20000+1000x40"},
        30,
        [{"topic": "events.web"}],
    ),
    (
        "ScorestreamConsumerLagGrowing",  # high but draining: no alert
        {f'scorestream_worker_consumer_lag_records{{topic="events.web",partition="0",{W}}}': "60000-1000x40"},
        30,
        [],
    ),
    (
        "ScorestreamDeadLettersSpiking",  # 10 % of 100 events/s
        {
            f'scorestream_events_in_total{{topic="events.web",{W}}}': "0+6000x40",
            f'scorestream_dead_letters_total{{topic="events.web",reason="invalid_json",{W}}}': "0+600x40",
        },
        30,
        [{}],
    ),
    (
        "ScorestreamDeadLettersSpiking",  # 1 %: no alert
        {
            f'scorestream_events_in_total{{topic="events.web",{W}}}': "0+6000x40",
            f'scorestream_dead_letters_total{{topic="events.web",reason="invalid_json",{W}}}': "0+60x40",
        },
        30,
        [],
    ),
    (
        "ScorestreamProcessingErrors",
        {f'scorestream_dead_letters_total{{topic="ss.contacts",reason="processing_error",{W}}}': "0 0 0 1 1 1"},
        5,
        [{"topic": "ss.contacts"}],
    ),
    (
        "ScorestreamNoWorker",
        {'scorestream_build_info{job="api",instance="a:8000",role="api",version="0.1.0"}': "1x20"},
        10,
        [{"role": "worker"}],
    ),
    (
        "ScorestreamWorkerNotReady",
        {f"scorestream_worker_ready{{{W}}}": "0x20"},
        15,
        [{"job": "worker", "instance": "w:9300"}],
    ),
    (
        "ScorestreamProcessDown",  # scraped, then down: build_info goes stale
        {
            f"up{{{W}}}": "1x5 0x15",
            f'scorestream_build_info{{{W},role="worker",version="0.1.0"}}': "1x5 _x15",
        },
        15,
        [{"job": "worker", "instance": "w:9300", "role": "worker"}],
    ),
    (
        "ScorestreamWebhookDeliveriesFailing",
        {'scorestream_webhook_deliveries_total{outcome="failed",job="d",instance="d:9290"}': "0 0 1 1 1"},
        4,
        [{}],
    ),
    (
        "ScorestreamApi5xx",
        {
            'scorestream_api_request_duration_seconds_count{method="GET",route="/v1/contacts/{contact_id}",'
            'status="503",job="api",instance="a:8000"}': "0+600x40",
            'scorestream_api_request_duration_seconds_count{method="GET",route="/v1/contacts/{contact_id}",'
            'status="200",job="api",instance="a:8000"}': "0+5400x40",
        },
        30,
        [{}],
    ),
    (
        "ScorestreamApiSlow",  # every request of a route over a second; the reports are not watched
        {
            'scorestream_api_request_duration_seconds_bucket{method="GET",route="/v1/contacts/{contact_id}",'
            f'status="200",le="{le}",job="api",instance="a"}}': "0+600x40" if le == "+Inf" else "0x40"
            for le in ("0.5", "1.0", "+Inf")
        }
        | {
            'scorestream_api_request_duration_seconds_bucket{method="GET",route="/v1/reports/funnel",'
            f'status="200",le="{le}",job="api",instance="a"}}': "0+600x40" if le == "+Inf" else "0x40"
            for le in ("0.5", "1.0", "+Inf")
        },
        30,
        [{"route": "/v1/contacts/{contact_id}"}],
    ),
    (
        "ScorestreamCollectorRefusing",
        {'scorestream_collector_requests_refused_total{reason="too_many_requests",job="api",instance="a"}': "0+120x40"},
        30,
        [{}],
    ),
    (
        "ScorestreamSinkInsertErrors",
        {'scorestream_sink_insert_errors_total{stream="events",job="s",instance="s:9291"}': "0+1x60"},
        40,
        [{}],
    ),
]


@needs_promtool
def test_the_alerts_fire_on_the_series_they_watch_and_not_otherwise(tmp_path: Path) -> None:
    """``promtool test rules`` over the rules without their annotations (templated text is not
    what is tested here): each case's alert fires with the labels expected, or not at all."""
    loaded = yaml.safe_load(ALERTS.read_text())
    severity = {}
    for group in loaded["groups"]:
        for rule in group["rules"]:
            severity[rule["alert"]] = rule["labels"]["severity"]
            rule.pop("annotations")
    (tmp_path / "alerts.yml").write_text(yaml.safe_dump(loaded))
    tests = [
        {
            "interval": "1m",
            "input_series": [{"series": series, "values": values} for series, values in inputs.items()],
            "alert_rule_test": [
                {
                    "eval_time": f"{minute}m",
                    "alertname": alert,
                    "exp_alerts": [{"exp_labels": {"severity": severity[alert], **labels}} for labels in expected],
                }
            ],
        }
        for alert, inputs, minute, expected in FIRING
    ]
    spec = {"rule_files": ["alerts.yml"], "evaluation_interval": "1m", "tests": tests}
    (tmp_path / "alerts_test.yml").write_text(yaml.safe_dump(spec))
    assert "SUCCESS" in promtool("test", "rules", tmp_path / "alerts_test.yml")
    assert {alert for alert, _, _, expected in FIRING if expected} >= {
        "ScorestreamConsumerLagGrowing",
        "ScorestreamDeadLettersSpiking",
        "ScorestreamWebhookDeliveriesFailing",
        "ScorestreamWorkerNotReady",
        "ScorestreamApi5xx",
    }
