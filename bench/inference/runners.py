"""One timed run of each approach: a prefill of the context, then `new_tokens` decode steps, greedy.

(a) `engine+capture` and (b) `engine` are our engine with capture on (mean) and off; `sdpa` is the model's stock
attention with transformers' own KV cache, for reference; (c) `per-step-full` is the original tool's approach (every
step re-runs the whole context with `output_attentions`, no KV cache); (d) `generate` is transformers
`generate(output_attentions=True)` with eager attention. All share one set of weights: the attention implementation
is switched between runs.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

import torch
from transformers import DynamicCache

from services.inference.engine import Engine
from services.inference.engine.attention import ATTENTION_NAME

from .memory import PeakMemory

APPROACHES = ("engine+capture", "engine", "sdpa", "per-step-full", "generate")


@dataclass
class Sample:
    prefill_s: float  # the context's forward (per-step-full: none, it has no cache)
    decode_s: float  # the decode steps that were timed
    decode_steps: int
    e2e_s: float  # prefill + new_tokens steps (per-step-full: extrapolated from the steps timed)
    peak_bytes: int  # above what was held before the run

    @property
    def decode_tok_s(self) -> float:
        return self.decode_steps / self.decode_s if self.decode_s > 0 else float("nan")

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "decode_tok_s": self.decode_tok_s}


def _sync(engine: Engine) -> None:
    if engine.model.device.type == "cuda":
        torch.cuda.synchronize(engine.model.device)


def run_engine(engine: Engine, ids: list[int], new_tokens: int, capture: str | None) -> Sample:
    engine.model.set_attn_implementation(ATTENTION_NAME)
    with PeakMemory(engine.model.device) as memory:
        started = time.perf_counter()
        cache = engine.new_cache()
        out = engine.prefill(cache, ids, list(range(len(ids))), capture=capture)
        prefilled = time.perf_counter()
        for _ in range(new_tokens):
            token = int(torch.argmax(out.logits))
            out = engine.decode(cache, token, cache.next_position, capture=capture)
        done = time.perf_counter()
        del cache
    return Sample(prefilled - started, done - prefilled, new_tokens, done - started, memory.peak_bytes)


def run_sdpa(engine: Engine, ids: list[int], new_tokens: int) -> Sample:
    model = engine.model
    model.set_attn_implementation("sdpa")
    try:
        with PeakMemory(model.device) as memory, torch.inference_mode():
            started = time.perf_counter()
            cache = DynamicCache()
            out = model(torch.tensor([ids], device=model.device), past_key_values=cache, logits_to_keep=1)
            token = int(torch.argmax(out.logits[0, -1]))
            prefilled = time.perf_counter()
            for _ in range(new_tokens):
                out = model(torch.tensor([[token]], device=model.device), past_key_values=cache, logits_to_keep=1)
                token = int(torch.argmax(out.logits[0, -1]))
            done = time.perf_counter()
            del cache, out
    finally:
        model.set_attn_implementation(ATTENTION_NAME)
    return Sample(prefilled - started, done - prefilled, new_tokens, done - started, memory.peak_bytes)


def run_per_step_full(engine: Engine, ids: list[int], new_tokens: int, steps: int) -> Sample:
    """The original tool: every token re-runs the whole sequence with output_attentions; `steps` of them are timed."""
    model = engine.model
    model.set_attn_implementation("eager")
    try:
        sequence = list(ids)
        with PeakMemory(model.device) as memory, torch.inference_mode():
            started = time.perf_counter()
            for _ in range(steps):
                out = model(torch.tensor([sequence], device=model.device), use_cache=False, output_attentions=True)
                # What the tool did with them: the newest query's row, averaged over layers and heads.
                row = torch.stack([a[0, :, -1] for a in out.attentions]).float().mean(dim=(0, 1)).cpu()
                sequence.append(int(torch.argmax(out.logits[0, -1])))
                del out, row
            _sync(engine)
            elapsed = time.perf_counter() - started
    finally:
        model.set_attn_implementation(ATTENTION_NAME)
    per_step = elapsed / steps
    return Sample(0.0, elapsed, steps, per_step * (new_tokens + 1), memory.peak_bytes)


class _TimingStreamer:
    """generate() calls put() with the prompt, then once per new token: the first token marks the prefill's end."""

    def __init__(self) -> None:
        self.calls = 0
        self.first_token_at = 0.0

    def put(self, value: torch.Tensor) -> None:
        self.calls += 1
        if self.calls == 2:
            self.first_token_at = time.perf_counter()

    def end(self) -> None:
        pass


def run_generate(engine: Engine, ids: list[int], new_tokens: int) -> Sample:
    model = engine.model
    model.set_attn_implementation("eager")
    try:
        streamer = _TimingStreamer()
        input_ids = torch.tensor([ids], device=model.device)
        with PeakMemory(model.device) as memory, torch.inference_mode():
            started = time.perf_counter()
            out = model.generate(
                input_ids,
                attention_mask=torch.ones_like(input_ids),
                max_new_tokens=new_tokens + 1,
                min_new_tokens=new_tokens + 1,
                do_sample=False,
                output_attentions=True,
                return_dict_in_generate=True,
                streamer=streamer,
                pad_token_id=0,
            )
            _sync(engine)
            done = time.perf_counter()
            del out
    finally:
        model.set_attn_implementation(ATTENTION_NAME)
    return Sample(
        streamer.first_token_at - started, done - streamer.first_token_at, new_tokens, done - started, memory.peak_bytes
    )


def attention_bytes(engine: Engine, ctx: int) -> int:
    """What `output_attentions` holds for a forward over `ctx` tokens: every layer's [heads, ctx, ctx] map."""
    return engine.num_layers * engine.num_heads * ctx * ctx * engine.model.dtype.itemsize
