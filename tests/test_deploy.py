"""deploy/ cannot be run here (no Docker engine), so check what can go wrong on paper: the files
parse, every service they start is an `appeals run` target, every setting they pass is one the
services read, and Prometheus scrapes the ports the services serve."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from services.cli import Service
from shared.settings import Settings

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
APP_SETTINGS = {name.upper() for name in Settings.model_fields}
INFRA = {"kafka", "redis", "postgres", "prometheus", "grafana"}


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
    for name, s in compose()["services"].items():
        if name in INFRA:
            continue
        unknown = set(s["environment"]) - APP_SETTINGS
        assert not unknown, f"{name} passes settings no service reads: {unknown}"
        assert {"KAFKA_BOOTSTRAP_SERVERS", "REDIS_URL"} <= set(s["environment"])


def test_kubernetes_has_a_deployment_per_service_with_known_settings():
    docs = k8s_documents()
    deployments = [d for d in docs if d["kind"] == "Deployment"]
    started = {c["args"][1] for d in deployments for c in d["spec"]["template"]["spec"]["containers"]}
    assert started == {s.value for s in Service}
    for d in docs:
        if d["kind"] in ("ConfigMap", "Secret"):
            keys = set(d.get("data") or {}) | set(d.get("stringData") or {})
            assert keys <= APP_SETTINGS, f"{d['metadata']['name']}: unknown settings {keys - APP_SETTINGS}"
    for d in deployments:
        for c in d["spec"]["template"]["spec"]["containers"]:
            names = {e["name"] for e in c.get("env", [])}
            assert names <= APP_SETTINGS, f"{d['metadata']['name']}: unknown settings {names - APP_SETTINGS}"


def test_prometheus_scrapes_the_ports_the_services_serve():
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    targets = {t for job in config["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]}
    defaults = Settings()
    for worker in ("intake", "classifier", "router", "notifier"):
        assert f"{worker}:{getattr(defaults, f'metrics_port_{worker}')}" in targets
    assert f"api:{defaults.api_port}" in targets


@pytest.mark.parametrize("line", ['ENTRYPOINT ["appeals"]', "appeals train"])
def test_dockerfile_builds_the_cli_with_a_model(line):
    assert line in (DEPLOY / "Dockerfile").read_text()
