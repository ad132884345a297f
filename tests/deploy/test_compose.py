"""docker-compose.yml, validated offline by compose-go (the library Docker Compose itself is built on)."""

from __future__ import annotations

import json
import os
import re
from typing import Any

import pytest
import yaml

from tests.deploy.catalogue import ROOT
from tests.deploy.tools import compose_binary, run

SECRETS = {
    "HALOWEAVE_SNAPSHOT_MASTER_KEY": "ab" * 32,
    "RAY_AUTH_TOKEN": "cd" * 32,
    "S3_SECRET_KEY": "compose-test-secret",
    "GRAFANA_ADMIN_PASSWORD": "compose-test-password",
    "ALERTMANAGER_WEBHOOK_URL": "https://hooks.example.com/services/compose-test",
}
LONG_RUNNING = {
    "redis", "s3", "tracker", "snapshot", "ray-head", "ray-worker", "ray-worker-gpu", "inference", "gateway",
    "prometheus", "alertmanager", "grafana",
}  # fmt: skip


def compose_config(env: dict[str, str], *extra: str) -> tuple[int, str]:
    # A clean environment: only what the test gives, so nothing leaks in from the machine running it.
    base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(ROOT)}
    argv = [compose_binary(), "-f", str(ROOT / "docker-compose.yml"), "--profile", "gpu", "config", *extra]
    result = run(argv, cwd=ROOT, env={**base, **env})
    return result.returncode, result.stdout + result.stderr


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    code, output = compose_config(SECRETS, "--format", "json")
    assert code == 0, output
    data: dict[str, Any] = json.loads(output[output.index("{") :])
    return data


def test_the_whole_system_is_there(config: dict[str, Any]) -> None:
    assert set(config["services"]) == LONG_RUNNING


def test_every_long_running_service_has_a_health_check(config: dict[str, Any]) -> None:
    # Ray nodes run the inference image without its gRPC server: they must replace the image's check with Ray's.
    for name in LONG_RUNNING:
        test = config["services"][name].get("healthcheck", {}).get("test")
        assert test, f"{name} has no health check"
        if name.startswith("ray-"):
            assert test[1:3] == ["ray", "health-check"], name


def test_services_start_after_their_peers_are_healthy(config: dict[str, Any]) -> None:
    services = config["services"]

    def waits_for(name: str) -> dict[str, str]:
        return {peer: dep["condition"] for peer, dep in services[name].get("depends_on", {}).items()}

    healthy = "service_healthy"
    assert waits_for("tracker") == {"redis": healthy}
    assert waits_for("snapshot") == {"s3": healthy}
    assert waits_for("ray-worker") == {"ray-head": healthy}
    assert waits_for("inference") == {name: healthy for name in ("redis", "tracker", "snapshot", "ray-worker")}
    assert waits_for("gateway") == {name: healthy for name in ("redis", "tracker", "snapshot", "inference")}
    assert waits_for("grafana") == {"prometheus": healthy}


def test_redis_keeps_an_append_only_file_on_a_volume(config: dict[str, Any]) -> None:
    redis = config["services"]["redis"]
    command = redis["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert any(volume["target"] == "/data" and volume["type"] == "volume" for volume in redis["volumes"])


def test_peer_addresses_match_the_ports_the_images_listen_on(config: dict[str, Any]) -> None:
    listens = {}
    for name in ("tracker", "snapshot", "inference"):
        dockerfile = (ROOT / "deploy" / "docker" / f"{name}.Dockerfile").read_text()
        match = re.search(rf"HALOWEAVE_{name.upper()}_LISTEN=0\.0\.0\.0:(\d+)", dockerfile)
        assert match, f"{name}.Dockerfile sets no listen address"
        listens[name] = match.group(1)
    for service in ("gateway", "inference", "tracker", "snapshot"):
        env = config["services"][service]["environment"]
        for peer, port in listens.items():
            assert env[f"HALOWEAVE_{peer.upper()}_ADDR"] == f"{peer}:{port}"
        assert env["HALOWEAVE_REDIS_URL"] == "redis://redis:6379/0"


def test_prometheus_scrapes_the_compose_services_on_their_metrics_ports(config: dict[str, Any]) -> None:
    scrape = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    targets = {job["job_name"]: job["static_configs"][0]["targets"][0] for job in scrape["scrape_configs"]}
    for service in ("tracker", "snapshot", "inference"):
        host, port = targets[f"haloweave-{service}"].split(":")
        assert host in config["services"]
        dockerfile = (ROOT / "deploy" / "docker" / f"{service}.Dockerfile").read_text()
        assert f"HALOWEAVE_{service.upper()}_METRICS_PORT={port}" in dockerfile
    assert targets["haloweave-gateway"] == "gateway:8000"
    mounts = {volume["target"]: volume.get("source", "") for volume in config["services"]["prometheus"]["volumes"]}
    assert mounts["/etc/prometheus"] == str(ROOT / "deploy" / "prometheus")


def test_prometheus_sends_alerts_to_the_compose_alertmanager(config: dict[str, Any]) -> None:
    scrape = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    (alertmanagers,) = scrape["alerting"]["alertmanagers"]
    (target,) = alertmanagers["static_configs"][0]["targets"]
    host, port = target.split(":")
    alertmanager = config["services"][host]
    assert alertmanager["image"].startswith("prom/alertmanager:")
    assert {p["target"] for p in alertmanager["ports"]} == {int(port)}
    assert f"http://127.0.0.1:{port}/-/ready" in alertmanager["healthcheck"]["test"]
    assert config["services"]["prometheus"]["depends_on"][host]["condition"] == "service_started"


def test_alertmanager_reads_the_project_config_and_its_webhook_url_from_a_secret(config: dict[str, Any]) -> None:
    alertmanager = config["services"]["alertmanager"]
    mounts = {volume["target"]: volume for volume in alertmanager["volumes"]}
    assert mounts["/etc/alertmanager"]["source"] == str(ROOT / "deploy" / "alertmanager")
    assert mounts["/etc/alertmanager"]["read_only"] is True
    assert "--config.file=/etc/alertmanager/alertmanager.yml" in alertmanager["command"]
    # A single instance opens no gossip port (its default listens on every address, 9094).
    assert "--cluster.listen-address=" in alertmanager["command"]
    receivers = yaml.safe_load((ROOT / "deploy" / "alertmanager" / "alertmanager.yml").read_text())["receivers"]
    url_files = {hook["url_file"] for receiver in receivers for hook in receiver.get("webhook_configs", [])}
    secret_files = {secret["target"] for secret in alertmanager["secrets"]}
    assert url_files and url_files <= secret_files, f"{url_files} not mounted from a secret: {secret_files}"
    (name,) = [secret["source"] for secret in alertmanager["secrets"]]
    assert config["secrets"][name]["environment"] == "ALERTMANAGER_WEBHOOK_URL"
    assert alertmanager["read_only"] is True and alertmanager["cap_drop"] == ["ALL"]


def test_grafana_gets_the_dashboard_and_its_datasource(config: dict[str, Any]) -> None:
    mounts = {volume["target"]: volume.get("source", "") for volume in config["services"]["grafana"]["volumes"]}
    assert mounts["/etc/grafana/provisioning"] == str(ROOT / "deploy" / "grafana" / "provisioning")
    assert mounts["/var/lib/grafana/dashboards"] == str(ROOT / "deploy" / "grafana" / "dashboards")
    assert config["services"]["grafana"]["environment"]["GF_PROMETHEUS_URL"] == "http://prometheus:9090"


def test_images_are_built_from_dockerfiles_that_exist_and_run_hardened(config: dict[str, Any]) -> None:
    for name, service in config["services"].items():
        if "build" in service:
            assert (ROOT / service["build"]["dockerfile"]).is_file(), name
        if service.get("image", "").startswith("haloweave/"):
            assert service["read_only"] is True, name
            assert service["cap_drop"] == ["ALL"], name


def test_the_ray_cluster_and_its_driver_share_the_auth_token(config: dict[str, Any]) -> None:
    for name in ("ray-head", "ray-worker", "ray-worker-gpu", "inference"):
        env = config["services"][name]["environment"]
        assert env["RAY_AUTH_MODE"] == "token", name
        assert env["RAY_AUTH_TOKEN"] == SECRETS["RAY_AUTH_TOKEN"], name
    assert config["services"]["inference"]["environment"]["RAY_ADDRESS"] == "ray-head:6379"


def test_the_gpu_worker_reserves_a_gpu(config: dict[str, Any]) -> None:
    devices = config["services"]["ray-worker-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"] and devices[0]["count"] == 1


@pytest.mark.parametrize("missing", sorted(SECRETS))
def test_a_missing_secret_stops_the_configuration_naming_it(missing: str) -> None:
    env = {name: value for name, value in SECRETS.items() if name != missing}
    code, output = compose_config(env, "--quiet")
    assert code != 0
    assert f"required variable {missing} is missing" in output
