"""The set-up installs for `make run` only what running needs; `--test` adds what only the checks use."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TEST_ONLY_APT = {"chromium", "prometheus", "prometheus-alertmanager"}
# The Debian binaries the tests and benchmarks start (tests/gateway/test_browser*.py, tests/deploy, devstack).
BINARIES = ("chromium", "prometheus", "promtool", "prometheus-alertmanager", "amtool", "redis-server", "gcc")


def apt_packages(*flags: str) -> set[str]:
    done = subprocess.run(
        ["bash", str(ROOT / "scripts" / "setup.sh"), *flags, "--print-apt"], capture_output=True, text=True, check=True
    )
    return set(done.stdout.split())


def test_run_installs_no_browser_and_no_prometheus_and_test_does() -> None:
    run, test = apt_packages(), apt_packages("--test")
    assert {"redis-server", "gcc", "libc6-dev"} <= run
    assert not run & TEST_ONLY_APT
    assert run | TEST_ONLY_APT <= test


def test_every_binary_the_tests_start_comes_from_a_listed_package() -> None:
    if shutil.which("dpkg") is None:
        pytest.skip("not a Debian machine")
    test = apt_packages("--test")
    for binary in BINARIES:
        path = shutil.which(binary)
        assert path is not None, f"{binary} is not installed: run `make setup-test`"
        owner = subprocess.run(["dpkg", "-S", path], capture_output=True, text=True)
        if owner.returncode != 0:  # an alternatives link, which no package owns: the file it points to
            owner = subprocess.run(
                ["dpkg", "-S", str(Path(path).resolve())], capture_output=True, text=True, check=True
            )
        packages = {part.strip() for part in owner.stdout.split(":")[0].split(",")}
        assert packages & test, f"{binary} comes from {packages}, which scripts/apt-packages*.txt do not list"


def _distribution(requirement: str) -> str:
    return re.split(r"[\[<>=!~; ]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def test_running_imports_no_package_that_only_the_checks_install() -> None:
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert {_distribution(r) for r in extras["build"]} == {"grpcio-tools", "mypy-protobuf"}  # the stub generator
    assert "haloweave[build]" in extras["dev"]  # the checks' set-up includes it
    dev_only = {_distribution(r) for r in extras["dev"]} - {"haloweave"}
    providers = importlib.metadata.packages_distributions()
    imported: dict[str, str] = {}
    for top in ("services", "devstack"):
        for file in (ROOT / top).rglob("*.py"):
            for node in ast.walk(ast.parse(file.read_text())):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
                if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    names = [node.module]
                for name in names:
                    imported.setdefault(name.split(".")[0], str(file.relative_to(ROOT)))
    assert "grpc" in imported and "pydantic" in imported  # the scan sees imports
    wrong = {
        module: (where, dists)
        for module, where in imported.items()
        if (dists := {d.lower() for d in providers.get(module, [])} & dev_only)
    }
    assert not wrong, f"imported by the services or devstack but installed only by `make test`: {wrong}"
