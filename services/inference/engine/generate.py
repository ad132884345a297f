"""A reply, token by token: prefill the new tokens, then sample and decode until EOS, a stop string, the token limit
or a cancel. The worker may drive `Engine` directly (it interleaves tracker directives between steps); this loop is
the plain form of the same sequence, used by tests and benchmarks and by any caller without a tracker."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal

from .engine import Engine, StepOutput
from .kv_cache import SessionCache
from .sampling import Sampler, SamplingParams, stop_reached

FinishReason = Literal["eos", "stop", "length", "cancelled"]


@dataclass
class Step:
    index: int  # 0 for the token sampled from the prefill
    token_id: int
    position: int  # the RoPE position this token will take when fed back
    output: StepOutput  # the forward that produced it (its attention row ends at the previous token)


class Generation:
    """Iterate for the steps; afterwards `reason` says why it ended and `text` holds the decoded reply."""

    def __init__(
        self,
        engine: Engine,
        cache: SessionCache,
        token_ids: list[int],
        positions: list[int],
        params: SamplingParams,
        capture: str | None = None,
        cancelled: Callable[[], bool] | None = None,
    ) -> None:
        self.engine, self.cache, self.params, self.capture = engine, cache, params, capture
        self._prompt = (token_ids, positions)
        self._cancelled = cancelled or (lambda: False)
        self.reason: FinishReason | None = None
        self.token_ids: list[int] = []
        self.text = ""

    def __iter__(self) -> Iterator[Step]:
        sampler = Sampler(self.params)
        output = self.engine.prefill(self.cache, *self._prompt, capture=self.capture)
        for index in range(self.params.max_new_tokens):
            if self._cancelled():
                self.reason = "cancelled"
                return
            token = sampler.sample(output.logits)
            position = self.cache.next_position
            self.token_ids.append(token)
            yield Step(index, token, position, output)
            if token in self.engine.eos_token_ids:
                self.reason = "eos"
                return
            self.text = str(self.engine.tokenizer.decode(self.token_ids, skip_special_tokens=True))
            if stop_reached(self.text, self.params.stop) is not None:
                self.reason = "stop"
                return
            if index + 1 == self.params.max_new_tokens:
                break
            output = self.engine.decode(self.cache, token, position, capture=self.capture)
        self.reason = "length"
