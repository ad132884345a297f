"""The vLLM engine against transformers' eager attention: each request's captured row in every aggregation mode,
inside a batch of unequal requests; greedy tokens; a prune by re-prefill that reuses the cached prefix; refusals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import PreTrainedModel

from services.inference.engine import BatchEntry, EngineConfig, EngineInputError, SamplingParams, StepOutput
from services.inference.engine.capture import CAPTURE_MODES, reduce
from services.inference.engine_vllm import EngineStartError, NotSupported, VllmCache, VllmEngine, VllmOptions
from services.inference.engine_vllm.engine import BLOCK_SIZE
from tests.vllm.conftest import MAX_MODEL_LEN

ROW_TOL = 1e-5  # float32 rows; vLLM's CPU kernels and eager attention differ only in summation order
FULL_TOL = 2e-3  # `full` ships float16


def reference(eager: PreTrainedModel, ids: list[int]) -> tuple[torch.Tensor, int]:
    """[layers, heads, ctx] attention of the last token, and the greedy next token."""
    rows, tokens = references(eager, ids, 1)
    return rows[0], tokens[0]


def references(eager: PreTrainedModel, ids: list[int], last: int) -> tuple[list[torch.Tensor], list[int]]:
    """The same for each of the last `last` tokens of `ids`, from one forward: with causal attention, token t's row
    over the tokens up to it is what a forward ending at t computes."""
    with torch.inference_mode():
        out = eager(input_ids=torch.tensor([ids]), output_attentions=True)
    stacked = torch.stack([a[0] for a in out.attentions]).float()  # [layers, heads, T, T]
    n = len(ids)
    rows = [stacked[:, :, t, : t + 1] for t in range(n - last, n)]
    return rows, [int(out.logits[0, t].argmax()) for t in range(n - last, n)]


def prompt(engine: VllmEngine, text: str) -> list[int]:
    return list(engine.tokenizer(text)["input_ids"])


def entry(cache: VllmCache, ids: list[int], mode: str | None = "mean") -> BatchEntry:
    start = cache.next_position
    return BatchEntry(cache, ids, list(range(start, start + len(ids))), mode)


@pytest.mark.parametrize("mode", CAPTURE_MODES)
def test_each_requests_row_in_a_batch_matches_eager_attention(
    vllm_engine: VllmEngine, eager: PreTrainedModel, mode: str
) -> None:
    texts = ["The cat sat.", "The quick brown fox jumps over the lazy dog, twice.", "Paris is the capital of"]
    prompts = [prompt(vllm_engine, t) for t in texts]
    caches = [vllm_engine.new_cache() for _ in prompts]
    outs = vllm_engine.forward([entry(c, p, mode) for c, p in zip(caches, prompts, strict=True)])
    steps: list[list[StepOutput]] = [[] for _ in prompts]
    for step in range(4):  # the prompts, then three decodes of all three together
        for out, seen in zip(outs, steps, strict=True):
            assert out is not None and out.token is not None and out.attention is not None
            seen.append(out)
        if step < 3:
            outs = vllm_engine.forward([entry(c, [s[-1].token], mode) for c, s in zip(caches, steps, strict=True)])
    for p, seen in zip(prompts, steps, strict=True):
        sequence = p + [out.token for out in seen]
        rows, tokens = references(eager, sequence[:-1], len(seen))
        assert [out.token for out in seen] == tokens
        for out, row in zip(seen, rows, strict=True):
            assert out.attention is not None and out.attention.shape == (row.shape[-1],)
            np.testing.assert_allclose(out.attention, reduce(row, mode).numpy(), atol=ROW_TOL)
            if mode == "full":
                assert out.full is not None and out.full.shape == tuple(row.shape)
                np.testing.assert_allclose(out.full.astype(np.float32), row.numpy(), atol=FULL_TOL)


def test_greedy_decoding_follows_transformers(vllm_engine: VllmEngine, eager: PreTrainedModel) -> None:
    context = prompt(vllm_engine, "Once upon a time, in a small village,")
    cache = vllm_engine.new_cache()
    out = vllm_engine.forward([entry(cache, context, None)])[0]
    tokens = []
    for _ in range(12):
        assert out is not None and out.token is not None and out.attention is None  # capture off: no row
        tokens.append(out.token)
        out = vllm_engine.forward([entry(cache, [out.token], None)])[0]
    assert tokens == references(eager, context + tokens[:-1], len(tokens))[1]


def test_a_prune_reprefills_the_survivors_and_reuses_the_cached_prefix(
    vllm_engine: VllmEngine, eager: PreTrainedModel
) -> None:
    text = " ".join(f"Fact {i}: the number {i} is {'even' if i % 2 == 0 else 'odd'}." for i in range(12))
    context = prompt(vllm_engine, text)
    assert len(context) > 3 * BLOCK_SIZE
    cache = vllm_engine.new_cache()
    out = vllm_engine.forward([entry(cache, context, "mean")])[0]
    assert out is not None and out.token is not None
    first = 2 * BLOCK_SIZE + 5  # prune from inside the third block: the first two are reused
    pruned = list(range(first, first + 10))
    vllm_engine.evict(cache, pruned)
    assert len(cache) == len(context) - 10 and pruned[0] not in cache.positions
    kept = [t for i, t in enumerate(context) if i not in set(pruned)]
    out = vllm_engine.forward([entry(cache, [out.token], "mean")])[0]
    assert out is not None and out.attention is not None
    # The dictionary's positions keep their gap; vLLM's are renumbered, so the model sees the survivors contiguous.
    assert cache.positions[first] == first + 10
    rows, token = reference(eager, [*kept, cache.token_ids[-1]])
    assert out.token == token
    np.testing.assert_allclose(out.attention, reduce(rows, "mean").numpy(), atol=ROW_TOL)
    assert cache.reused == 2 * BLOCK_SIZE  # the blocks before the first pruned token came from the prefix cache


def test_dropping_a_session_empties_the_prefix_cache(vllm_engine: VllmEngine) -> None:
    context = prompt(vllm_engine, " ".join(f"Line {i} of a private note." for i in range(12)))
    first = vllm_engine.new_cache()
    vllm_engine.forward([entry(first, context, None)])
    again = vllm_engine.new_cache()
    vllm_engine.forward([entry(again, context, None)])
    assert again.reused is not None and again.reused >= BLOCK_SIZE  # the same prompt came from the prefix cache
    vllm_engine.drop(first)
    vllm_engine.drop(again)
    after = vllm_engine.new_cache()
    vllm_engine.forward([entry(after, context, None)])
    assert after.reused == 0, "an erased session's blocks outlived it"


def test_a_rebuild_starts_from_the_given_tokens(vllm_engine: VllmEngine, eager: PreTrainedModel) -> None:
    context = prompt(vllm_engine, "Red, green, blue and")
    cache = vllm_engine.new_cache()
    vllm_engine.forward([entry(cache, context, None)])
    survivors = context[:2] + context[4:]
    vllm_engine.rebuild(cache, survivors[:-1], [0, 1, *range(4, len(context) - 1)])
    out = vllm_engine.forward([BatchEntry(cache, survivors[-1:], [len(context) - 1], "last_layer")])[0]
    assert out is not None and out.attention is not None and out.attention.shape == (len(survivors),)
    rows, token = reference(eager, survivors)
    assert out.token == token
    np.testing.assert_allclose(out.attention, reduce(rows, "last_layer").numpy(), atol=ROW_TOL)


def test_seeded_sampling_repeats_itself(vllm_engine: VllmEngine) -> None:
    params = SamplingParams(temperature=1.0, top_p=0.9, seed=7)
    replies = []
    for _ in range(2):
        cache = vllm_engine.new_cache()
        ids = prompt(vllm_engine, "Write a word:")
        out = vllm_engine.forward([BatchEntry(cache, ids, list(range(len(ids))), None, sampling=params)])[0]
        tokens = []
        for _ in range(6):
            assert out is not None and out.token is not None
            tokens.append(out.token)
            step = BatchEntry(cache, [out.token], [cache.next_position], None, sampling=params)
            out = vllm_engine.forward([step])[0]
        replies.append(tokens)
    assert replies[0] == replies[1]


def test_bad_input_is_refused_before_anything_changes(vllm_engine: VllmEngine) -> None:
    cache = vllm_engine.new_cache()
    ids = prompt(vllm_engine, "Hello")
    good = vllm_engine.forward([entry(cache, ids, None)])[0]
    assert good is not None and good.token is not None
    held = (list(cache.positions), list(cache.token_ids))
    refused = [
        BatchEntry(cache, [good.token], [0], None),  # a position that does not ascend
        BatchEntry(cache, [vllm_engine.vocab_size], [cache.next_position], None),  # outside the vocabulary
        BatchEntry(cache, [], [], None),
        BatchEntry(cache, [good.token], [cache.next_position], "median"),
        BatchEntry(cache, [good.token] * 3000, list(range(100, 3100)), None),  # beyond max_model_len
    ]
    for bad in refused:
        with pytest.raises(EngineInputError):
            vllm_engine.forward([bad])
        assert (cache.positions, cache.token_ids) == held
    with pytest.raises(EngineInputError, match="evict: position"):
        vllm_engine.evict(cache, [999])
    # The conversation goes on where it was.
    assert vllm_engine.forward([entry(cache, [good.token], None)])[0] is not None


def test_snapshots_and_recall_are_refused_clearly(vllm_engine: VllmEngine) -> None:
    cache = vllm_engine.new_cache()
    with pytest.raises(NotSupported, match="snapshots are not available on the vLLM engine"):
        vllm_engine.export_cache(cache)
    with pytest.raises(NotSupported, match="restoring a snapshot"):
        vllm_engine.import_cache({})
    ids = prompt(vllm_engine, "Hello")
    with pytest.raises(NotSupported, match="recall"):
        vllm_engine.forward([BatchEntry(cache, ids, list(range(len(ids))), "mean", probe=(0,))])
    assert len(cache) == 0


def test_a_model_vllm_cannot_load_is_refused_at_start(unknown_architecture: Path, tmp_path: Path) -> None:
    with pytest.raises(EngineStartError, match="vLLM could not start unknown-architecture"):
        options = VllmOptions(max_model_len=256, kv_cache_bytes=64 << 20)
        VllmEngine(EngineConfig(model_path=str(unknown_architecture)), options)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(EngineInputError, match=r"holds no config\.json"):
        VllmEngine(EngineConfig(model_path=str(empty)))


def test_options_vllm_refuses_are_refused_at_start() -> None:
    too_long = VllmOptions(max_model_len=1 << 20, kv_cache_bytes=64 << 20)  # beyond the model's 8192 positions
    with pytest.raises(EngineStartError, match="vLLM could not start"):
        VllmEngine(EngineConfig(), too_long)
    with pytest.raises(EngineStartError, match="CPUs only"):
        VllmEngine(EngineConfig(device="cuda"))


def test_a_forward_that_takes_several_vllm_steps_keeps_every_request_in_step(
    vllm_engine: VllmEngine, eager: PreTrainedModel
) -> None:
    """Two prompts larger together than vLLM's per-step budget: vLLM prefills the second over two steps, and the
    first request samples a token in each. The extra token waits for the forward that asks for it; rows and tokens
    stay right."""
    assert MAX_MODEL_LEN < 2 * 300
    seeds = (torch.Generator().manual_seed(1), torch.Generator().manual_seed(2))
    prompts = [[int(t) for t in torch.randint(100, 40000, (300,), generator=g)] for g in seeds]
    caches = [vllm_engine.new_cache() for _ in prompts]
    outs = vllm_engine.forward([entry(c, p, "mean") for c, p in zip(caches, prompts, strict=True)])
    assert len(caches[0].outputs) == 1, "the first request ran ahead by one step"
    steps: list[list[StepOutput]] = [[], []]
    for step in range(3):
        for out, seen in zip(outs, steps, strict=True):
            assert out is not None
            seen.append(out)
        if step < 2:
            outs = vllm_engine.forward([entry(c, [s[-1].token], "mean") for c, s in zip(caches, steps, strict=True)])
    for p, seen in zip(prompts, steps, strict=True):
        rows, tokens = references(eager, p + [out.token for out in seen][:-1], len(seen))
        assert [out.token for out in seen] == tokens
        for out, row in zip(seen, rows, strict=True):
            np.testing.assert_allclose(out.attention, reduce(row, "mean").numpy(), atol=ROW_TOL)
