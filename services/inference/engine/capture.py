"""Aggregating the newest query's attention row over layers and heads, on the model's device, as the forward runs.

The attention function hands each layer's softmax row to a `CaptureSink`; the sink folds it into one running vector
(or, in `full` mode, one fp16 slice of a [layers, heads, ctx] tensor). Nothing crosses to the host until the forward
is done, and then only that vector: one small transfer per step, whatever the model size.

Modes (DESIGN.md section 3): `mean` over all layers and heads; `max` over layers and heads; `last_layer` the mean over
heads of the last layer; `weighted_layers` the mean over heads with layer l weighted ∝ l+1, weights normalised; `full`
the whole [layers, heads, ctx] tensor.
"""

from __future__ import annotations

from typing import Literal, get_args

import numpy as np
import torch

CaptureMode = Literal["mean", "max", "last_layer", "weighted_layers", "full"]
CAPTURE_MODES: tuple[str, ...] = get_args(CaptureMode)


def check_mode(mode: str | None) -> None:
    if mode is not None and mode not in CAPTURE_MODES:
        raise ValueError(f"capture: {mode!r} is not one of {', '.join(CAPTURE_MODES)} (or None for off)")


class CaptureSink:
    """Receives one [heads, ctx] float32 row per layer for the newest query and keeps only the aggregate."""

    def __init__(self, mode: str, num_layers: int, num_heads: int, ctx: int, device: torch.device) -> None:
        check_mode(mode)
        self.mode = mode
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.ctx = ctx
        self.layers_seen = 0
        self._acc: torch.Tensor | None = None
        self._full: torch.Tensor | None = None
        if mode == "full":
            self._full = torch.zeros(num_layers, num_heads, ctx, dtype=torch.float16, device=device)
        elif mode == "max":
            self._acc = torch.zeros(ctx, dtype=torch.float32, device=device)  # probabilities are >= 0
        else:
            self._acc = torch.zeros(ctx, dtype=torch.float32, device=device)
        # weighted_layers: w_l = (l+1) / sum(1..L), folded with the 1/H of the head mean.
        self._layer_weight = 2.0 / (num_layers * (num_layers + 1))

    def add(self, layer: int, row: torch.Tensor) -> None:
        """`row` is [heads, ctx] float32: softmax probabilities of the newest query, per query head."""
        if row.shape != (self.num_heads, self.ctx):
            raise RuntimeError(
                f"capture expected [{self.num_heads}, {self.ctx}] at layer {layer}, got {tuple(row.shape)}"
            )
        self.layers_seen += 1
        if self._full is not None:
            self._full[layer] = row.to(torch.float16)
            return
        assert self._acc is not None
        if self.mode == "mean":
            self._acc += row.sum(dim=0)
        elif self.mode == "max":
            torch.maximum(self._acc, row.amax(dim=0), out=self._acc)
        elif self.mode == "last_layer":
            if layer == self.num_layers - 1:
                self._acc = row.mean(dim=0)
        else:  # weighted_layers
            self._acc += row.mean(dim=0) * ((layer + 1) * self._layer_weight)

    def result(self) -> tuple[np.ndarray, np.ndarray | None]:
        """(aggregated float32 [ctx], full float16 [layers, heads, ctx] or None), copied to the host."""
        if self.layers_seen != self.num_layers:
            raise RuntimeError(f"capture saw {self.layers_seen} of {self.num_layers} layers; the model bypassed it")
        if self._full is not None:
            full = self._full.cpu().numpy()
            # The vector view of `full` mode is the mean, so the tracker can score with it as well.
            return full.astype(np.float32).mean(axis=(0, 1)), full
        assert self._acc is not None
        acc = self._acc
        if self.mode == "mean":
            acc = acc / (self.num_layers * self.num_heads)
        return acc.cpu().numpy().astype(np.float32, copy=False), None
