"""The engine: a transformers causal LM driven one step at a time over per-session KV caches.

Every forward passes explicit RoPE positions (after pruning, the cache length no longer says where the next token
sits) and, when asked, collects the newest query's attention row through the registered attention function.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from services.common import model_store

from . import attention, recall
from .base import EngineBase
from .batch import Batch, BatchCache, BatchEntry
from .capture import CaptureSink, check_mode
from .cold import ColdChunk
from .config import EngineConfig
from .errors import EngineInputError, check_tokens
from .kv_cache import SessionCache
from .sampling import eos_ids
from .transfer import export_arrays, import_arrays


@dataclass
class StepOutput:
    logits: torch.Tensor | None  # [vocab] float32 on CPU, for the last input token; None where the engine samples
    attention: np.ndarray | None  # float32 [ctx] over cache slots incl. the last input token; None if capture off
    full: np.ndarray | None  # float16 [layers, heads, ctx] when the mode is "full"
    seconds: float  # forward + capture
    probe: Probe | None = None  # the probed queries of every layer, when the entry asked for a recall probe
    token: int | None = None  # the token the engine sampled itself (vLLM's sampler), or None: sample `logits`


@dataclass
class Probe:
    """What recall scores the cold tier with (engine/recall.py): per layer the probed queries [heads, n, head_dim],
    scaled and with RoPE applied."""

    queries: list[torch.Tensor]
    softcap: float | None


class Engine(EngineBase):
    def __init__(self, config: EngineConfig, model: PreTrainedModel | None = None, tokenizer: Any = None) -> None:
        """Loads the model from `config.model_path`; `model`/`tokenizer` inject an already built one (benchmarks
        use randomly initialised models at real shapes, which have no directory to load from)."""
        self.config = config
        if config.threads is not None and config.device == "cpu":
            torch.set_num_threads(config.threads)
        attention.register()
        path = Path(config.model_path)
        injected = model is not None
        if model is None:
            if not (path / "config.json").exists():
                raise EngineInputError(f"model_path: {path} holds no config.json (a transformers model directory)")
            model = AutoModelForCausalLM.from_pretrained(
                str(path), dtype=config.torch_dtype, attn_implementation=attention.ATTENTION_NAME
            )
            # Module.to moves in place; transformers' typed wrapper of `to` confuses the type checker.
            torch.nn.Module.to(model, torch.device(config.device))
        else:
            model.set_attn_implementation(attention.ATTENTION_NAME)
        model.eval()
        self.model = model
        self.tokenizer = tokenizer if tokenizer is not None else AutoTokenizer.from_pretrained(str(path))
        text = model.config.get_text_config(decoder=True)
        self.model_name = (
            str(getattr(model.config, "_name_or_path", "") or "unnamed model")
            if injected
            else model_store.display_name(path)
        )
        self._read_shape(text, config.torch_dtype)
        self.dtype = config.dtype
        self.device = config.device
        self.tokenizer_fingerprint = model_store.tokenizer_fingerprint(path) if path.exists() else ""
        self.eos_token_ids = eos_ids(getattr(model, "generation_config", None), self.tokenizer)
        self._device = torch.device(config.device)

    # ---- caches -------------------------------------------------------------------------------------------------

    def new_cache(self) -> SessionCache:
        return SessionCache(self.num_layers)

    def drop(self, cache: SessionCache) -> None:
        """Lets go of a session's cache for good (its erase): here its tensors go with the object, nothing to do."""

    def evict(self, cache: SessionCache, positions: list[int], cold: bool = False) -> None:
        """Removes the tokens at `positions` from every layer in place; survivors keep their RoPE positions.
        With `cold`, the removed keys and values move to the session's cold tier (recall is on)."""
        if not positions:
            return
        index = {p: i for i, p in enumerate(cache.positions)}
        drop = set()
        for p in positions:
            if p not in index:
                raise EngineInputError(f"evict: position {p} is not in the cache")
            drop.add(index[p])
        keep = [i for i in range(len(cache)) if i not in drop]
        first = min(drop)  # slots before the first dropped one stay put: only the rest is moved
        slots = torch.tensor(keep[first:], dtype=torch.long, device=self._device)
        with torch.inference_mode():  # the buffers are inference tensors: only written to in this mode
            if cold:
                cache.cold.add(self._chunk(cache, sorted(drop)))
            for layer in cache.layers:
                layer.keep(slots, first)
        cache.positions = [cache.positions[i] for i in keep]
        cache.token_ids = [cache.token_ids[i] for i in keep]

    def _chunk(self, cache: SessionCache, slots: list[int], recomputed: bool = False) -> ColdChunk:
        """The listed slots (ascending) of every layer as one host-side cold chunk."""
        index = torch.tensor(slots, dtype=torch.long, device=self._device)
        parts = []
        for layer in cache.layers:
            assert layer.keys is not None and layer.values is not None
            parts.append(torch.stack([layer.keys[0].index_select(1, index), layer.values[0].index_select(1, index)]))
        kv = torch.stack(parts).to("cpu")
        return ColdChunk([cache.positions[i] for i in slots], [cache.token_ids[i] for i in slots], kv, recomputed)

    # ---- recall -------------------------------------------------------------------------------------------------

    def reinsert(self, cache: SessionCache, chunk: ColdChunk) -> None:
        """Puts cold entries back at the slots their positions sort to, in every layer: bit for bit what was evicted."""
        if not chunk.positions:
            return
        held = set(cache.positions)
        if any(p in held for p in chunk.positions):
            raise EngineInputError("reinsert: a position is in the hot cache already")
        start, order, merged = recall.merge_order(cache.positions, chunk.positions)
        ids = dict(zip(cache.positions, cache.token_ids, strict=True))
        ids.update(zip(chunk.positions, chunk.token_ids, strict=True))
        index = torch.tensor(order, dtype=torch.long, device=self._device)
        kv = chunk.kv.to(self._device)
        with torch.inference_mode():
            for i, layer in enumerate(cache.layers):
                layer.insert(start, index, kv[i, 0][None], kv[i, 1][None])
        cache.positions = merged
        cache.token_ids = [ids[p] for p in merged]
        cache.check_order()

    def recompute(self, cache: SessionCache, positions: list[int], token_ids: list[int]) -> ColdChunk:
        """Keys and values for pruned tokens the cold tier no longer holds, from their ids at their own positions:
        one forward of them (ascending) over a copy of the hot slots before the first. Approximate where tokens
        between them were pruned or later: they are not in that context."""
        check_tokens(token_ids, positions, -1, self.vocab_size)
        start = int(np.searchsorted(np.asarray(cache.positions, dtype=np.int64), positions[0]))
        scratch = self.new_cache()
        with torch.inference_mode():
            for layer, source in zip(scratch.layers, cache.layers, strict=True):
                assert source.keys is not None and source.values is not None
                layer.install(source.keys[:, :, :start].clone(), source.values[:, :, :start].clone())
        scratch.positions, scratch.token_ids = cache.positions[:start], cache.token_ids[:start]
        self.forward([BatchEntry(scratch, token_ids, positions, logits=False)])
        with torch.inference_mode():
            return self._chunk(scratch, list(range(start, len(scratch))), recomputed=True)

    def recall_scores(
        self, cache: SessionCache, probe: Probe, mode: str
    ) -> tuple[np.ndarray, list[int], np.ndarray] | None:
        """(hot scores over the cache's slots, cold positions, their scores) from one softmax over both; None when
        the cold tier is empty. See engine/recall.py."""
        cold = cache.cold.all()
        if cold is None:
            return None
        with torch.inference_mode():
            hot, far = recall.scores(cache, probe.queries, cold, mode, probe.softcap)
        return hot, cold.positions, far

    def rebuild(self, cache: SessionCache, token_ids: list[int], positions: list[int]) -> None:
        """Reprefill mode: forgets the cache and prefills the surviving tokens at their own positions."""
        check_tokens(token_ids, positions, -1, self.vocab_size)
        fresh = self.new_cache()
        if token_ids:
            self.prefill(fresh, token_ids, positions, capture=None)
        cache.layers = fresh.layers
        cache.positions, cache.token_ids = fresh.positions, fresh.token_ids

    def export_cache(self, cache: SessionCache) -> dict[str, np.ndarray]:
        return export_arrays(cache, self.dtype, self.num_kv_heads, self.head_dim)

    def import_cache(self, arrays: dict[str, np.ndarray]) -> SessionCache:
        cache = self.new_cache()
        shape = (self.num_layers, self.num_kv_heads, self.head_dim, self.vocab_size)
        with torch.inference_mode():
            import_arrays(cache, arrays, self.dtype, self._device, shape)
        return cache

    # ---- forwards -----------------------------------------------------------------------------------------------

    def check(self, entry: BatchEntry) -> None:
        """Refuses an entry before anything runs: EngineInputError, and no cache has changed."""
        if not entry.token_ids:
            raise EngineInputError("forward: no tokens given")
        check_mode(entry.capture)
        if entry.probe and (entry.capture is None or not all(0 <= i < len(entry.token_ids) for i in entry.probe)):
            raise EngineInputError("forward: a probe needs capture on and indices among the entry's tokens")
        check_tokens(entry.token_ids, entry.positions, entry.cache.next_position - 1, self.vocab_size)

    def forward(self, entries: list[BatchEntry]) -> list[StepOutput | None]:
        """One forward over every entry (packed, each attending to its own cache). Returns, per entry, its last
        token's logits and captured row, or None for an entry that asked for neither. On any failure every cache is
        as it was before the call."""
        for entry in entries:
            self.check(entry)
        if len({id(entry.cache) for entry in entries}) != len(entries):
            raise EngineInputError("forward: one cache appears twice in the batch")
        started = time.perf_counter()
        before = [len(entry.cache) for entry in entries]
        sinks = [
            CaptureSink(e.capture, self.num_layers, self.num_heads, n + len(e.token_ids), self._device, e.probe)
            if e.capture is not None
            else None
            for e, n in zip(entries, before, strict=True)
        ]
        batch = Batch(entries, sinks)
        ids = [t for entry in entries for t in entry.token_ids]
        positions = [p for entry in entries for p in entry.positions]
        wanted = [i for i, entry in enumerate(entries) if entry.logits or entry.capture is not None]
        last_rows = torch.tensor([batch.spans[i][1] - 1 for i in wanted], dtype=torch.long, device=self._device)
        try:
            with torch.inference_mode():
                out = self.model(
                    input_ids=torch.tensor([ids], dtype=torch.long, device=self._device),
                    position_ids=torch.tensor([positions], dtype=torch.long, device=self._device),
                    cache=BatchCache(batch, self.num_layers),
                    use_cache=True,
                    logits_to_keep=last_rows,
                    **{attention.BATCH_KWARG: batch},
                )
            logits = out.logits[0].float().cpu()
            captured = {i: sinks[i].result() for i in wanted if sinks[i] is not None}  # type: ignore[union-attr]
        except BaseException:
            for entry, n in zip(entries, before, strict=True):
                entry.cache.truncate(n)  # a failed forward may have appended to some layers: undo, lose nothing
            raise
        seconds = time.perf_counter() - started
        results: list[StepOutput | None] = [None] * len(entries)
        for row, i in enumerate(wanted):
            attention_row, full = captured.get(i, (None, None))
            sink = sinks[i]
            probe = None
            if sink is not None and sink.probe:
                probe = Probe([q for q in sink.queries if q is not None], sink.softcap)
            results[i] = StepOutput(logits[row], attention_row, full, seconds, probe)
        for entry in entries:
            entry.cache.positions.extend(entry.positions)
            entry.cache.token_ids.extend(entry.token_ids)
        return results
