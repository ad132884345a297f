"""Aggregating the newest query's attention row over layers and heads, on the model's device, as the forward runs.

The attention function hands each layer's softmax row to a `CaptureSink`; the sink folds it into one running vector
(or, in `full` mode, one fp16 slice of a [layers, heads, ctx] tensor). Nothing crosses to the host until the forward
is done, and then only that vector: one small transfer per step, whatever the model size.

Modes (DESIGN.md section 3): `mean` over all layers and heads; `max` over layers and heads; `last_layer` the mean over
heads of the last layer; `weighted_layers` the mean over heads with layer l weighted ∝ l+1, weights normalised; `full`
the whole [layers, heads, ctx] tensor.
"""

from __future__ import annotations

import numpy as np
import torch

from services.common.session_settings import AGGREGATIONS as CAPTURE_MODES
from services.common.session_settings import Aggregation as CaptureMode

__all__ = ["CAPTURE_MODES", "CaptureMode", "CaptureSink", "check_mode", "reduce"]


def check_mode(mode: str | None) -> None:
    if mode is not None and mode not in CAPTURE_MODES:
        raise ValueError(f"capture: {mode!r} is not one of {', '.join(CAPTURE_MODES)} (or None for off)")


class CaptureSink:
    """Receives one [heads, ctx] float32 row per layer for the newest query; aggregates them once, after the forward.

    Adding a row launches no kernel: the sink keeps a reference to the softmax the attention already computed
    (layers x heads x ctx floats in all, a few MB even for an 8B model at 8k). One stack and one reduction at the
    end replace two small kernels per layer, which matters where decode is bound by kernel launches (GPUs).
    """

    def __init__(
        self, mode: str, num_layers: int, num_heads: int, ctx: int, device: torch.device, probe: tuple[int, ...] = ()
    ) -> None:
        check_mode(mode)
        self.mode = mode
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.ctx = ctx
        self.device = device
        self._rows: list[torch.Tensor | None] = [None] * num_layers
        self.probe = probe
        self._probe_index: torch.Tensor | None = None
        self.queries: list[torch.Tensor | None] = [None] * num_layers
        self.softcap: float | None = None

    @property
    def layers_seen(self) -> int:
        return sum(row is not None for row in self._rows)

    def add(self, layer: int, row: torch.Tensor) -> None:
        """`row` is [heads, ctx] float32: softmax probabilities of the newest query, per query head."""
        if row.shape != (self.num_heads, self.ctx):
            raise RuntimeError(
                f"capture expected [{self.num_heads}, {self.ctx}] at layer {layer}, got {tuple(row.shape)}"
            )
        self._rows[layer] = row

    def probe_index(self, device: torch.device) -> torch.Tensor:
        if self._probe_index is None:
            self._probe_index = torch.tensor(self.probe, dtype=torch.long, device=device)
        return self._probe_index

    def add_query(self, layer: int, queries: torch.Tensor) -> None:
        """`queries` is [heads, probes, head_dim], already scaled: kept only when the entry asked for a probe."""
        self.queries[layer] = queries

    def aggregate(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """On the device: (aggregated float32 [ctx], full float16 [layers, heads, ctx] or None)."""
        rows = [row for row in self._rows if row is not None]
        if len(rows) != self.num_layers:
            raise RuntimeError(f"capture saw {len(rows)} of {self.num_layers} layers; the model bypassed it")
        stacked = torch.stack(rows)  # [layers, heads, ctx]
        return reduce(stacked, self.mode), stacked.to(torch.float16) if self.mode == "full" else None

    def result(self) -> tuple[np.ndarray, np.ndarray | None]:
        """The aggregate copied to the host: one small transfer per step."""
        row, full = self.aggregate()
        return row.cpu().numpy(), full.cpu().numpy() if full is not None else None


def reduce(stacked: torch.Tensor, mode: str) -> torch.Tensor:
    """[..., layers, heads, ctx] probabilities → the float32 [..., ctx] vector of `mode` (`full`'s vector view is the
    mean); leading dimensions are independent rows (a batch of requests)."""
    if mode in ("mean", "full"):
        return stacked.mean(dim=(-3, -2))
    if mode == "max":
        return stacked.amax(dim=(-3, -2))
    if mode == "last_layer":
        return stacked[..., -1, :, :].mean(dim=-2)
    # weighted_layers: layer l weighted by (l+1) / sum(1..L), after the mean over heads.
    layers = stacked.shape[-3]
    weights = torch.arange(1, layers + 1, dtype=torch.float32, device=stacked.device)
    return (stacked.mean(dim=-2) * (weights / weights.sum())[:, None]).sum(dim=-2)
