"""The Compose stack: the file validated by the real Compose tool, and what it wires."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_DIR = ROOT / "compose"
COMPOSE_FILE = COMPOSE_DIR / "docker-compose.yml"
SCRIPT = COMPOSE_DIR / "start-monitoring.sh"
BASH = shutil.which("bash") or "/bin/bash"
DASHBOARD = COMPOSE_DIR / "grafana" / "dashboards" / "labotel.json"
DATASOURCES = COMPOSE_DIR / "grafana" / "provisioning" / "datasources" / "labotel.yml"


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def compose_command() -> list[str] | None:
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"],
                                 capture_output=True).returncode == 0:
        return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy else None


@pytest.mark.skipif(compose_command() is None,
                    reason="neither `docker compose` nor `docker-compose` is installed "
                           "(Debian package 'docker-compose'); no engine is needed")
def test_compose_file_is_valid_for_the_compose_tool():
    result = subprocess.run([*compose_command(), "--file", str(COMPOSE_FILE), "config", "--quiet"],
                            capture_output=True, text=True, timeout=60, cwd=COMPOSE_DIR)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_stack_has_every_service(compose):
    assert set(compose["services"]) == {
        "labend", "alerts-webhook", "otel-collector", "jaeger", "prometheus", "alertmanager",
        "node-exporter", "cadvisor", "grafana"}
    for name, service in compose["services"].items():
        for dependency in service.get("depends_on", {}):
            assert dependency in compose["services"], f"{name} depends on unknown {dependency}"


def test_images_are_pinned(compose):
    for name, service in compose["services"].items():
        image = service["image"]
        repository, _, tag = image.rpartition(":")
        assert repository and tag and tag != "latest" and any(c.isdigit() for c in tag), \
            f"{name}: image {image} is not pinned to a version"
    assert "jaegertracing/jaeger:2." in compose["services"]["jaeger"]["image"]
    base = next(line for line in (COMPOSE_DIR / "Dockerfile").read_text().splitlines()
                if line.startswith("FROM "))
    assert any(c.isdigit() for c in base.split(":", 1)[1]), base


def test_ports_are_published_on_the_chosen_interface_only(compose):
    published = {}
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            assert port.startswith("${LABOTEL_BIND:-127.0.0.1}:"), f"{name}: {port}"
            published[int(port.split(":")[-2])] = name
    assert published == {8080: "labend", 5001: "alerts-webhook", 4317: "otel-collector",
                         4318: "otel-collector", 13133: "otel-collector", 16686: "jaeger",
                         9090: "prometheus", 9093: "alertmanager", 3000: "grafana"}


def test_health_checks_and_named_volumes(compose):
    services = compose["services"]
    for name in ("labend", "alerts-webhook", "prometheus", "alertmanager", "grafana",
                 "node-exporter", "cadvisor"):
        assert services[name]["healthcheck"]["test"][0] == "CMD", name
    assert set(compose["volumes"]) == {"prometheus-data", "alertmanager-data", "grafana-data"}
    assert "prometheus-data:/prometheus" in services["prometheus"]["volumes"]
    assert "grafana-data:/var/lib/grafana" in services["grafana"]["volumes"]


def test_mounted_files_exist(compose):
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("."):
                assert (COMPOSE_DIR / source).exists(), f"{name} mounts missing {source}"


def test_demo_and_webhook_commands(compose):
    services = compose["services"]
    assert services["labend"]["command"] == ["labotel", "demo", "--address", "0.0.0.0:8080"]
    assert services["alerts-webhook"]["command"] == [
        "labotel", "alerts-webhook", "--address", "0.0.0.0:5001"]
    assert 'CMD ["labotel", "demo", "--address", "0.0.0.0:8080"]' in \
        (COMPOSE_DIR / "Dockerfile").read_text()
    env = services["labend"]["environment"]
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector:4317"


def test_prometheus_scrapes_the_compose_services(compose):
    prometheus = yaml.safe_load((COMPOSE_DIR / "prometheus" / "prometheus.yml").read_text())
    assert prometheus["global"]["scrape_interval"] == "5s"
    for job in prometheus["scrape_configs"]:
        host = job["static_configs"][0]["targets"][0].split(":")[0]
        assert host == "localhost" or host in compose["services"], job["job_name"]
    jobs = {job["job_name"] for job in prometheus["scrape_configs"]}
    assert {"labend", "otel-collector", "node", "cadvisor"} <= jobs


def test_alertmanager_renders_its_config_from_the_environment(compose):
    alertmanager = compose["services"]["alertmanager"]
    assert alertmanager["entrypoint"][1] == "/etc/alertmanager/render-config.sh"
    assert alertmanager["environment"]["SMTP_SMARTHOST"] == "${SMTP_SMARTHOST:-}"
    assert alertmanager["environment"]["SLACK_WEBHOOK_URL"] == "${SLACK_WEBHOOK_URL:-}"


def test_dashboard_uses_the_provisioned_datasource_uids():
    text = DASHBOARD.read_text()
    assert "${DS_" not in text
    uids = {d["uid"] for d in yaml.safe_load(DATASOURCES.read_text())["datasources"]}
    assert uids == {"labotel-prometheus", "labotel-jaeger", "labotel-alertmanager"}
    dashboard = json.loads(text)
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert len(panels) >= 10
    for panel in panels:
        assert panel["datasource"]["uid"] in uids, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "labotel-prometheus", panel["title"]
            assert target["expr"].strip(), panel["title"]
    for variable in dashboard["templating"]["list"]:
        assert variable["datasource"]["uid"] == "labotel-prometheus"


def run_script(*args: str, path: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": path if path is not None else os.environ["PATH"]}
    return subprocess.run([BASH, str(SCRIPT), *args], capture_output=True, text=True,
                          env=env, timeout=60)


def test_script_explains_when_docker_is_missing(tmp_path):
    # A PATH with the tools the script needs but no docker.
    for tool in ("dirname", "sed", "cat"):
        (tmp_path / tool).symlink_to(shutil.which(tool))
    for command in ("start", "stop", "status", "logs"):
        result = run_script(command, path=str(tmp_path))
        assert result.returncode == 127, command
        assert "Docker is not installed" in result.stderr
        assert "install Docker Engine" in result.stderr


@pytest.mark.skipif(shutil.which("docker") is None or compose_command() != [
    shutil.which("docker-compose")], reason="needs a docker client without the Compose plugin")
def test_script_refuses_when_the_engine_is_unreachable():
    result = run_script("status")
    assert result.returncode == 1
    assert "cannot reach the Docker engine" in result.stderr


def test_script_usage():
    result = run_script("help")
    assert result.returncode == 0
    for command in ("start", "stop", "status", "logs [SERVICE]"):
        assert f"./start-monitoring.sh {command}" in result.stdout
    bad = run_script("restart-everything")
    assert bad.returncode == 2
    assert "unknown command 'restart-everything'" in bad.stderr
