"""Fixtures for the vLLM engine's tests, which run in the vLLM environment (`make test-vllm`): one real vLLM engine
on the embedded model, the same model in transformers with eager attention as the reference for rows and tokens, and
the worker-test harness (real tracker process, real Redis) with the vLLM engine as the worker's engine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, PreTrainedModel

from services.inference.engine import EngineConfig
from services.inference.engine_vllm import VllmEngine, VllmOptions
from tests.inference.conftest import chat, start_worker, tracker_addr  # noqa: F401  (the worker harness)

# Small enough that two prompts of 300 tokens exceed vLLM's per-step budget (max(step tokens, model length)).
MAX_MODEL_LEN = 512


@pytest.fixture(scope="session")
def vllm_engine() -> VllmEngine:
    """The one vLLM engine of the test process: vLLM keeps per-process global state (its parallel groups), and a
    second engine started and dropped in the same process tears it down under the first."""
    options = VllmOptions(max_model_len=MAX_MODEL_LEN, max_step_tokens=MAX_MODEL_LEN, kv_cache_bytes=256 << 20)
    return VllmEngine(EngineConfig(threads=2), options)


@pytest.fixture(scope="session")
def worker_engine(vllm_engine: VllmEngine) -> VllmEngine:
    """The engine the worker harness (tests/inference/conftest.py) gives its workers."""
    return vllm_engine


@pytest.fixture(scope="session")
def eager() -> PreTrainedModel:
    model = AutoModelForCausalLM.from_pretrained(
        EngineConfig().model_path, dtype=torch.float32, attn_implementation="eager"
    )
    return model.eval()


@pytest.fixture
def unknown_architecture(tmp_path: Path) -> Path:
    """The embedded model's files, with a config.json naming an architecture no library knows."""
    model = Path(EngineConfig().model_path)
    broken = tmp_path / "unknown-architecture"
    broken.mkdir()
    for file in model.iterdir():
        if file.name != "config.json":
            (broken / file.name).symlink_to(file)
    config = json.loads((model / "config.json").read_text())
    (broken / "config.json").write_text(json.dumps({**config, "architectures": ["NoSuchModelForCausalLM"]}))
    return broken
