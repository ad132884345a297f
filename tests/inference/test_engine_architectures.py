"""Other attention styles: tiny randomly initialised Qwen2, Mistral (sliding window) and Gemma 2/3 (soft-capping,
query scaling, alternating sliding layers), saved next to the embedded tokenizer. Nothing is downloaded.

Captured rows must equal each model's own eager attention, and pruning must keep every survivor's cache entry.
HALOWEAVE_TEST_DEVICE / HALOWEAVE_TEST_DTYPE run the same checks on a GPU (e.g. cuda, bfloat16)."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, PretrainedConfig
from transformers.models.gemma2 import Gemma2Config
from transformers.models.gemma3 import Gemma3TextConfig
from transformers.models.mistral import MistralConfig
from transformers.models.qwen2 import Qwen2Config

from services.common import model_store
from services.inference.engine import Engine, EngineConfig

pytestmark = pytest.mark.slow
VOCAB = 49152  # the embedded tokenizer's
SHAPE = {
    "vocab_size": VOCAB,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "max_position_embeddings": 512,
}
SLIDING = ["sliding_attention", "full_attention", "sliding_attention", "full_attention"]
CONFIGS: dict[str, PretrainedConfig] = {
    "qwen2": Qwen2Config(**SHAPE),
    "mistral": MistralConfig(**SHAPE, sliding_window=12),
    "gemma2": Gemma2Config(
        **SHAPE, sliding_window=12, layer_types=SLIDING, attn_logit_softcapping=20.0, query_pre_attn_scalar=32
    ),
    "gemma3": Gemma3TextConfig(**SHAPE, sliding_window=12, layer_types=SLIDING, query_pre_attn_scalar=32),
}
DEVICE = os.environ.get("HALOWEAVE_TEST_DEVICE", "cpu")
DTYPE = os.environ.get("HALOWEAVE_TEST_DTYPE", "float32")
# Reduced precision rounds scores and activations: the comparisons widen accordingly.
ROW_TOL, LOGIT_TOL = (1e-3, 1e-4) if DTYPE == "float32" else (2e-2, 5e-2)
IDS = [int(i) for i in np.random.default_rng(3).integers(10, VOCAB, 30)]


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def tiny(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Engine, torch.nn.Module]:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp(request.param)
    model = AutoModelForCausalLM.from_config(CONFIGS[request.param])
    model.save_pretrained(str(path))
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json"):
        source = model_store.default_model_path() / name
        if source.exists():
            shutil.copy(source, path / name)
    engine = Engine(EngineConfig(model_path=str(path), device=DEVICE, dtype=DTYPE))
    eager = AutoModelForCausalLM.from_pretrained(str(path), attn_implementation="eager", dtype=engine.model.dtype)
    eager = eager.to(engine.model.device).eval()
    return engine, eager


def eager_last_rows(model: torch.nn.Module, ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        out = model(torch.tensor([ids], device=model.device), output_attentions=True)
    return torch.stack([a[0, :, -1] for a in out.attentions]).float().cpu(), out.logits[0, -1].float().cpu()


def test_capture_matches_eager_for_each_architecture(tiny: tuple[Engine, torch.nn.Module]) -> None:
    engine, eager = tiny
    assert engine.num_kv_heads == 2 and engine.num_heads == 4  # grouped-query attention
    cache = engine.new_cache()
    out = engine.prefill(cache, IDS, list(range(len(IDS))), capture="full")
    rows, logits = eager_last_rows(eager, IDS)
    assert out.full is not None
    np.testing.assert_allclose(out.full.astype(np.float32), rows.numpy(), atol=ROW_TOL)
    torch.testing.assert_close(out.logits, logits, atol=LOGIT_TOL, rtol=LOGIT_TOL)
    token = int(torch.argmax(out.logits))
    step = engine.decode(cache, token, len(IDS), capture="full")
    rows, logits = eager_last_rows(eager, [*IDS, token])
    assert step.full is not None
    np.testing.assert_allclose(step.full.astype(np.float32), rows.numpy(), atol=ROW_TOL)
    torch.testing.assert_close(step.logits, logits, atol=LOGIT_TOL, rtol=LOGIT_TOL)


def test_trailing_prune_equals_fresh_prefill_for_each_architecture(tiny: tuple[Engine, torch.nn.Module]) -> None:
    engine, _ = tiny
    cache = engine.new_cache()
    engine.prefill(cache, IDS, list(range(len(IDS))), capture=None)
    engine.evict(cache, list(range(20, 30)))
    step = engine.decode(cache, 77, 40, capture="mean")  # past the gap
    fresh = engine.new_cache()
    reference = engine.prefill(fresh, [*IDS[:20], 77], [*range(20), 40], capture="mean")
    torch.testing.assert_close(step.logits, reference.logits, atol=LOGIT_TOL, rtol=LOGIT_TOL)
    assert step.attention is not None and reference.attention is not None
    np.testing.assert_allclose(step.attention, reference.attention, atol=ROW_TOL / 10)


def test_export_import_round_trip_for_each_architecture(tiny: tuple[Engine, torch.nn.Module]) -> None:
    """Bit-exact in every dtype (bfloat16 travels as its bit patterns) and on every device."""
    engine, _ = tiny
    cache = engine.new_cache()
    engine.prefill(cache, IDS, list(range(len(IDS))), capture=None)
    arrays = engine.export_cache(cache)
    restored = engine.import_cache(arrays)
    for name, array in engine.export_cache(restored).items():
        assert array.dtype == arrays[name].dtype and np.array_equal(array, arrays[name]), name
    a = engine.decode(cache, 77, 30, capture="max")
    b = engine.decode(restored, 77, 30, capture="max")
    assert torch.equal(a.logits, b.logits)
    assert a.attention is not None and b.attention is not None and np.array_equal(a.attention, b.attention)
