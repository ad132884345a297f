"""Choosing the next token: greedy, or temperature + nucleus (top-p) sampling from a seeded generator; stop strings."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

STEP_STRIDE = 1_000_003  # a prime above any reply's length: (seed, step) pairs never share a generator seed


@dataclass(slots=True)
class SamplingParams:
    max_new_tokens: int = 128  # > 0
    temperature: float = 0.0  # >= 0; 0 means greedy
    top_p: float = 1.0  # (0, 1]: sample from the smallest set of tokens whose probability reaches top_p
    seed: int = 0  # same seed, same logits → same tokens
    stop: list[str] = field(default_factory=list)  # generation ends once the reply contains one of these

    def __post_init__(self) -> None:
        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens: must be a positive integer, got {self.max_new_tokens!r}")
        if not self.temperature >= 0:  # also refuses NaN
            raise ValueError(f"temperature: must be >= 0, got {self.temperature!r}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p: must be in (0, 1], got {self.top_p!r}")
        if not isinstance(self.seed, int):
            raise ValueError(f"seed: must be an integer, got {self.seed!r}")
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise ValueError("stop: every stop string must be a non-empty string")


class Sampler:
    """A seed reproduces a whole reply. Each step draws from a generator seeded by (seed, step), so a reply resumed
    at step n on another worker (its earlier draws never made there) samples what the first attempt would have."""

    def __init__(self, params: SamplingParams) -> None:
        self.params = params
        self.generator = torch.Generator(device="cpu")

    def sample(self, logits: torch.Tensor, step: int = 0) -> int:
        """`logits` [vocab], any float dtype/device; returns a token id."""
        logits = logits.detach().float().cpu()
        if self.params.temperature == 0:
            return int(torch.argmax(logits))
        probs = torch.softmax(logits / self.params.temperature, dim=-1)
        if self.params.top_p < 1:
            sorted_probs, order = torch.sort(probs, descending=True)
            # Keep a token while the mass before it is below top_p: the first token always stays.
            before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs
            sorted_probs = torch.where(before < self.params.top_p, sorted_probs, torch.zeros_like(sorted_probs))
            probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
        # torch seeds must fit in 64 bits; fold (seed, step) into that range deterministically.
        self.generator.manual_seed((self.params.seed * STEP_STRIDE + step) % (1 << 63))
        return int(torch.multinomial(probs, 1, generator=self.generator))


def stop_reached(text_so_far: str, stop: list[str]) -> str | None:
    """The stop string that occurs earliest in the text (the longest at equal starts), or None."""
    best: tuple[int, int, str] | None = None
    for s in stop:
        at = text_so_far.find(s) if s else -1
        if at >= 0 and (best is None or (at, -len(s)) < (best[0], best[1])):
            best = (at, -len(s), s)
    return best[2] if best is not None else None


def eos_ids(generation_config: Any, tokenizer: Any) -> frozenset[int]:
    """The tokens that end a reply: the generation config's EOS (one id or a list) and the tokenizer's."""
    ids: set[int] = set()
    eos = getattr(generation_config, "eos_token_id", None) if generation_config is not None else None
    for value in eos if isinstance(eos, list) else [eos]:
        if value is not None:
            ids.add(int(value))
    if getattr(tokenizer, "eos_token_id", None) is not None:
        ids.add(int(tokenizer.eos_token_id))
    return frozenset(ids)
