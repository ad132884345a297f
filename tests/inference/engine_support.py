"""Helpers shared by the engine tests: a short chat prompt, greedy continuation, conversations without a tracker."""

from __future__ import annotations

import asyncio

import torch
from haloweave.tracker.v1 import tracker_pb2

from services.inference.batcher import Batcher
from services.inference.conversation import Conversation
from services.inference.engine import Engine, SessionCache
from services.inference.reply import LocalPeer
from services.inference.scheduler import Limits

PROMPT = [
    {"role": "system", "content": "You are a helpful assistant. Answer briefly."},
    {"role": "user", "content": "My cat is called Pixel. She likes boxes. What is the capital of France?"},
]


def template_ids(engine: Engine, messages: list[dict[str, str]]) -> list[int]:
    """The chat-templated prompt of `messages`, with the assistant header."""
    ids = engine.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    if not isinstance(ids, list):  # transformers 5 returns a BatchEncoding
        ids = ids["input_ids"]
    return [int(t) for t in ids]


def prompt_ids(engine: Engine) -> list[int]:
    return template_ids(engine, PROMPT)


def greedy(engine: Engine, cache: SessionCache, logits: torch.Tensor, steps: int) -> tuple[list[int], torch.Tensor]:
    """Greedy tokens from `logits` on; returns them and the logits of the last step."""
    tokens: list[int] = []
    for _ in range(steps):
        token = int(torch.argmax(logits))
        tokens.append(token)
        logits = engine.decode(cache, token, cache.next_position, capture=None).logits
    return tokens, logits


async def converse(engine: Engine, peers: list[LocalPeer], **limits: int) -> list[Conversation]:
    """Runs one conversation per peer on a fresh batcher, all at once; returns them once every one has ended."""
    batcher = Batcher(engine, Limits(**limits))
    stop = asyncio.Event()
    loop = asyncio.create_task(batcher.run(stop))
    conversations = [Conversation(engine, engine.new_cache(), peer, f"s{i}", f"j{i}") for i, peer in enumerate(peers)]
    try:
        await asyncio.gather(*(batcher.generate(c) for c in conversations))
    finally:
        stop.set()
        await loop
    return conversations


def local_reply(engine: Engine, settings: tracker_pb2.Settings, **peer: object) -> tuple[Conversation, LocalPeer]:
    """One conversation on the chat prompt, alone, with no tracker."""
    local = LocalPeer(prompt_ids(engine), settings=settings, **peer)  # type: ignore[arg-type]
    (conversation,) = asyncio.run(converse(engine, [local]))
    return conversation, local
