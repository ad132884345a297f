"""The scheduler's decisions, without a model: admission in order under the bounds, decodes first, prefill chunks
under the token budget, bigger chunks when nobody decodes."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from services.inference.engine import BatchEntry
from services.inference.scheduler import Limits, Scheduler


@dataclass(eq=False)
class FakeConversation:
    """What the scheduler asks of a conversation: its pending tokens and the KV bytes it may reach."""

    name: str
    pending_tokens: int
    kv: int = 0
    fed: list[int] = field(default_factory=list)

    @property
    def pending(self) -> int:
        return self.pending_tokens

    def kv_bytes_needed(self) -> int:
        return self.kv

    def next_entry(self, budget: int) -> BatchEntry:
        n = min(budget, self.pending_tokens)
        self.pending_tokens -= n
        self.fed.append(n)
        return BatchEntry(cache=None, token_ids=[1] * n, positions=list(range(n)))  # type: ignore[arg-type]


def layout(scheduler: Scheduler) -> list[tuple[str, int]]:
    return [(c.name, len(e.token_ids)) for c, e in scheduler.schedule()]  # type: ignore[attr-defined]


def test_decodes_come_first_and_prefill_takes_what_is_left_oldest_first() -> None:
    s = Scheduler(Limits(max_running=4, prefill_chunk_tokens=16, max_step_tokens=64))
    a, b, c = FakeConversation("a", 1), FakeConversation("b", 40), FakeConversation("c", 1)
    for conv in (a, b, c):
        s.add(conv)  # type: ignore[arg-type]
    assert layout(s) == [("a", 1), ("c", 1), ("b", 16)]
    assert b.pending == 24


def test_with_nobody_decoding_prompts_go_in_bigger_chunks() -> None:
    s = Scheduler(Limits(max_running=4, prefill_chunk_tokens=16, max_step_tokens=64))
    long, short = FakeConversation("long", 100), FakeConversation("short", 30)
    s.add(long)  # type: ignore[arg-type]
    s.add(short)  # type: ignore[arg-type]
    assert layout(s) == [("long", 64)]
    assert layout(s) == [("long", 36), ("short", 28)]


def test_each_prompt_being_fed_gets_a_chunk_and_the_step_is_capped() -> None:
    s = Scheduler(Limits(max_running=8, prefill_chunk_tokens=16, max_step_tokens=40))
    decoder = FakeConversation("d", 1)
    prompts = [FakeConversation(f"p{i}", 100) for i in range(3)]
    for conv in (decoder, *prompts):
        s.add(conv)  # type: ignore[arg-type]
    # One decodes, three wait for their first token: three chunks' worth, the step capped at max_step_tokens.
    assert layout(s) == [("d", 1), ("p0", 39)]
    decoder.pending_tokens = 1
    second = FakeConversation("d2", 1)
    s.add(second)  # type: ignore[arg-type]
    assert layout(s) == [("d", 1), ("d2", 1), ("p0", 38)]
    s.remove(prompts[1])  # type: ignore[arg-type]
    s.remove(prompts[2])  # type: ignore[arg-type]
    decoder.pending_tokens = second.pending_tokens = 1
    # One prompt among decoders: one chunk (this bounds the decoders' inter-token latency).
    assert layout(s) == [("d", 1), ("d2", 1), ("p0", 16)]


def test_admission_keeps_arrival_order_and_the_bounds() -> None:
    s = Scheduler(Limits(max_running=2, prefill_chunk_tokens=8, max_step_tokens=8, kv_budget_bytes=100))
    convs = [FakeConversation(f"c{i}", 1, kv=40) for i in range(4)]
    for conv in convs:
        s.add(conv)  # type: ignore[arg-type]
    assert [c for c, _ in layout(s)] == ["c0", "c1"]  # two running: the bound
    assert list(s.waiting) == convs[2:]
    s.remove(convs[0])  # type: ignore[arg-type]
    convs[1].kv = 70  # c1 has grown: 70 + 40 is over the budget, so c2 waits
    s.schedule()
    assert s.running == [convs[1]] and list(s.waiting) == convs[2:]
    s.remove(convs[1])  # type: ignore[arg-type]
    s.schedule()
    assert s.running == convs[2:]


def test_one_conversation_larger_than_the_budget_is_still_admitted_alone() -> None:
    s = Scheduler(Limits(max_running=2, prefill_chunk_tokens=8, kv_budget_bytes=10))
    big = FakeConversation("big", 1, kv=1000)
    s.add(big)  # type: ignore[arg-type]
    assert layout(s) == [("big", 1)]


def test_limits_refuse_a_budget_smaller_than_the_decodes() -> None:
    with pytest.raises(ValueError, match="max_step_tokens"):
        Limits(max_running=16, max_step_tokens=8)
    with pytest.raises(ValueError, match="max_step_tokens"):
        Limits(prefill_chunk_tokens=256, max_step_tokens=128)
