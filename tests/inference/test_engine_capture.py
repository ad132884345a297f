"""Attention capture: rows equal the eager reference in every mode, cost no change in logits, and the prefill only
ever materialises its last query's row."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from services.inference.engine import CAPTURE_MODES, Engine, EngineConfig
from services.inference.engine import attention as attention_module

from .engine_support import prompt_ids

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine(EngineConfig(threads=2))


@pytest.fixture(scope="module")
def eager(engine: Engine) -> Iterator[torch.nn.Module]:
    model = AutoModelForCausalLM.from_pretrained(engine.config.model_path, attn_implementation="eager")
    model.eval()
    yield model


def eager_rows(model: torch.nn.Module, ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """[layers, heads, ctx] attention of the last query, and its logits, from a full eager forward."""
    with torch.no_grad():
        out = model(torch.tensor([ids]), output_attentions=True)
    return torch.stack([a[0, :, -1] for a in out.attentions]).float(), out.logits[0, -1]


def aggregate(rows: torch.Tensor, mode: str) -> np.ndarray:
    """The DESIGN.md section 3 definitions, written independently of the engine's running sums."""
    layers = rows.shape[0]
    if mode in ("mean", "full"):
        agg = rows.mean(dim=(0, 1))
    elif mode == "max":
        agg = rows.amax(dim=(0, 1))
    elif mode == "last_layer":
        agg = rows[-1].mean(dim=0)
    else:
        weights = torch.arange(1, layers + 1, dtype=torch.float32)
        agg = (rows.mean(dim=1) * (weights / weights.sum())[:, None]).sum(dim=0)
    return agg.numpy()


@pytest.mark.parametrize("mode", CAPTURE_MODES)
def test_prefill_and_decode_rows_match_eager_attention(engine: Engine, eager: torch.nn.Module, mode: str) -> None:
    ids = prompt_ids(engine)
    cache = engine.new_cache()
    first = engine.prefill(cache, ids, list(range(len(ids))), capture=mode)
    reference, ref_logits = eager_rows(eager, ids)
    assert first.attention is not None and first.attention.shape == (len(ids),)
    assert first.attention.dtype == np.float32
    np.testing.assert_allclose(first.attention, aggregate(reference, mode), atol=2e-5)
    torch.testing.assert_close(first.logits, ref_logits, atol=2e-4, rtol=1e-4)

    token = int(torch.argmax(first.logits))
    step = engine.decode(cache, token, len(ids), capture=mode)
    reference, _ = eager_rows(eager, [*ids, token])
    assert step.attention is not None and step.attention.shape == (len(ids) + 1,)
    np.testing.assert_allclose(step.attention, aggregate(reference, mode), atol=2e-5)
    if mode == "full":
        assert step.full is not None and step.full.dtype == np.float16
        assert step.full.shape == (engine.num_layers, engine.num_heads, len(ids) + 1)
        np.testing.assert_allclose(step.full.astype(np.float32), reference.numpy(), atol=1e-3)
        # Each query head's row is a distribution over the context.
        np.testing.assert_allclose(step.full.astype(np.float32).sum(axis=-1), 1.0, atol=5e-3)
    else:
        assert step.full is None
    if mode in ("mean", "last_layer", "weighted_layers", "full"):
        assert step.attention.sum() == pytest.approx(1.0, abs=1e-4)  # averages of distributions


def test_capture_changes_no_logits(engine: Engine) -> None:
    ids = prompt_ids(engine)
    positions = list(range(len(ids)))
    plain, captured = engine.new_cache(), engine.new_cache()
    off = engine.prefill(plain, ids, positions, capture=None)
    on = engine.prefill(captured, ids, positions, capture="mean")
    assert off.attention is None and off.full is None
    # The captured prefill computes its last query outside the fused kernel: equal up to float rounding.
    torch.testing.assert_close(on.logits, off.logits, atol=1e-4, rtol=1e-4)
    captured = engine.new_cache()
    engine.prefill(captured, ids, positions, capture=None)
    token = int(torch.argmax(off.logits))
    for mode in CAPTURE_MODES:
        # Decode runs the same arithmetic with and without capture: the logits are bit-identical.
        a = engine.decode(plain, token, plain.next_position, capture=None)
        b = engine.decode(captured, token, captured.next_position, capture=mode)
        assert torch.equal(a.logits, b.logits), mode
        token = int(torch.argmax(a.logits))


def test_prefill_materialises_only_the_last_row(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    """Spies (calling through) on the two kernels: explicit rows only ever for one query, the rest fused."""
    explicit_queries: list[int] = []
    fused_queries: list[int] = []
    real_rows, real_fused = attention_module._rows, attention_module._fused

    def rows_spy(query: torch.Tensor, *args: object, **kwargs: object) -> tuple[torch.Tensor, torch.Tensor]:
        out, probs = real_rows(query, *args, **kwargs)  # type: ignore[arg-type]
        explicit_queries.append(query.shape[2])
        assert probs.shape[-2] == 1  # the only attention map that exists is one row per head
        return out, probs

    def fused_spy(query: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        fused_queries.append(query.shape[2])
        return real_fused(query, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(attention_module, "_rows", rows_spy)
    monkeypatch.setattr(attention_module, "_fused", fused_spy)
    ids = prompt_ids(engine)
    cache = engine.new_cache()
    out = engine.prefill(cache, ids, list(range(len(ids))), capture="full")
    assert explicit_queries == [1] * engine.num_layers
    assert fused_queries == [len(ids) - 1] * engine.num_layers
    assert out.full is not None and out.full.shape == (engine.num_layers, engine.num_heads, len(ids))


def test_suffix_prefill_after_cache_matches_one_prefill(engine: Engine) -> None:
    """A second message prefilled onto a held cache sees the same context as one prefill of everything."""
    ids = prompt_ids(engine)
    split = len(ids) // 2
    whole, parts = engine.new_cache(), engine.new_cache()
    a = engine.prefill(whole, ids, list(range(len(ids))), capture="mean")
    engine.prefill(parts, ids[:split], list(range(split)), capture=None)
    b = engine.prefill(parts, ids[split:], list(range(split, len(ids))), capture="mean")
    assert a.attention is not None and b.attention is not None
    np.testing.assert_allclose(b.attention, a.attention, atol=1e-5)
    torch.testing.assert_close(b.logits, a.logits, atol=1e-4, rtol=1e-4)


def test_unknown_capture_mode_is_refused_before_anything_changes(engine: Engine) -> None:
    ids = prompt_ids(engine)
    cache = engine.new_cache()
    with pytest.raises(ValueError, match="capture"):
        engine.prefill(cache, ids, list(range(len(ids))), capture="median")
    assert len(cache) == 0 and cache.nbytes == 0
