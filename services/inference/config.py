"""The inference service's settings, read from the environment once at start-up (services.common.config)."""

from __future__ import annotations

import socket
from dataclasses import dataclass

from services.common import config, model_store

DEFAULT_KV_BUDGET_BYTES = 2 * 1024**3


@dataclass(slots=True, frozen=True)
class InferenceConfig:
    redis_url: str
    tracker_addr: str
    snapshot_addr: str
    listen: str = "127.0.0.1:50053"
    metrics_port: int = 9103
    workers: int = 1
    ray_num_cpus: int = 2
    # Bytes of KV cache one worker keeps in memory; beyond it the least recently used sessions are offloaded.
    kv_budget_bytes: int = DEFAULT_KV_BUDGET_BYTES
    device: str = "cpu"
    dtype: str = "float32"
    model_path: str = ""
    # Stable worker names: a worker restarted by Ray keeps its name, so it finds its own forwarded jobs again.
    worker_prefix: str = ""
    # A job pending this long on a consumer that no longer refreshes it belongs to a dead worker and is reclaimed.
    claim_idle_ms: int = 15_000
    # Continuous batching: conversations in one forward, replies queued behind them (one more is refused as
    # `overloaded`), and tokens per forward (every decode, then prefill chunks: the bound on a step's duration).
    max_running: int = 16
    max_waiting: int = 64
    max_batched_tokens: int = 128
    # Tokens in a forward where no conversation decodes (nobody's inter-token latency to protect): bigger chunks.
    max_prefill_tokens: int = 1024
    # Ray's own RAY_ADDRESS joins an existing cluster (Kubernetes, compose); unset, a private local Ray is started.
    ray_address: str = "local"

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise config.ConfigError(f"HALOWEAVE_INFERENCE_WORKERS={self.workers} must be at least 1")
        if self.kv_budget_bytes < 0:
            raise config.ConfigError(f"HALOWEAVE_KV_BUDGET_BYTES={self.kv_budget_bytes} must not be negative")
        if self.max_running < 1:
            raise config.ConfigError(f"HALOWEAVE_MAX_RUNNING={self.max_running} must be at least 1")
        if self.max_waiting < 0:
            raise config.ConfigError(f"HALOWEAVE_MAX_WAITING={self.max_waiting} must not be negative")
        if self.max_batched_tokens < self.max_running:
            raise config.ConfigError(
                f"HALOWEAVE_MAX_BATCHED_TOKENS={self.max_batched_tokens} must be at least HALOWEAVE_MAX_RUNNING"
                f"={self.max_running}: every running conversation decodes one token per step"
            )
        if self.max_prefill_tokens < self.max_batched_tokens:
            raise config.ConfigError(
                f"HALOWEAVE_MAX_PREFILL_TOKENS={self.max_prefill_tokens} must be at least HALOWEAVE_MAX_BATCHED_TOKENS"
            )
        if self.claim_idle_ms < 1000:
            raise config.ConfigError(f"HALOWEAVE_CLAIM_IDLE_MS={self.claim_idle_ms} must be at least 1000")

    @classmethod
    def from_env(cls) -> InferenceConfig:
        # Peers first: a missing one fails before anything slow (such as importing torch) happens.
        redis_url = config.require("HALOWEAVE_REDIS_URL")
        tracker_addr = config.require("HALOWEAVE_TRACKER_ADDR")
        snapshot_addr = config.require("HALOWEAVE_SNAPSHOT_ADDR")
        device = config.get("HALOWEAVE_DEVICE", "")
        if not device:
            import torch

            device = "cuda" if torch.cuda.is_available() else "cpu"
        return cls(
            redis_url=redis_url,
            tracker_addr=tracker_addr,
            snapshot_addr=snapshot_addr,
            listen=config.get("HALOWEAVE_INFERENCE_LISTEN", "127.0.0.1:50053"),
            metrics_port=config.get_int("HALOWEAVE_INFERENCE_METRICS_PORT", 9103),
            workers=config.get_int("HALOWEAVE_INFERENCE_WORKERS", 1),
            ray_num_cpus=config.get_int("HALOWEAVE_RAY_NUM_CPUS", 2),
            kv_budget_bytes=config.get_int("HALOWEAVE_KV_BUDGET_BYTES", DEFAULT_KV_BUDGET_BYTES),
            device=device,
            dtype=config.get("HALOWEAVE_DTYPE", "float32"),
            model_path=str(model_store.model_path()),
            worker_prefix=config.get("HALOWEAVE_WORKER_PREFIX", socket.gethostname()),
            claim_idle_ms=config.get_int("HALOWEAVE_CLAIM_IDLE_MS", 15_000),
            max_running=config.get_int("HALOWEAVE_MAX_RUNNING", 16),
            max_waiting=config.get_int("HALOWEAVE_MAX_WAITING", 64),
            max_batched_tokens=config.get_int("HALOWEAVE_MAX_BATCHED_TOKENS", 128),
            max_prefill_tokens=config.get_int("HALOWEAVE_MAX_PREFILL_TOKENS", 1024),
            ray_address=config.get("RAY_ADDRESS", "local"),
        )
