"""One conversation under every pruning policy and budget at once, through the worker engine and the tracker.

Each variant (a policy at a budget, plus "none": no pruning) is a tracker session of its own, on the tracker's real
`Engine` and a real Redis, with its own KV cache in the inference `Engine`. The variants step in lockstep as one
batched forward: a reply is the worker's loop (Open, sync the cache with the context, prefill with capture, then a
Frame per token whose Directive evicts in place), with the scripted tokens in place of sampled ones; the attention of
every token is captured and scored exactly as in generation. At the question, the tracker's Open prunes to the
budget, the question is prefilled, and on that context the answer is (1) teacher-forced for its negative
log-likelihood and (2) generated greedily. Variants with `recall=1` keep what they prune in the cold tier and, after
every prompt (each reply's and the question's), probe it and take back what the tracker recalls, as the worker does.
"fact_removed" is the unpruned cache minus the fact sentences, taken just
before the question: the NLL that losing the fact costs.
"""

from __future__ import annotations

import asyncio
import math
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from services.inference.engine import BatchEntry, Engine, SessionCache, StepOutput
from services.inference.recall import Recall
from services.tracker import convert
from services.tracker.engine import ContextView
from services.tracker.engine import Engine as Tracker
from services.tracker.frames import FrameInput
from services.tracker.settings import Settings

from .tasks import Chat

GREEDY_TOKENS = 12  # enough for every answer of tasks.py and a few words around it
COLD_BUDGET_BYTES = 1024**3  # a worker's default: no conversation here comes near it


@dataclass(frozen=True, slots=True)
class Policy:
    """A pruning rule to evaluate: a `prune_policy` and, for variants, settings that differ from the defaults."""

    label: str
    settings: dict[str, Any]

    @classmethod
    def parse(cls, spec: str) -> Policy:
        """`h2o`, or `brightness:aggregation=max,decay_rate=0` (values parsed as int, float or text)."""
        name, _, rest = spec.partition(":")
        settings: dict[str, Any] = {"prune_policy": name}
        for item in filter(None, rest.split(",")):
            key, sep, value = item.partition("=")
            if not sep:
                raise ValueError(f"policy {spec!r}: {item!r} is not name=value")
            settings[key] = _value(value)
            if _FIELD_TYPES.get(key) is bool:  # recall=1 or recall=true
                settings[key] = settings[key] in (1, "true", "True")
        return cls(spec if rest else name, settings)


_FIELD_TYPES = {name: info.annotation for name, info in Settings.model_fields.items()}


def _value(text: str) -> Any:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


@dataclass
class Variant:
    label: str
    budget: float  # a fraction of the conversation's length; 0: no pruning
    settings: dict[str, Any]
    session_id: str = ""
    cache: SessionCache | None = None
    context: ContextView | None = None
    pending: tuple[list[int], list[int]] = field(default_factory=lambda: ([], []))  # (ids, positions) to prefill
    job_id: str = ""
    fact_positions: list[int] = field(default_factory=list)
    kept: bool = True
    active_tokens: int = 0  # the context the question is answered on
    recall: Recall | None = None  # the worker's side of recall, for variants with recall on
    recall_seconds: float = 0.0  # probing, the tracker's decision and re-insertion, over the whole conversation
    probes: int = 0

    @property
    def capture(self) -> str:
        return str(self.settings.get("aggregation", "mean"))

    @property
    def cold(self) -> bool:
        """Whether evictions go to the cold tier."""
        return self.recall is not None


class Runner:
    def __init__(self, engine: Engine, tracker: Tracker, generate: bool = False, reply_tokens: int = 32) -> None:
        self.engine = engine
        self.tracker = tracker
        self.tokenizer = engine.tokenizer
        self.generate = generate  # assistant turns sampled greedily by each variant instead of scripted
        self.reply_tokens = reply_tokens
        # The end token the chat template's trailer knows: a reply ending with it is closed by the rest of the trailer.
        end = tracker.template.eos_token_id
        if end is None:
            raise ValueError("the model's tokenizer names no end token: scripted replies cannot end as generated ones")
        self.end_id = int(end)

    def _ids(self, text: str) -> list[int]:
        return [int(i) for i in self.tokenizer(text, add_special_tokens=False)["input_ids"]]

    async def length(self, chat: Chat) -> int:
        """Tokens in the conversation at the question (system prompt to generation header), with nothing pruned:
        the length that budgets are fractions of. A dry pass through the tracker, with no model."""
        variant = Variant("length", 0.0, {})
        await self._create(variant)
        sid = variant.session_id
        for turn, (role, text) in enumerate(chat.turns):
            if role == "user":
                await self.tracker.append_message(sid, "user", text)
                continue
            opened = await self.tracker.open(sid, f"dry-{turn}")
            active = len(opened.context.positions)
            for step, token in enumerate(self._script(text)):
                await self.tracker.frame(sid, f"dry-{turn}", FrameInput(step, token, np.zeros(active, np.float32)))
                active += 1
            await self.tracker.finish(sid, f"dry-{turn}", "eos", {})
        await self.tracker.append_message(sid, "user", chat.question)
        opened = await self.tracker.open(sid, "dry-question")
        return len(opened.context.positions)

    def _script(self, text: str) -> list[int]:
        """A scripted reply as the model would have generated it: its tokens, then the end token."""
        return [*self._ids(text), self.end_id]

    async def _create(self, variant: Variant) -> None:
        state = await self.tracker.create_session(variant.settings, None)
        variant.session_id = state.session_id
        variant.cache = self.engine.new_cache()
        if state.settings.recall:
            variant.recall = Recall(self.engine, COLD_BUDGET_BYTES)
            variant.recall.enabled = True

    async def evaluate(self, chat: Chat, policies: list[Policy], budgets: list[float]) -> list[dict[str, Any]]:
        """One record per variant: none, fact_removed, and every policy at every budget."""
        length = await self.length(chat)
        variants = [Variant("none", 0.0, {})]
        for policy in policies:
            for budget in budgets:
                tokens = max(1, round(budget * length))
                variants.append(Variant(policy.label, budget, {**policy.settings, "max_context_tokens": tokens}))
        for variant in variants:
            await self._create(variant)
        for role, text in chat.turns:
            if role == "user":
                for v in variants:
                    await self.tracker.append_message(v.session_id, "user", text)
            else:
                await self._reply(variants, None if self.generate else self._script(text))
        for v in variants:
            await self.tracker.append_message(v.session_id, "user", chat.question)
        await self._open(variants)
        for v in variants:
            v.fact_positions = await self._sentences(v, chat.facts)
        removed = await self._without_facts(variants[0], chat)
        variants.append(removed)
        first = await self._prompt(variants, capture=False)
        for v in variants:
            if v is not removed:  # after recall: what the question is answered on
                context = await self.tracker.context(v.session_id)
                v.kept = set(v.fact_positions) <= set(context.positions)
                v.active_tokens = len(context.positions)
        recalled = {}
        for v in variants[:-1]:
            recalled[v.session_id] = (await self.tracker.session(v.session_id)).meta.recalled_tokens
        cold = {v.session_id: v.cache.cold.nbytes if v.cache is not None else 0 for v in variants}
        nll, replies = self._answer(variants, first, chat.lead, chat.key)
        return [
            {
                "task": chat.task,
                "index": chat.index,
                "policy": v.label,
                "budget": v.budget,
                "budget_tokens": int(v.settings.get("max_context_tokens", 0)),
                "length": length,
                "active_tokens": v.active_tokens,
                "kept": v.kept,
                "recall": v.recall is not None,
                "recalled_tokens": recalled.get(v.session_id, 0),
                "recall_seconds": v.recall_seconds,
                "probes": v.probes,
                "cold_bytes": cold[v.session_id],
                "nll": nll[i],
                "correct": re.search(rf"(?<![0-9A-Za-z]){re.escape(chat.key)}(?![0-9A-Za-z])", replies[i]) is not None,
                "reply": replies[i],
            }
            for i, v in enumerate(variants)
        ]

    # ---- one reply, every variant in one batch -------------------------------------------------------------------

    async def _open(self, variants: list[Variant]) -> None:
        """The tracker's Open (which prunes to the budget), then each cache made to hold the context: evictions in
        place, and the tokens it lacks left pending for the next forward."""
        for v in variants:
            v.job_id = f"job-{uuid.uuid4().hex[:8]}"
            opened = await self.tracker.open(v.session_id, v.job_id)
            v.context = opened.context
            v.active_tokens = len(opened.context.positions)
            cache = v.cache
            assert cache is not None
            if v.recall is not None:
                pruned = opened.pruned
                v.recall.probed = False  # one probe per reply, as the worker does
                v.recall.opened(
                    cache,
                    pruned.positions if pruned else [],
                    pruned.token_ids if pruned else [],
                    opened.probe_positions or [],
                )
            plan = cache.sync_plan(opened.context.positions, opened.context.token_ids)
            if plan is None:  # only a rebuild can match it (not expected with in-place pruning)
                cache.clear()
                plan = ([], opened.context.positions, opened.context.token_ids)
            evict, positions, ids = plan
            self.engine.evict(cache, evict, cold=v.cold)
            v.pending = (list(ids), list(positions))

    def _forward(self, variants: list[Variant], capture: bool, probe: bool = False) -> list[StepOutput]:
        entries = []
        for v in variants:
            assert v.cache is not None
            ids, positions = v.pending
            probing = v.recall.probe(v.cache, positions) if probe and v.recall is not None else ()
            # A probe needs the capture's sink; its row is not used where capture was not asked for.
            mode = v.capture if capture or probing else None
            entries.append(BatchEntry(v.cache, ids, positions, mode, probe=probing))
            v.pending = ([], [])
        outputs = self.engine.forward(entries)
        return [out for out in outputs if out is not None]

    async def _prompt(self, variants: list[Variant], capture: bool) -> list[StepOutput]:
        """The prompt's forward after an Open, then recall as the worker does it (services/inference/recall.py):
        probe, the tracker's decision, re-insertion, and the prompt's last token fed again where something came
        back. Returns each variant's output for its prompt's last token."""
        outputs = self._forward(variants, capture, probe=True)
        again = []
        for i, (v, out) in enumerate(zip(variants, outputs, strict=True)):
            if out.probe is None or v.recall is None or v.cache is None:
                continue
            started = time.perf_counter()
            probe = v.recall.score(v.cache, out, v.capture)
            if probe is not None:
                v.probes += 1
                outcome = await self.tracker.recall(v.session_id, v.job_id, convert.probe_from_pb(probe))
                if outcome.positions:
                    ids, positions, _ = v.recall.apply(v.cache, convert.recalled_to_pb(outcome).recalled)
                    v.pending = (ids, positions)
                    again.append(i)
            v.recall_seconds += time.perf_counter() - started
        if again:
            started = time.perf_counter()
            fed = self._forward([variants[i] for i in again], capture)
            share = (time.perf_counter() - started) / len(again)  # the re-fed token is recall's cost too
            for i, out in zip(again, fed, strict=True):
                outputs[i] = out
                variants[i].recall_seconds += share
        return outputs

    async def _reply(self, variants: list[Variant], script: list[int] | None) -> None:
        await self._open(variants)
        live = list(variants)
        outputs = await self._prompt(live, capture=True)
        step = 0
        while live:
            tokens = [script[step] if script is not None else int(torch.argmax(out.logits)) for out in outputs]
            # Every variant's frame at once, as the worker sends a step's frames: the tracker answers them together.
            outcomes = await asyncio.gather(
                *(
                    self.tracker.frame(v.session_id, v.job_id, _frame(step, token, out))
                    for v, token, out in zip(live, tokens, outputs, strict=True)
                )
            )
            feeding = []
            for v, token, outcome in zip(live, tokens, outcomes, strict=True):
                assert v.cache is not None
                self.engine.evict(v.cache, outcome.evict_positions, cold=v.cold)
                if script is not None:
                    last = step + 1 == len(script)
                else:
                    last = token in self.engine.eos_token_ids or step + 1 == self.reply_tokens
                if last:
                    await self.tracker.finish(v.session_id, v.job_id, "eos", {})
                else:
                    v.pending = ([token], [outcome.position])
                    feeding.append(v)
            step += 1
            live = feeding
            outputs = self._forward(live, capture=True) if live else []

    # ---- the question --------------------------------------------------------------------------------------------

    async def _sentences(self, variant: Variant, sentences: tuple[str, ...]) -> list[int]:
        """The positions of every token of the dictionary's sentences that hold any of `sentences`' text."""
        _, tokens = await self.tracker.export(variant.session_id)
        by_turn: dict[int, list[Any]] = {}
        for t in tokens:
            if t.role == "user":
                by_turn.setdefault(t.turn_id, []).append(t)
        found: set[tuple[int, int]] = set()
        for wanted in sentences:
            for turn, entries in by_turn.items():
                text = "".join(t.token for t in entries)
                start = text.find(wanted)
                if start < 0:
                    continue
                end, offset = start + len(wanted), 0
                for t in entries:
                    if offset < end and offset + len(t.token) > start:
                        found.add((turn, t.sentence_id))
                    offset += len(t.token)
                break
            else:
                raise ValueError(f"{wanted!r} is in no user turn of the conversation")
        return sorted(t.position for t in tokens if (t.turn_id, t.sentence_id) in found)

    async def _without_facts(self, none: Variant, chat: Chat) -> Variant:
        """The unpruned cache before the question, with the removed facts' sentences evicted."""
        assert none.cache is not None and none.context is not None
        removed = Variant("fact_removed", 0.0, {})
        removed.cache = self.engine.import_cache(self.engine.export_cache(none.cache))
        removed.fact_positions = await self._sentences(none, chat.removed)
        self.engine.evict(removed.cache, removed.fact_positions)
        removed.pending = (list(none.pending[0]), list(none.pending[1]))
        removed.kept = False
        removed.active_tokens = none.active_tokens - len(removed.fact_positions)
        return removed

    def _answer(
        self, variants: list[Variant], first: list[StepOutput], lead: str, key: str
    ) -> tuple[list[float], list[str]]:
        """Per variant, on the context as the question left it (`first`: the outputs of its prompt's last token):
        the key's mean NLL per token, teacher-forced after the lead, and a greedy reply (the teacher-forced tokens
        are evicted again before it)."""
        starts = [v.cache.next_position for v in variants if v.cache is not None]
        lead_ids, key_ids = self._ids(lead), self._ids(" " + key)
        ids = lead_ids + key_ids
        # The lead in one forward per variant (its logits are not measured), then the key a token at a time.
        for v, start in zip(variants, starts, strict=True):
            v.pending = (lead_ids, list(range(start, start + len(lead_ids))))
        step = self._forward(variants, capture=False)
        nll = [0.0] * len(variants)
        for j in range(len(lead_ids), len(ids)):
            nll = [total + _nll(out.logits, ids[j]) for total, out in zip(nll, step, strict=True)]
            if j + 1 < len(ids):
                for v, start in zip(variants, starts, strict=True):
                    v.pending = ([ids[j]], [start + j])
                step = self._forward(variants, capture=False)
        for v, start in zip(variants, starts, strict=True):
            assert v.cache is not None
            self.engine.evict(v.cache, [p for p in v.cache.positions if p >= start])
        replies: list[list[int]] = [[] for _ in variants]
        tokens = [int(torch.argmax(out.logits)) for out in first]
        live = list(range(len(variants)))
        for j in range(GREEDY_TOKENS):
            feeding = []
            for i in live:
                if tokens[i] in self.engine.eos_token_ids:
                    continue
                replies[i].append(tokens[i])
                variants[i].pending = ([tokens[i]], [starts[i] + j])
                feeding.append(i)
            live = feeding
            if not live or j + 1 == GREEDY_TOKENS:
                break
            for i, out in zip(live, self._forward([variants[i] for i in live], capture=False), strict=True):
                tokens[i] = int(torch.argmax(out.logits))
        texts = [self.tokenizer.decode(r, skip_special_tokens=True) for r in replies]
        return [total / len(key_ids) for total in nll], texts


def _nll(logits: torch.Tensor, token: int) -> float:
    value = -float(torch.log_softmax(logits.float(), dim=-1)[token])
    return value if math.isfinite(value) else 1e9


def _frame(step: int, token: int, out: StepOutput) -> FrameInput:
    if out.full is not None:
        layers, heads, _ = out.full.shape
        return FrameInput(step, token, np.zeros(0, np.float32), full=out.full.tobytes(), layers=layers, heads=heads)
    assert out.attention is not None
    return FrameInput(step, token, out.attention)
