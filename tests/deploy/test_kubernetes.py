"""deploy/kubernetes/: the kustomize base rendered here (its namespace and images, as kustomize
applies them), every manifest validated offline against the Kubernetes API schemas
(kubernetes-validate), and the references between them checked (secrets, config maps, selectors,
probe ports, settings, commands)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]  # no stubs
import pytest
import yaml

from deploy.cli import _parser
from schemas.model_file import DEFAULT_MODEL
from schemas.settings import Settings
from telemetry.metrics import port_of
from tests.deploy.test_cli import subcommands
from tests.test_packaging import stages

ROOT = Path(__file__).resolve().parents[2]
BASE = ROOT / "deploy" / "kubernetes"
# the oldest Kubernetes release still commonly run, and the newest kubernetes-validate ships schemas for
VERSIONS = ("1.30.0", "1.37.0")
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "PersistentVolume", "StorageClass"}
WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet", "Job"}
# what the test's rendering understands; anything else in kustomization.yaml would need kustomize
KUSTOMIZE_FIELDS = {"apiVersion", "kind", "namespace", "resources", "images"}
Doc = dict[str, Any]


def render(base: Path = BASE) -> list[Doc]:
    """The base's resources as ``kubectl kustomize`` prints them: every document of every resource
    file, the namespace set on the namespaced ones, the images replaced."""
    kustomization = yaml.safe_load((base / "kustomization.yaml").read_text())
    assert set(kustomization) <= KUSTOMIZE_FIELDS, f"not rendered by this test: {set(kustomization) - KUSTOMIZE_FIELDS}"
    images = {i["name"]: i for i in kustomization.get("images", [])}
    docs: list[Doc] = []
    for resource in kustomization["resources"]:
        for doc in yaml.safe_load_all((base / resource).read_text()):
            if not doc:
                continue
            if "namespace" in kustomization and doc["kind"] not in CLUSTER_SCOPED:
                doc["metadata"]["namespace"] = kustomization["namespace"]
            for container in containers(doc):
                name = container["image"].split("@")[0].split(":")[0]
                if name in images:
                    new = images[name]
                    container["image"] = (
                        f"{new.get('newName', name)}:{new['newTag']}" if "newTag" in new else new["newName"]
                    )
            docs.append(doc)
    return docs


def pod_spec(doc: Doc) -> Doc | None:
    if doc["kind"] in WORKLOADS:
        spec: Doc = doc["spec"]["template"]["spec"]
        return spec
    return None


def containers(doc: Doc) -> list[Doc]:
    spec = pod_spec(doc)
    if spec is None:
        return []
    found: list[Doc] = spec.get("initContainers", []) + spec["containers"]
    return found


def named(docs: list[Doc], kind: str) -> dict[str, Doc]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def workloads(docs: list[Doc]) -> dict[str, Doc]:
    """Role (the container's sub-command) -> its workload."""
    return {containers(d)[0]["args"][0]: d for d in docs if d["kind"] in WORKLOADS}


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def env_of(container: Doc, docs: list[Doc]) -> dict[str, str]:
    """The environment a container starts with: its config maps, then its own entries (a secret's
    value is its stringData, or a stand-in when the template leaves it empty)."""
    maps, secrets = named(docs, "ConfigMap"), named(docs, "Secret")
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(maps[source["configMapRef"]["name"]]["data"])
    stand_ins = {"SCORESTREAM_API_KEYS": "k" * 24, "SCORESTREAM_CLICKHOUSE_URL": "https://u:p@clickhouse:8443/db"}
    for entry in container.get("env", []):
        if "value" in entry:
            env[entry["name"]] = entry["value"]
            continue
        ref = entry["valueFrom"].get("secretKeyRef") or entry["valueFrom"]["configMapKeyRef"]
        kind = secrets if "secretKeyRef" in entry["valueFrom"] else maps
        value = {**kind[ref["name"]].get("data", {}), **kind[ref["name"]].get("stringData", {})}[ref["key"]]
        env[entry["name"]] = value or stand_ins.get(entry["name"], "stand-in")
    return env


def settings_of(container: Doc, docs: list[Doc]) -> Settings:
    env = env_of(container, docs)
    return Settings.model_validate({k.removeprefix("SCORESTREAM_").lower(): v for k, v in env.items()})


def reference_problems(docs: list[Doc]) -> list[str]:  # noqa: C901  (one check per kind of reference)
    """Every reference between the manifests that does not resolve."""
    problems: list[str] = []
    maps, secrets, services = named(docs, "ConfigMap"), named(docs, "Secret"), named(docs, "Service")
    pods = [(d, d["spec"]["template"]["metadata"]["labels"]) for d in docs if d["kind"] in WORKLOADS]
    for doc in docs:
        where = f"{doc['kind']}/{doc['metadata']['name']}"
        spec = pod_spec(doc)
        if doc["kind"] in WORKLOADS - {"Job"}:
            selector = doc["spec"]["selector"]["matchLabels"]
            if not matches(selector, doc["spec"]["template"]["metadata"]["labels"]):
                problems.append(f"{where}: selector does not match its pod labels")
        if doc["kind"] == "StatefulSet":
            service = services.get(doc["spec"]["serviceName"])
            if service is None or service["spec"].get("clusterIP") != "None":
                problems.append(f"{where}: serviceName is not a headless Service of the base")
        if doc["kind"] in ("Service", "PodDisruptionBudget"):
            selector = doc["spec"]["selector"]
            selector = selector.get("matchLabels", selector) if doc["kind"] == "PodDisruptionBudget" else selector
            selected = [d for d, labels in pods if matches(selector, labels)]
            if not selected:
                problems.append(f"{where}: selects no pod of the base")
            for port in doc["spec"].get("ports", []):
                target = port.get("targetPort", port["port"])
                declared = {p.get("name") for d in selected for c in containers(d) for p in c.get("ports", [])} | {
                    p["containerPort"] for d in selected for c in containers(d) for p in c.get("ports", [])
                }
                if target not in declared:
                    problems.append(f"{where}: targetPort {target} is no port of the pods it selects")
        if spec is None:
            continue
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        claims = {t["metadata"]["name"] for t in doc["spec"].get("volumeClaimTemplates", [])}
        for volume in volumes.values():
            if "configMap" in volume and volume["configMap"]["name"] not in maps:
                problems.append(f"{where}: volume {volume['name']} names no ConfigMap of the base")
            if "secret" in volume and volume["secret"]["secretName"] not in secrets:
                problems.append(f"{where}: volume {volume['name']} names no Secret of the base")
        for container in containers(doc):
            cwhere = f"{where} {container['name']}"
            ports = {p.get("name") for p in container.get("ports", [])} | {
                p["containerPort"] for p in container.get("ports", [])
            }
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                if probe in container and container[probe]["httpGet"]["port"] not in ports:
                    problems.append(f"{cwhere}: {probe} port is not a declared container port")
            for mount in container.get("volumeMounts", []):
                if mount["name"] not in volumes and mount["name"] not in claims:
                    problems.append(f"{cwhere}: volumeMount {mount['name']} is no volume")
            for source in container.get("envFrom", []):
                if source["configMapRef"]["name"] not in maps:
                    problems.append(f"{cwhere}: envFrom names no ConfigMap of the base")
            for entry in container.get("env", []):
                ref = entry.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    secret = secrets.get(ref["name"])
                    keys = set(secret.get("stringData", {})) | set(secret.get("data", {})) if secret else set()
                    if ref["key"] not in keys:
                        problems.append(f"{cwhere}: secretKeyRef {ref['name']}/{ref['key']} is not in the base")
                ref = entry.get("valueFrom", {}).get("configMapKeyRef")
                if ref and ref["key"] not in maps.get(ref["name"], {}).get("data", {}):
                    problems.append(f"{cwhere}: configMapKeyRef {ref['name']}/{ref['key']} is not in the base")
    return problems


@pytest.fixture(scope="module")
def docs() -> list[Doc]:
    return render()


@pytest.mark.parametrize("version", VERSIONS)
def test_every_manifest_is_valid_for_kubernetes(docs: list[Doc], version: str) -> None:
    """Strict: an unknown or misspelt field fails too."""
    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)


def test_the_validator_refuses_a_misspelt_field(docs: list[Doc]) -> None:
    broken = copy.deepcopy(named(docs, "Deployment")["scorestream-api"])
    broken["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = broken["spec"]["template"]["spec"][
        "containers"
    ][0].pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, VERSIONS[-1], strict=True)


def test_every_reference_resolves(docs: list[Doc]) -> None:
    assert reference_problems(docs) == []


def test_the_reference_check_catches_broken_references(docs: list[Doc]) -> None:
    broken = copy.deepcopy(docs)
    api = named(broken, "Deployment")["scorestream-api"]
    container = api["spec"]["template"]["spec"]["containers"][0]
    container["env"][0]["valueFrom"]["secretKeyRef"]["key"] = "api-key"
    container["readinessProbe"]["httpGet"]["port"] = "web"
    named(broken, "Service")["scorestream-api"]["spec"]["selector"]["app.kubernetes.io/component"] = "ui"
    assert reference_problems(broken) == [
        "Service/scorestream-api: selects no pod of the base",
        "Service/scorestream-api: targetPort http is no port of the pods it selects",
        "Deployment/scorestream-api api: readinessProbe port is not a declared container port",
        "Deployment/scorestream-api api: secretKeyRef scorestream-secrets/api-key is not in the base",
    ]


def test_every_process_runs_a_cli_sub_command_in_the_right_kind(docs: list[Doc]) -> None:
    roles = workloads(docs)
    assert {role: d["kind"] for role, d in roles.items()} == {
        "topics": "Job",
        "worker": "StatefulSet",
        "api": "Deployment",
        "dispatcher": "Deployment",
        "sink": "Deployment",
    }
    assert set(roles) <= set(subcommands(_parser()))
    # one replica each of the dispatcher and the sink (their manifests say why)
    assert roles["dispatcher"]["spec"]["replicas"] == roles["sink"]["spec"]["replicas"] == 1
    assert roles["worker"]["spec"]["replicas"] >= 2
    images = {c["image"] for d in roles.values() for c in containers(d)}
    assert len(images) == 1 and ":" in images.pop(), "one image, tagged by the kustomization"


def test_every_variable_is_a_setting_and_every_process_starts_with_them(docs: list[Doc]) -> None:
    fields = {f"SCORESTREAM_{name.upper()}" for name in Settings.model_fields}
    for name, config in named(docs, "ConfigMap").items():
        if name != "scorestream-model":
            assert set(config["data"]) - fields == set(), name
    for role, doc in workloads(docs).items():
        for container in containers(doc):
            env = env_of(container, docs)
            assert {k for k in env if k.startswith("SCORESTREAM_")} - fields == set(), role
            settings = settings_of(container, docs)  # valid: production's checks, Kafka security's
            assert settings.env == "production"
            assert settings.kafka_security_protocol == "SASL_SSL"
            assert "SCORESTREAM_KAFKA_SASL_PASSWORD" in {e["name"] for e in container["env"] if "valueFrom" in e}
            for entry in container["env"]:  # secrets only from Secrets, never a value in a manifest
                secret = any(word in entry["name"] for word in ("KEYS", "PASSWORD", "CLICKHOUSE_URL", "TOKEN"))
                assert not (secret and "value" in entry), entry["name"]


def test_the_model_is_the_mounted_config_map(docs: list[Doc]) -> None:
    model = named(docs, "ConfigMap")["scorestream-model"]
    assert model["data"]["default.yaml"] == DEFAULT_MODEL.read_text(), (
        "deploy/kubernetes/model.yaml holds a copy of schemas/models/default.yaml: copy it again"
    )
    for role, doc in workloads(docs).items():
        container = containers(doc)[0]
        settings = settings_of(container, docs)
        assert settings.model is not None
        spec = pod_spec(doc)
        assert spec is not None
        volumes = {v["name"]: v for v in spec["volumes"]}
        (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == str(settings.model.parent)]
        assert volumes[mount["name"]]["configMap"]["name"] == "scorestream-model", role
        assert settings.model.name in model["data"]


def test_probes_and_scrape_annotations_point_at_each_roles_ports(docs: list[Doc]) -> None:
    for role, doc in workloads(docs).items():
        if role == "topics":
            continue
        container = containers(doc)[0]
        settings = settings_of(container, docs)
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        annotations = doc["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"
        assert annotations["prometheus.io/path"] == "/metrics"
        if role == "api":
            assert ports["http"] == settings.api_port == int(annotations["prometheus.io/port"])
            assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
            assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        else:
            # the side port the process serves (a worker: 9300 + its slot, 0 on its own volume)
            assert ports["metrics"] == port_of(settings, role) == int(annotations["prometheus.io/port"]), role  # type: ignore[arg-type]
            assert settings.metrics_host == "0.0.0.0"
            assert container["livenessProbe"]["httpGet"]["path"] == "/metrics"


def test_workers_keep_their_tables_on_a_volume_of_their_own(docs: list[Doc]) -> None:
    worker = workloads(docs)["worker"]
    container = containers(worker)[0]
    settings = settings_of(container, docs)
    (claim,) = worker["spec"]["volumeClaimTemplates"]
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == claim["metadata"]["name"]]
    assert Path(mount["mountPath"]) == settings.data_dir
    assert settings.worker_index is None  # the lowest free slot of its own volume: 0
    budgets = [d for d in named(docs, "PodDisruptionBudget").values() if d["metadata"]["name"] == "scorestream-worker"]
    assert budgets and budgets[0]["spec"]["maxUnavailable"] == 1


def test_every_pod_is_locked_down(docs: list[Doc]) -> None:
    """Non-root (the image's uid), no privilege escalation, no capabilities, read-only root, RuntimeDefault
    seccomp: the "restricted" Pod Security Standard the namespace enforces. Resources requested and bounded."""
    runtime = list(stages((ROOT / "deploy" / "Dockerfile").read_text()).values())[-1]
    uid = int([rest for word, rest in runtime if word == "USER"][-1].split(":")[0])
    namespace = named(docs, "Namespace")["scorestream"]
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for role, doc in workloads(docs).items():
        spec = pod_spec(doc)
        assert spec is not None
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["runAsUser"] == uid, role
        assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        assert spec["automountServiceAccountToken"] is False
        assert spec["serviceAccountName"] in named(docs, "ServiceAccount")
        for container in containers(doc):
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False
            assert context["readOnlyRootFilesystem"] is True
            assert context["capabilities"]["drop"] == ["ALL"]
            mounts = {m["mountPath"] for m in container["volumeMounts"]}
            assert "/tmp" in mounts, f"{role}: a writable /tmp on a read-only root"
            if role != "topics":
                assert str(settings_of(container, docs).data_dir) in mounts, f"{role}: a writable data dir"
            assert container["resources"]["requests"]["cpu"] and container["resources"]["limits"]["memory"]


def test_secret_templates_hold_no_secret(docs: list[Doc]) -> None:
    """The shipped Secret is a template: empty values, on which the processes refuse to start."""
    for secret in named(docs, "Secret").values():
        assert set(secret["stringData"].values()) == {""}
        assert "data" not in secret


def test_the_optional_pod_monitor_scrapes_the_named_ports(docs: list[Doc]) -> None:
    monitor = yaml.safe_load((BASE / "optional" / "podmonitor.yaml").read_text())
    selector = monitor["spec"]["selector"]["matchLabels"]
    ports = {e["port"] for e in monitor["spec"]["podMetricsEndpoints"]}
    for role, doc in workloads(docs).items():
        if role == "topics":
            continue
        assert matches(selector, doc["spec"]["template"]["metadata"]["labels"]), role
        assert {p["name"] for p in containers(doc)[0]["ports"]} & ports, role


def test_the_base_deploys_the_projects_version() -> None:
    """The kustomization's image tag is pyproject.toml's version (a release bumps both)."""
    import tomllib

    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    kustomization = yaml.safe_load((BASE / "kustomization.yaml").read_text())
    assert [i["newTag"] for i in kustomization["images"]] == [version]


def test_the_rendering_is_kustomizes(docs: list[Doc]) -> None:
    """Where kubectl is installed, its kustomize renders the base exactly as this test does."""
    import shutil
    import subprocess

    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("no kubectl here: the rendering above stands alone")
    done = subprocess.run([kubectl, "kustomize", str(BASE)], capture_output=True, text=True, timeout=120, check=True)
    theirs = [d for d in yaml.safe_load_all(done.stdout) if d]

    def key(doc: Doc) -> tuple[str, str]:
        return doc["kind"], doc["metadata"]["name"]

    assert sorted(theirs, key=key) == sorted(docs, key=key)


def test_network_policies_admit_only_the_served_ports(docs: list[Doc]) -> None:
    """Every pod of the base is selected by a policy, whose ingress ports are ports its containers declare."""

    def selects(selector: Doc, labels: dict[str, str]) -> bool:
        if not matches(selector.get("matchLabels", {}), labels):
            return False
        return all(
            labels.get(e["key"]) in e["values"] if e["operator"] == "In" else False
            for e in selector.get("matchExpressions", [])
        )

    policies = named(docs, "NetworkPolicy").values()
    for role, doc in workloads(docs).items():
        labels = doc["spec"]["template"]["metadata"]["labels"]
        chosen = [p for p in policies if selects(p["spec"]["podSelector"], labels)]
        assert len(chosen) == 1, role
        declared = {p["name"] for c in containers(doc) for p in c.get("ports", [])}
        allowed = {port["port"] for rule in chosen[0]["spec"].get("ingress", []) for port in rule["ports"]}
        assert allowed == declared, role
