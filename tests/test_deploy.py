"""deploy/ cannot be run here (no Docker engine), so check what can go wrong on paper: the files
parse, every service they start is an `appeals run` target, every setting they pass is one the
services read, images are pinned, no secret ships with them, every process has liveness and
readiness probes on the port it serves, Prometheus discovers replicas, and every Grafana panel asks
for metrics and labels the code exports."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import pytest
import yaml
from prometheus_client import REGISTRY

import services.notifier.scorecard  # noqa: F401 - registers its metrics
import shared.metrics  # noqa: F401 - registers the metrics the dashboard reads
from services.cli import Service
from services.launcher import WORKERS
from shared.embedded import POSTGRES_MAX_LOCKS_PER_TRANSACTION, REDIS_AOF_OPTIONS, REDIS_ZSET_PACKED_MOST
from shared.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
APP_SETTINGS = {name.upper() for name in Settings.model_fields}
INFRA = {"kafka", "redis", "postgres", "minio", "minio-init", "prometheus", "grafana"}
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
DEFAULTS = Settings()
PORTS = {w: getattr(DEFAULTS, f"metrics_port_{w}") for w in WORKERS} | {"api": DEFAULTS.api_port}


def compose() -> dict:
    return yaml.safe_load((DEPLOY / "docker-compose.yml").read_text(encoding="utf-8"))


def k8s_documents() -> list[dict]:
    return [
        d for f in sorted((DEPLOY / "k8s").glob("*.yaml")) for d in yaml.safe_load_all(f.read_text()) if d
    ]


def test_compose_runs_every_service_and_only_real_targets():
    services = compose()["services"]
    app_services = {name: s for name, s in services.items() if name not in INFRA}
    targets = {s["command"][1] for s in app_services.values()}
    assert all(s["command"][0] == "run" for s in app_services.values())
    assert targets == {s.value for s in Service}, "compose must start each service, and nothing else"
    assert {"kafka", "redis", "prometheus", "grafana"} <= set(services)
    assert "KAFKA_PROCESS_ROLES" in services["kafka"]["environment"], "Kafka runs in KRaft mode"


def test_compose_passes_only_settings_the_services_read():
    apps = {name: s for name, s in compose()["services"].items() if name not in INFRA}
    assert apps
    for name, s in apps.items():
        unknown = set(s["environment"]) - APP_SETTINGS
        assert not unknown, f"{name} passes settings no service reads: {unknown}"
        assert {"KAFKA_BOOTSTRAP_SERVERS", "REDIS_URL"} <= set(s["environment"])


def test_kubernetes_has_a_deployment_per_service_with_known_settings():
    docs = k8s_documents()
    deployments = [d for d in docs if d["kind"] == "Deployment"]
    started = {c["args"][1] for d in deployments for c in d["spec"]["template"]["spec"]["containers"]}
    assert started == {s.value for s in Service}
    env_sources = {
        ref[kind]["name"]
        for d in deployments
        for c in d["spec"]["template"]["spec"]["containers"]
        for ref in c.get("envFrom", [])
        for kind in ref
    }
    for d in docs:
        if d["kind"] in ("ConfigMap", "Secret") and d["metadata"]["name"] in env_sources:
            keys = set(d.get("data") or {}) | set(d.get("stringData") or {})
            assert keys <= APP_SETTINGS, f"{d['metadata']['name']}: unknown settings {keys - APP_SETTINGS}"
    for d in deployments:
        for c in d["spec"]["template"]["spec"]["containers"]:
            names = {e["name"] for e in c.get("env", [])}
            assert names <= APP_SETTINGS, f"{d['metadata']['name']}: unknown settings {names - APP_SETTINGS}"


def deployments() -> dict[str, dict]:
    """Service name -> its Deployment."""
    return {
        d["spec"]["template"]["spec"]["containers"][0]["args"][1]: d
        for d in k8s_documents()
        if d["kind"] == "Deployment"
    }


def test_compose_prometheus_discovers_every_replica_on_the_ports_the_services_serve():
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    found = set()
    for job in config["scrape_configs"]:
        assert "static_configs" not in job, f"{job['job_name']}: static targets miss scaled replicas"
        found |= {(n, sd["port"]) for sd in job["dns_sd_configs"] for n in sd["names"]}
    assert found == set(PORTS.items())


def test_kubernetes_prometheus_discovers_pods_by_the_annotations_the_deployments_carry():
    (cm,) = [
        d
        for d in k8s_documents()
        if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("prometheus")
    ]
    config = yaml.safe_load(cm["data"]["prometheus.yml"])
    (job,) = config["scrape_configs"]
    assert [sd["role"] for sd in job["kubernetes_sd_configs"]] == ["pod"]
    assert "static_configs" not in job
    relabelled = {src for r in job["relabel_configs"] for src in r.get("source_labels", [])}
    assert "__meta_kubernetes_pod_annotation_prometheus_io_port" in relabelled
    for service, d in deployments().items():
        annotations = d["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"
        assert int(annotations["prometheus.io/port"]) == PORTS[service], service


def test_images_are_current_and_pinned_and_ours_is_tagged_by_version_with_a_registry():
    services = compose()["services"]
    kafka = services["kafka"]["image"]
    assert kafka.startswith("apache/kafka:")
    assert int(kafka.split(":")[1].split(".")[0]) >= 4, "the project targets Apache Kafka 4 (KRaft only)"
    for name, s in services.items():
        assert not s["image"].endswith(":latest"), name
        if name not in INFRA:
            assert s["image"].startswith("${REGISTRY"), f"{name}: the registry comes from the env file"
            assert s["image"].endswith(":${APPEALS_VERSION:?set APPEALS_VERSION}"), name
    example = dict(
        line.split("=", 1) for line in (DEPLOY / ".env.example").read_text().splitlines() if "=" in line
    )
    assert example["APPEALS_VERSION"] == VERSION
    assert example["CALLER_ID_SALT"] == "", "no salt ships with the example"

    kustomization = yaml.safe_load((DEPLOY / "k8s" / "kustomization.yaml").read_text())
    (image,) = kustomization["images"]
    assert image["name"] == "appeals"
    assert "/" in image["newName"], "a registry in front of the image name"
    assert image["newTag"] == VERSION
    listed = set(kustomization["resources"])
    assert listed == {f.name for f in (DEPLOY / "k8s").glob("*.yaml")} - {"kustomization.yaml"}
    for d in deployments().values():
        for c in d["spec"]["template"]["spec"]["containers"]:
            assert c["image"] == "appeals", "kustomize sets the registry and the tag"


def test_no_secret_ships_and_production_refuses_demo_values():
    assert not [d for d in k8s_documents() if d["kind"] == "Secret"], "create the Secret per installation"
    (settings,) = [d for d in k8s_documents() if d["kind"] == "ConfigMap" and "APPEALS_ENV" in d["data"]]
    assert settings["data"]["APPEALS_ENV"] == "production"
    assert "kubectl create secret generic appeals-secrets" in (DEPLOY / "k8s" / "configmap.yaml").read_text()
    for name, s in compose()["services"].items():
        if name not in INFRA:
            assert s["environment"]["APPEALS_ENV"] == "production", name
            assert s["environment"]["CALLER_ID_SALT"].startswith("${CALLER_ID_SALT:?"), name


def test_compose_sets_its_servers_as_the_embedded_ones():
    # PostgreSQL's lock table holds a flood's records batch (a lock a ticket it touches), and Redis
    # keeps a hotspot's cluster of tickets as a skip list and its append-only file as
    # `shared.embedded` starts them.
    services = compose()["services"]
    postgres = services["postgres"]["command"]
    assert f"max_locks_per_transaction={POSTGRES_MAX_LOCKS_PER_TRANSACTION}" in postgres
    redis = services["redis"]["command"]
    assert redis[redis.index("--zset-max-listpack-entries") + 1] == str(REDIS_ZSET_PACKED_MOST)
    assert redis[redis.index("--appendfsync") + 1] == "always"
    for name, value in REDIS_AOF_OPTIONS:
        assert redis[redis.index(f"--{name}") + 1] == value, name


def test_compose_counts_redis_healthy_once_it_has_read_its_data_back():
    # While Redis reads its append-only file back it answers LOADING, and `redis-cli ping` exits 0.
    check = compose()["services"]["redis"]["healthcheck"]
    assert check["test"] == ["CMD-SHELL", "redis-cli ping | grep -q PONG"]
    assert check["start_period"] == "300s"


def test_every_process_has_liveness_and_readiness_on_the_port_it_serves():
    for service, d in deployments().items():
        (c,) = d["spec"]["template"]["spec"]["containers"]
        live, ready = c["livenessProbe"]["httpGet"], c["readinessProbe"]["httpGet"]
        assert live["port"] == ready["port"] == PORTS[service], service
        assert ready["path"] == "/readyz", service
        assert live["path"] == ("/livez" if service == "api" else "/healthz"), service
    for name, s in compose()["services"].items():
        if name not in INFRA:
            assert f"127.0.0.1:{PORTS[name]}/readyz" in " ".join(s["healthcheck"]["test"]), name


def test_classifier_replicas_share_one_model_store():
    (claim,) = [d for d in k8s_documents() if d["kind"] == "PersistentVolumeClaim"]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"], "every replica mounts it"
    for service in ("classifier", "api"):
        spec = deployments()[service]["spec"]["template"]["spec"]
        claims = {v["persistentVolumeClaim"]["claimName"] for v in spec["volumes"]}
        assert claims == {claim["metadata"]["name"]}, service
        (mount,) = spec["containers"][0]["volumeMounts"]
        assert mount["mountPath"] == f"/app/{DEFAULTS.model_dir.as_posix()}", service
    for service in ("classifier", "api"):
        assert "models:/app/var/models" in compose()["services"][service]["volumes"]


# --- the Grafana dashboard against the metrics the code exports ---------------------------------

PROMQL_WORDS = {
    "sum", "avg", "min", "max", "count", "rate", "irate", "increase", "histogram_quantile", "clamp_min",
    "clamp_max", "by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless",
}  # fmt: skip
# Labels Prometheus adds when it scrapes (job, instance) or our relabelling does (service, pod, ...).
TARGET_LABELS = {"job", "instance", "service", "pod", "namespace"}
AGGREGATION = re.compile(r"\b(sum|avg|min|max|count)\s*(?:by\s*\(([^)]*)\))?\s*\(")


def exported() -> dict[str, set[str]]:
    """Every sample name the code's registry can expose -> the labels it carries."""
    out: dict[str, set[str]] = {}
    for name, collector in REGISTRY._names_to_collectors.items():
        labels = set(getattr(collector, "_labelnames", ()))
        out[name] = labels | ({"le"} if name.endswith("_bucket") else set())
    return out


def panel_expressions() -> list[tuple[str, str]]:
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "appeals.json").read_text())
    return [(p["title"], t["expr"]) for p in dashboard["panels"] for t in p["targets"]]


def parse(expr: str) -> tuple[set[str], set[str]]:
    """(metric names, label names) an expression uses."""
    labels = {
        label.strip()
        for group in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expr)
        for label in group.split(",")
    }
    for matchers in re.findall(r"\{([^}]*)\}", expr):
        labels |= set(re.findall(r"([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)", matchers))
    bare = re.sub(r"\b(?:by|without)\s*\([^)]*\)|\{[^}]*\}|\[[^\]]*\]|\d+(?:\.\d+)?(?:e-?\d+)?", " ", expr)
    names = set(re.findall(r"[a-zA-Z_:][\w:]*", bare)) - PROMQL_WORDS
    return names, labels - {""}


def top_level_split(expr: str, op: str) -> list[str]:
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(expr):
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if ch == op and depth == 0:
            parts.append(expr[start:i])
            start = i + 1
    return [*parts, expr[start:]]


@pytest.mark.parametrize(("title", "expr"), panel_expressions())
def test_every_panel_reads_metrics_and_labels_the_code_exports(title, expr):
    metrics = exported()
    names, labels = parse(expr)
    assert names, f"{title}: no metric in {expr!r}"
    unknown = names - set(metrics)
    assert not unknown, f"{title}: no such metric {unknown} (shared/metrics.py defines the names)"
    available = set().union(*(metrics[n] for n in names)) | TARGET_LABELS
    assert labels <= available, f"{title}: labels {labels - available} are not on {names}"


@pytest.mark.parametrize(("title", "expr"), [(t, e) for t, e in panel_expressions() if "/" in e])
def test_ratio_panels_divide_series_with_the_same_labels(title, expr):
    """a / b matches series label for label: both sides must be aggregated to the same labels, or the
    result is empty (an unaggregated side keeps job and instance, which the other side lacks)."""
    sides = top_level_split(expr, "/")
    assert len(sides) == 2, title
    groupings = []
    for side in sides:
        outer = AGGREGATION.search(side)
        assert outer, f"{title}: {side.strip()!r} is not aggregated"
        groupings.append({label.strip() for label in (outer.group(2) or "").split(",")} - {""})
    assert groupings[0] == groupings[1], f"{title}: {groupings[0]} / {groupings[1]}"


@pytest.mark.parametrize("line", ['ENTRYPOINT ["appeals"]', "appeals train"])
def test_dockerfile_builds_the_cli_with_a_model(line):
    assert line in (DEPLOY / "Dockerfile").read_text()


def test_the_env_file_and_the_readme_name_every_variable_compose_requires():
    # `${NAME:?...}` stops compose when NAME is unset: the example env file must have each, and the
    # README's steps must say to set each (it once left MINIO_PASSWORD out).
    required = set(re.findall(r"\$\{(\w+):\?", (DEPLOY / "docker-compose.yml").read_text(encoding="utf-8")))
    assert {"CALLER_ID_SALT", "POSTGRES_PASSWORD", "MINIO_PASSWORD"} <= required
    lines = (DEPLOY / ".env.example").read_text().splitlines()
    example = {line.split("=", 1)[0] for line in lines if "=" in line and not line.startswith("#")}
    assert required <= example, required - example
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    steps = readme[readme.index("Copy `deploy/.env.example`") :].split("docker compose -f", 1)[0]
    # "the registry, the version" in words, the rest by name
    named = set(re.findall(r"`(\w+)`", steps)) | {"REGISTRY", "APPEALS_VERSION"}
    assert required <= named, f"the README's compose steps do not say to set {required - named}"


def test_the_image_exposes_every_port_a_service_serves():
    exposed = re.search(r"^EXPOSE (.+)$", (DEPLOY / "Dockerfile").read_text(), re.M)
    assert exposed
    assert {int(p) for p in exposed[1].split()} == set(PORTS.values())
