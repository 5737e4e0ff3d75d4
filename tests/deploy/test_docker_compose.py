"""deploy/docker-compose.yml, read (no container engine runs here): every process, its health
check, one environment for all, commands the CLI has."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from analytics.client import sink_in_api
from deploy.cli import _parser
from schemas.settings import Settings
from telemetry.metrics import port_of
from tests.deploy.test_cli import subcommands

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "deploy" / "docker-compose.yml"
IMAGE = "scorestream:local"
INTERPOLATION = re.compile(r"\$\{(\w+)(?:(:?[-?])([^}]*))?\}")


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return loaded


def services() -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = compose()["services"]
    return found


def ours() -> dict[str, dict[str, Any]]:
    """The services running the scorestream image."""
    return {name: s for name, s in services().items() if s.get("image") == IMAGE}


def interpolate(value: str, shell: dict[str, str]) -> str:
    """Compose's ``${VAR}``, ``${VAR:-default}`` and ``${VAR:?error}`` with ``shell`` as the environment."""

    def one(match: re.Match[str]) -> str:
        name, op, arg = match.group(1), match.group(2), match.group(3)
        if shell.get(name):
            return shell[name]
        assert op != ":?", f"${{{name}}} is required: {arg}"
        return arg if op == ":-" else ""

    return INTERPOLATION.sub(one, value)


def settings_of(service: dict[str, Any]) -> Settings:
    """The settings a service's processes run with (the secrets the shell gives: a dummy key)."""
    shell = {"SCORESTREAM_API_KEYS": "k" * 24}
    env = service["environment"]
    return Settings.model_validate(
        {k.removeprefix("SCORESTREAM_").lower(): interpolate(str(v), shell) for k, v in env.items()}
    )


def health_url(service: dict[str, Any]) -> str:
    test = " ".join(service["healthcheck"]["test"])
    (url,) = re.findall(r"https?://[^'\" ]+", test)
    return str(url)


def test_every_process_is_there() -> None:
    commands = sorted(s["command"][0] for s in ours().values())
    assert commands == ["api", "dispatcher", "sink", "topics", "worker", "worker"]
    images = {s.get("image", "").split(":")[0] for s in services().values()}
    assert {"apache/kafka", "clickhouse/clickhouse-server"} <= images


def test_every_command_is_a_sub_command_of_the_cli() -> None:
    known = set(subcommands(_parser()))
    for name, service in ours().items():
        assert service["command"][0] in known, name
        assert service["build"]["dockerfile"] == "deploy/Dockerfile"
        assert (COMPOSE.parent / service["build"]["context"] / service["build"]["dockerfile"]).is_file()


def test_every_long_running_service_has_a_health_check() -> None:
    for name, service in services().items():
        if service.get("restart") == "no":  # the one-shot topics job: the others wait for its exit 0
            assert service["command"] == ["topics"]
            continue
        check = service.get("healthcheck")
        assert check and check["test"][0] in ("CMD", "CMD-SHELL"), name
        assert service.get("restart") == "unless-stopped", name


def test_health_checks_probe_the_port_of_their_role() -> None:
    for name, service in ours().items():
        role = service["command"][0]
        if role == "topics":
            continue
        url = urlsplit(health_url(service))
        settings = settings_of(service)
        if role == "api":
            assert url.path == "/readyz", name
            assert url.port == settings.api_port, name
        else:  # its side metrics port, served on every address (the check and Prometheus reach it)
            assert url.path == "/metrics", name
            assert url.port == port_of(settings, role) != 0, name  # slot 0: each worker has its own /data
            assert settings.metrics_host == "0.0.0.0"


def test_one_environment_for_every_process_and_every_variable_a_setting() -> None:
    envs = [s["environment"] for s in ours().values()]
    assert all(env == envs[0] for env in envs), "the same bootstrap, keys, ClickHouse for all"
    env = envs[0]
    unknown = {k for k in env if k.startswith("SCORESTREAM_")} - {
        f"SCORESTREAM_{f.upper()}" for f in Settings.model_fields
    }
    assert unknown == set()
    # secrets come from the shell that runs compose, never written in the file
    assert env["SCORESTREAM_API_KEYS"].startswith("${SCORESTREAM_API_KEYS:?")
    assert env["SCORESTREAM_ENV"] == "production"


def test_the_environment_points_at_the_services_and_is_valid() -> None:
    settings = settings_of(ours()["api"])  # production's checks included (keys set)
    for server in settings.kafka_bootstrap.split(","):
        host, port = server.rsplit(":", 1)
        broker = services()[host]
        assert f"://:{port}" in broker["environment"]["KAFKA_LISTENERS"]
        assert f"PLAINTEXT://{host}:{port}" in broker["environment"]["KAFKA_ADVERTISED_LISTENERS"]
    assert settings.clickhouse_url is not None
    assert urlsplit(settings.clickhouse_url.get_secret_value()).hostname in services()
    # a ClickHouse server: the API does not run the sink, so the sink service must
    assert not sink_in_api(settings)


def test_processes_with_local_state_have_volumes_of_their_own() -> None:
    """Two workers on one RocksDB directory would contend for the slot locks (and share metrics port 9300)."""
    mounts: dict[str, str] = {}
    for name, service in ours().items():
        for volume in service.get("volumes", []):
            source, target = volume.split(":")[:2]
            assert source not in mounts, f"{name} shares {source} with {mounts.get(source)}"
            mounts[source] = name
            assert source in compose()["volumes"]
            assert target == "/data"
    workers = [n for n, s in ours().items() if s["command"] == ["worker"]]
    assert all(any(mounts[m] == w for m in mounts) for w in workers)
    assert "api" in mounts.values()


def test_dependencies_exist_and_wait_for_the_topics() -> None:
    for name, service in services().items():
        for dependency, condition in service.get("depends_on", {}).items():
            assert dependency in services(), f"{name} depends on unknown {dependency}"
            expected = "service_completed_successfully" if dependency == "init" else "service_healthy"
            assert condition["condition"] == expected, (name, dependency)
    for name, service in ours().items():
        if service["command"] != ["topics"]:
            assert "init" in service["depends_on"], name


def test_the_interpolation_reader() -> None:
    assert interpolate("${A:-x}/${B}", {"B": "b"}) == "x/b"
    assert interpolate("${A:?set A}", {"A": "a"}) == "a"


def test_prometheus_scrapes_every_process_and_loads_the_alerts() -> None:
    """The monitoring profile: one scrape target per scorestream process, at the port its health check
    probes (the same /metrics); the alert rules and the dashboard mounted from deploy/."""
    config = yaml.safe_load(compose()["configs"]["prometheus-config"]["content"])
    (job,) = config["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    targets = {t for static in job["static_configs"] for t in static["targets"]}
    expected: set[str] = set()
    for name, service in ours().items():
        if service["command"] == ["topics"]:
            continue
        expected.add(f"{name}:{urlsplit(health_url(service)).port}")
    assert targets == expected
    prometheus, grafana = services()["prometheus"], services()["grafana"]
    assert config["rule_files"] == [v.split(":")[1] for v in prometheus["volumes"] if "alerts" in v]
    for service in (prometheus, grafana):
        assert service["profiles"] == ["monitoring"]
        for volume in service["volumes"]:
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (COMPOSE.parent / source).is_file(), source
    datasource = yaml.safe_load(compose()["configs"]["grafana-datasource"]["content"])
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"
