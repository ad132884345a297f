"""What the system is compared with, measured in the bench's own process while the stacks sit idle:

- `padded_generate`: what a user would write by hand: transformers' `generate` over a left-padded batch of the same
  prompts (SDPA attention, greedy, no capture);
- `prefill_alone`: one prompt's prefill on our engine with nothing else running (the floor for its first token);
- `capture_cost`: the engine's batched decode step with capture on vs off (the same forward, the rows not kept);
- `engine_alone`: our batcher and engine in this process, capture on, with no tracker, gateway or clients (what the
  system's own services cost is the difference from the system's rows);
- `gemm_bound`: the model's weight GEMMs alone at M = 1 and M = N tokens: even if everything else were free,
  batching N decodes cannot beat N × t(1) / t(N).

Every torch call here runs on the process's engine thread (services.inference.engine_thread explains why): the
caller hands these functions to it, and `engine_alone`'s batcher sends its forwards there itself.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import torch
from transformers import AutoModelForCausalLM

from services.common import settings_wire
from services.inference.batcher import Batcher
from services.inference.conversation import Conversation
from services.inference.engine import BatchEntry, Engine
from services.inference.reply import LocalPeer
from services.inference.scheduler import Limits

from .prompts import chat_ids


class PaddedGenerate:
    def __init__(self, model_path: str, tokenizer: Any) -> None:
        self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32, attn_implementation="sdpa")
        self.model.eval()
        self.tokenizer = tokenizer

    def run(self, texts: list[str], new_tokens: int) -> tuple[int, float]:
        """(generated tokens, seconds) for the whole batch; a row's tokens count up to its EOS."""
        rows = [chat_ids(self.tokenizer, t) for t in texts]
        width = max(len(r) for r in rows)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
        started = time.perf_counter()
        with torch.inference_mode():
            out = self.model.generate(
                input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens, do_sample=False, pad_token_id=pad
            )
        seconds = time.perf_counter() - started
        eos = set(self.tokenizer.all_special_ids)
        generated = 0
        for row in out[:, width:].tolist():
            for token in row:
                generated += 1
                if token in eos:
                    break
        return generated, seconds


def prefill_alone(engine: Engine, ids: list[int]) -> float:
    cache = engine.new_cache()
    started = time.perf_counter()
    engine.prefill(cache, ids, list(range(len(ids))), capture="mean")
    return time.perf_counter() - started


def capture_cost(engine: Engine, conversations: int, context: int, steps: int, repeats: int) -> dict[str, float]:
    """Decode tokens/s of a batch of `conversations` with capture on (`mean`) and off, interleaved over repeats."""
    caches = []
    for i in range(conversations):
        cache = engine.new_cache()
        engine.prefill(cache, [100 + (i * 7 + j) % 40000 for j in range(context)], list(range(context)), None)
        caches.append(cache)
    rates: dict[str, list[float]] = {"on": [], "off": []}
    for _ in range(repeats):
        for label, mode in (("on", "mean"), ("off", None)):
            started = time.perf_counter()
            for _ in range(steps):
                engine.forward([BatchEntry(c, [42], [c.next_position], mode) for c in caches])
            rates[label].append(conversations * steps / (time.perf_counter() - started))
            for cache in caches:
                cache.truncate(context)
    on, off = sorted(rates["on"]), sorted(rates["off"])
    return {"on_tokens_per_s": on[len(on) // 2], "off_tokens_per_s": off[len(off) // 2]}


def engine_alone(engine: Engine, texts: list[str], new_tokens: int) -> tuple[int, float]:
    """(generated tokens, seconds) for every text at once through the batcher, with a LocalPeer for each."""

    async def run() -> tuple[int, float]:
        settings = settings_wire.to_pb(max_new_tokens=new_tokens, temperature=0.0)
        peers = [LocalPeer(chat_ids(engine.tokenizer, t), settings=settings) for t in texts]
        batcher = Batcher(engine, Limits())  # its forwards go to the engine thread, like a worker's
        stop = asyncio.Event()
        loop = asyncio.create_task(batcher.run(stop))
        replies = [Conversation(engine, engine.new_cache(), p, f"s{i}", "j") for i, p in enumerate(peers)]
        started = time.perf_counter()
        await asyncio.gather(*(batcher.generate(c) for c in replies))
        seconds = time.perf_counter() - started
        stop.set()
        await loop
        return sum(c.stats.tokens for c in replies), seconds

    return asyncio.run(run())


def gemm_bound(engine: Engine, n: int, repeats: int = 5) -> dict[str, float]:
    """The model's linear layers alone on [1, in] and [n, in] inputs (interleaved, best of `repeats`)."""
    linears = [m for m in engine.model.modules() if isinstance(m, torch.nn.Linear)]
    inputs = {m: {k: torch.randn(k, m.in_features) for k in (1, n)} for m in linears}
    best = {1: float("inf"), n: float("inf")}
    with torch.inference_mode():
        for _ in range(repeats):
            for k in (1, n):
                started = time.perf_counter()
                for m in linears:
                    m(inputs[m][k])
                best[k] = min(best[k], time.perf_counter() - started)
    return {"gemm_1_s": best[1], f"gemm_{n}_s": best[n], "bound": n * best[1] / best[n], "n": n}
