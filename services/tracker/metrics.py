"""The tracker's Prometheus metrics (names from docs/architecture.md). No session ids in labels."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

# Aggregation of a 28x28x500 tensor takes tens of microseconds: buckets start at 10 µs so the histogram can show it.
AGGREGATION_BUCKETS = (1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 0.1)
STEP_BUCKETS = (1e-4, 2.5e-4, 5e-4, 7.5e-4, 1e-3, 1.5e-3, 2e-3, 3e-3, 5e-3, 7.5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.5, 1.0)

AGGREGATION_SECONDS = Histogram(
    "haloweave_tracker_aggregation_seconds",
    "Reducing a frame's attention to the score vector (incl. full tensors)",
    buckets=AGGREGATION_BUCKETS,
)
STEP_UPDATE_SECONDS = Histogram(
    "haloweave_tracker_step_update_seconds",
    "Frame received to Redis updated and events appended",
    buckets=STEP_BUCKETS,
)
FRAMES = Counter("haloweave_tracker_frames_total", "Frames applied")
FRAME_ERRORS = Counter("haloweave_tracker_frame_errors_total", "Frames refused, by error code", ["code"])
PRUNED_TOKENS = Counter("haloweave_tracker_pruned_tokens_total", "Tokens pruned, by prune mode", ["mode"])
PRUNED_SENTENCES = Counter("haloweave_tracker_pruned_sentences_total", "Sentences pruned")
# Observed at every frame, so the distribution covers every session that is generating (a gauge would only say which
# session stepped last). With continuous batching many sessions step at once.
ACTIVE_TOKENS_BUCKETS = (64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536)
ACTIVE_TOKENS = Histogram(
    "haloweave_tracker_active_tokens",
    "Active tokens of the session at each frame (the context the model attends to)",
    buckets=ACTIVE_TOKENS_BUCKETS,
)
RECALLED_TOKENS = Counter("haloweave_tracker_recalled_tokens_total", "Pruned tokens brought back by recall")
RECALLED_SENTENCES = Counter("haloweave_tracker_recalled_sentences_total", "Pruned sentences brought back by recall")
