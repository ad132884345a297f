"""Prompts of a given length, made offline from a seed: a story set-up (varied sentences) and a request to go on.

Lengths are counted the way the tracker counts them: the chat template with its default system prompt, the user
message and the assistant header, so "a 1,000-token prompt" is what the worker prefills for a new session.
"""

from __future__ import annotations

import random
from typing import Any

SUBJECTS = [
    "The keeper",
    "A fox",
    "The old sailor",
    "My neighbour",
    "The baker",
    "A small robot",
    "The river",
    "Nobody",
]
VERBS = ["watched", "counted", "painted", "followed", "remembered", "carried", "built", "forgot"]
OBJECTS = ["the boats", "a red kite", "seven lanterns", "the winter stars", "a broken clock", "the long road",
           "an empty jar", "the tall grass"]  # fmt: skip
PLACES = ["by the harbour", "before dawn", "in the valley", "after the storm", "under the bridge", "at the market",
          "near the mill", "all summer"]  # fmt: skip
REQUEST = "Continue this story in your own words, with many details."


def sentence(rng: random.Random) -> str:
    return f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)} {rng.choice(PLACES)}."


def chat_ids(tokenizer: Any, text: str, generation: bool = True) -> list[int]:
    """The templated prompt of one user message (with the assistant header unless `generation` is False)."""
    messages = [{"role": "user", "content": text}]
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=generation, tokenize=True)
    return [int(t) for t in (ids if isinstance(ids, list) else ids["input_ids"])]


def prompt(tokenizer: Any, tokens: int, seed: int) -> str:
    """A user message whose templated prompt is about `tokens` long (within one sentence)."""
    rng = random.Random(seed)
    parts: list[str] = []
    while True:
        text = " ".join([*parts, REQUEST])
        if len(chat_ids(tokenizer, text)) >= tokens:
            return text
        parts.append(sentence(rng))
