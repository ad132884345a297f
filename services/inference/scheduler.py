"""Which conversations advance in the next forward, in the shape of nano-vllm's scheduler.

Two queues: `waiting` (opened replies, in arrival order) and `running`. `schedule()` first admits waiting
conversations, in order, while the bound on running conversations and the KV byte budget allow (a conversation
counts the bytes it may reach: cache, pending tokens and every token it may still sample). Then it fills the step's
token budget: every running conversation that decodes gets its one token first, so decoding never waits behind a
prompt; what is left goes to prefill chunks, oldest first, so a long prompt is fed over several steps while the
others keep decoding.

The budget is a trade between the two kinds of waiting user: every token of prefill lengthens the step that each
decoding conversation waits for, and every token held back delays a prompt's first token. Each prompt being fed
gets up to `prefill_chunk_tokens` a step (with one long prompt among many decoders, that bounds their inter-token
latency), the step at most `max_step_tokens` in all, which is also the budget when nobody decodes (there is no
latency to protect, and bigger chunks feed prompts faster). A burst of long prompts is thus fed about as fast as
alone, at the cost of longer steps for the few that already decode. The model runner only ever sees the flat list
this returns.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the settings (Limits) are read at start-up, before torch is imported
    from services.inference.conversation import Conversation
    from services.inference.engine import BatchEntry


@dataclass(slots=True, frozen=True)
class Limits:
    max_running: int = 16  # conversations in one forward
    max_waiting: int = 64  # opened replies queued behind them; one more is refused as overloaded
    prefill_chunk_tokens: int = 96  # tokens a step for each prompt being fed while others decode
    max_step_tokens: int = 1024  # tokens in one forward at most, decodes included; the chunk when nobody decodes
    # KV bytes of one worker: what its running conversations may reach together, and what it holds between turns
    # before offloading the least recently used sessions.
    kv_budget_bytes: int = 2 * 1024**3
    # Host bytes of the cold tiers (pruned KV kept for recall) of all the worker's sessions; the oldest chunks of the
    # least recently used sessions are dropped beyond it.
    cold_budget_bytes: int = 1024**3

    def __post_init__(self) -> None:
        if self.max_running < 1:
            raise ValueError(f"max_running: must be at least 1, got {self.max_running}")
        if self.kv_budget_bytes < 0:
            raise ValueError(f"kv_budget_bytes: must not be negative, got {self.kv_budget_bytes}")
        if self.cold_budget_bytes < 0:
            raise ValueError(f"cold_budget_bytes: must not be negative, got {self.cold_budget_bytes}")
        if self.max_waiting < 0:
            raise ValueError(f"max_waiting: must not be negative, got {self.max_waiting}")
        if self.prefill_chunk_tokens < 1:
            raise ValueError(f"prefill_chunk_tokens: must be at least 1, got {self.prefill_chunk_tokens}")
        if self.max_step_tokens < self.max_running:
            raise ValueError(
                f"max_step_tokens ({self.max_step_tokens}) must be at least max_running ({self.max_running}):"
                " every running conversation decodes one token per step"
            )
        if self.max_step_tokens < self.prefill_chunk_tokens:
            raise ValueError(
                f"max_step_tokens ({self.max_step_tokens}) must be at least prefill_chunk_tokens"
                f" ({self.prefill_chunk_tokens})"
            )


class Scheduler:
    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.waiting: deque[Conversation] = deque()
        self.running: list[Conversation] = []

    def __len__(self) -> int:
        return len(self.waiting) + len(self.running)

    def add(self, conversation: Conversation) -> None:
        self.waiting.append(conversation)

    def remove(self, conversation: Conversation) -> None:
        if conversation in self.running:
            self.running.remove(conversation)
        elif conversation in self.waiting:
            self.waiting.remove(conversation)

    def kv_bytes_reserved(self) -> int:
        return sum(c.kv_bytes_needed() for c in self.running)

    def schedule(self) -> list[tuple[Conversation, BatchEntry]]:
        self._admit()
        batch: list[tuple[Conversation, BatchEntry]] = []
        for conversation in self.running:
            if conversation.pending == 1:
                batch.append((conversation, conversation.next_entry(1)))
        budget = self._budget(decoding=len(batch)) - len(batch)
        for conversation in self.running:
            if conversation.pending > 1 and budget > 0:
                entry = conversation.next_entry(budget)
                budget -= len(entry.token_ids)
                batch.append((conversation, entry))
        return batch

    def _budget(self, decoding: int) -> int:
        limits = self.limits
        if decoding == 0:
            return limits.max_step_tokens
        prefilling = sum(1 for c in self.running if c.pending > 1)
        return min(limits.max_step_tokens, decoding + limits.prefill_chunk_tokens * max(1, prefilling))

    def _admit(self) -> None:
        reserved = self.kv_bytes_reserved()
        while self.waiting and len(self.running) < self.limits.max_running:
            need = self.waiting[0].kv_bytes_needed()
            # One conversation alone is always admitted: a reply larger than the budget must not wait forever.
            if self.running and reserved + need > self.limits.kv_budget_bytes:
                break
            self.running.append(self.waiting.popleft())
            reserved += need
