"""SmolLM2 through transformers directly: real KV caches, time to first token after a re-prefill or a restore, and
the exactness check (the continuation after save-and-restore equals the one without it, token for token)."""

from __future__ import annotations

import time

import numpy as np
import torch

from bench.snapshot.client import Service
from services.common.model_store import model_path

TEXT = (
    "Halo Weave lets people chat with a language model while they watch which earlier tokens it attends to. "
    "Each token has a brightness that grows when it is attended to and decays otherwise; when the conversation "
    "outgrows its budget, the dimmest sentences are pruned from the dictionary and from the cache in place. "
)


class Model:
    def __init__(self) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        torch.set_num_threads(2)
        path = str(model_path())
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="sdpa").eval()
        self.layers = int(self.model.config.num_hidden_layers)
        base = AutoTokenizer.from_pretrained(path)(TEXT)["input_ids"]
        self._base = list(base)

    def context(self, tokens: int) -> torch.Tensor:
        ids = (self._base * (tokens // len(self._base) + 1))[:tokens]
        return torch.tensor([ids], dtype=torch.long)

    @torch.inference_mode()
    def reprefill(self, ids: torch.Tensor) -> tuple[float, int]:
        """Time to first token when the whole context is prefilled again."""
        started = time.perf_counter()
        logits = self.model(ids, use_cache=True).logits[0, -1]
        token = int(logits.argmax())
        return time.perf_counter() - started, token

    @torch.inference_mode()
    def cache_arrays(self, ids: torch.Tensor) -> dict[str, np.ndarray]:
        """The snapshot of everything but the last token: restoring it, one decode step gives the first token."""
        head = ids[:, :-1]
        cache = self.model(head, use_cache=True).past_key_values
        n = head.shape[1]
        arrays: dict[str, np.ndarray] = {
            "input_ids": head.numpy().astype(np.int64),
            "attention_mask": np.ones((1, n), dtype=np.int64),
            "position_ids": np.arange(n, dtype=np.int64)[None],
        }
        for i, layer in enumerate(cache.layers):
            arrays[f"layer.{i}.key"] = layer.keys.contiguous().numpy().copy()
            arrays[f"layer.{i}.value"] = layer.values.contiguous().numpy().copy()
        return arrays

    def install(self, arrays: dict[str, np.ndarray]) -> object:
        from transformers import DynamicCache

        cache = DynamicCache()
        for i in range(self.layers):
            cache.update(torch.from_numpy(arrays[f"layer.{i}.key"]), torch.from_numpy(arrays[f"layer.{i}.value"]), i)
        return cache

    @torch.inference_mode()
    def greedy(self, cache: object, ids: torch.Tensor, steps: int) -> tuple[list[int], torch.Tensor]:
        """Feeds the context's last token on top of `cache`, then continues greedily: the tokens, the first logits."""
        position = ids.shape[1] - 1
        token = ids[:, -1:]
        tokens: list[int] = []
        first_logits = torch.empty(0)
        for step in range(steps):
            out = self.model(
                token, past_key_values=cache, position_ids=torch.tensor([[position + step]]), use_cache=True
            )
            logits = out.logits[0, -1]
            if step == 0:
                first_logits = logits.clone()
            tokens.append(int(logits.argmax()))
            token = torch.tensor([[tokens[-1]]])
        return tokens, first_logits

    def restore_ttft(self, service: Service, session_id: str, snapshot_id: str, ids: torch.Tensor) -> tuple[float, int]:
        """Time to first token after a restore: load over gRPC, install the cache, one decode step."""
        started = time.perf_counter()
        arrays = service.load(session_id, snapshot_id)
        tokens, _ = self.greedy(self.install(arrays), ids, 1)
        return time.perf_counter() - started, tokens[0]

    def exact_after_restore(
        self, service: Service, session_id: str, snapshot_id: str, arrays: dict[str, np.ndarray], ids: torch.Tensor
    ) -> bool:
        """The continuation from the in-memory cache and from the restored one: same tokens, bit-identical logits."""
        kept = {name: array.copy() for name, array in arrays.items()}
        want_tokens, want_logits = self.greedy(self.install(kept), ids, 12)
        got_tokens, got_logits = self.greedy(self.install(service.load(session_id, snapshot_id)), ids, 12)
        return want_tokens == got_tokens and bool(torch.equal(want_logits, got_logits))
