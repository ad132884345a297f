"""The vLLM engine's own environment (scripts/setup.sh --vllm), which runs the inference service when
HALOWEAVE_ENGINE=vllm: vLLM pins other versions of some of this project's dependencies (docs/vllm.md)."""

from __future__ import annotations

from pathlib import Path

VLLM_VENV = Path(__file__).resolve().parents[1] / ".venv-vllm"


def vllm_python() -> str:
    """The environment's interpreter; a clear error, naming the command that sets it up, when it is missing."""
    python = VLLM_VENV / "bin" / "python"
    if not python.exists():
        raise RuntimeError(
            f"the vLLM engine's environment ({VLLM_VENV.name}) is not set up: run `make setup-vllm` (a few minutes)"
        )
    return str(python)
