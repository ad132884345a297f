"""Helpers shared by the engine tests: a short chat prompt and greedy continuation."""

from __future__ import annotations

import torch

from services.inference.engine import Engine, SessionCache

PROMPT = [
    {"role": "system", "content": "You are a helpful assistant. Answer briefly."},
    {"role": "user", "content": "My cat is called Pixel. She likes boxes. What is the capital of France?"},
]


def prompt_ids(engine: Engine) -> list[int]:
    ids = engine.tokenizer.apply_chat_template(PROMPT, add_generation_prompt=True, tokenize=True)
    if not isinstance(ids, list):  # transformers 5 returns a BatchEncoding
        ids = ids["input_ids"]
    return [int(t) for t in ids]


def greedy(engine: Engine, cache: SessionCache, logits: torch.Tensor, steps: int) -> tuple[list[int], torch.Tensor]:
    """Greedy tokens from `logits` on; returns them and the logits of the last step."""
    tokens: list[int] = []
    for _ in range(steps):
        token = int(torch.argmax(logits))
        tokens.append(token)
        logits = engine.decode(cache, token, cache.next_position, capture=None).logits
    return tokens, logits
