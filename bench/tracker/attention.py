"""Attention rows shaped like a real model's, for the step benchmarks.

Uniform random rows are the wrong load: every value is about 1/ctx, below what the default additive decay (0.003)
takes away each step, so every score stays at 0, no brightness changes and no brightness event is ever written. The
real rows of SmolLM2-135M (mean over its 30 layers and 9 heads, the last token of a chat about this project at 1k and
2k tokens) look like this instead:

- about a third of the mass on the first token (the attention sink: 0.34 at 1k, 0.31 at 2k),
- about a third on the last 20 tokens (0.34, 0.32), which distance weighting leaves unscored (min_distance 20),
- the rest spread over the middle with a heavy tail: ctx * a at the 10th / 50th / 90th / 99th percentile was
  0.02 / 0.09 / 0.49 / 9.3 at 1k, 0.03 / 0.09 / 0.59 / 6.1 at 2k, so a few percent of the tokens gain more than
  the decay takes each step (6% at 1k, 4% at 2k) and stay lit, while the others fade to 0.

The model below reproduces that: the sink and recency shares, and a middle drawn from a per-position salience (the
same tokens matter from one step to the next, as they do in a real conversation) times a per-step jitter. A
log-normal alone cannot give both the real 90th and 99th percentiles; a log-normal with 3% of the positions 30x more
salient comes close (seed 1: 0.02 / 0.10 / 0.54 / 17, 6% lit at 1k; 0.03 / 0.12 / 0.54 / 11, 4% lit at 2k).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

SINK_SHARE = 0.32
RECENT_SHARE = 0.32
RECENT_TOKENS = 20
SALIENCE_SIGMA = 1.0  # log-normal salience across positions
SALIENT_SHARE, SALIENT_FACTOR = 0.03, 30.0  # the few positions a conversation keeps coming back to
JITTER_SIGMA = 0.5  # log-normal, from step to step, for one position
_TABLE = 1 << 17  # salience per position, positions taken modulo this (beyond any context the bench builds)


class AttentionModel:
    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        salient = self.rng.random(_TABLE) < SALIENT_SHARE
        self._salience = self.rng.lognormal(0.0, SALIENCE_SIGMA, _TABLE) * np.where(salient, SALIENT_FACTOR, 1.0)
        recent = 0.8 ** np.arange(RECENT_TOKENS)[::-1]  # the newest token gets the most
        self._recent = recent / recent.sum() * RECENT_SHARE

    def row(self, positions: NDArray[np.int64]) -> NDArray[np.float32]:
        """One reduced row over the active `positions` (ascending), summing to 1."""
        count = len(positions)
        if count <= RECENT_TOKENS + 1:
            values = self.rng.random(count)
            return (values / values.sum()).astype(np.float32)
        row = np.empty(count, dtype=np.float64)
        row[0] = SINK_SHARE
        row[-RECENT_TOKENS:] = self._recent
        middle = self._salience[positions[1:-RECENT_TOKENS] % _TABLE]
        middle = middle * self.rng.lognormal(0.0, JITTER_SIGMA, len(middle))
        row[1:-RECENT_TOKENS] = middle * ((1.0 - SINK_SHARE - RECENT_SHARE) / middle.sum())
        return row.astype(np.float32)

    def full(self, positions: NDArray[np.int64], layers: int, heads: int) -> NDArray[np.float16]:
        """A [layers, heads, ctx] fp16 tensor whose mean over layers and heads is close to `row`: each head sees the
        same row scaled by its own noise in [0.5, 1.5), renormalised."""
        row = self.row(positions)
        tensor = self.rng.random((layers, heads, len(positions)), dtype=np.float32)
        tensor += 0.5
        tensor *= row
        tensor /= tensor.sum(axis=2, keepdims=True)
        return tensor.astype("<f2")
