"""The inference service's settings, read from the environment once at start-up (services.common.config)."""

from __future__ import annotations

import socket
from dataclasses import dataclass, field

from services.common import config, model_store
from services.inference.scheduler import Limits


@dataclass(slots=True, frozen=True)
class InferenceConfig:
    redis_url: str
    tracker_addr: str
    snapshot_addr: str
    listen: str = "127.0.0.1:50053"
    metrics_port: int = 9103
    workers: int = 1
    ray_num_cpus: int = 2
    device: str = "cpu"
    dtype: str = "float32"
    model_path: str = ""
    # Stable worker names: a worker restarted by Ray keeps its name, so it finds its own forwarded jobs again.
    worker_prefix: str = ""
    # A job pending this long on a consumer that no longer refreshes it belongs to a dead worker and is reclaimed.
    claim_idle_ms: int = 15_000
    # Continuous batching and the KV budget (services.inference.scheduler.Limits documents each bound).
    limits: Limits = field(default_factory=Limits)
    # Ray's own RAY_ADDRESS joins an existing cluster (Kubernetes, compose); unset, a private local Ray is started.
    ray_address: str = "local"

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise config.ConfigError(f"HALOWEAVE_INFERENCE_WORKERS={self.workers} must be at least 1")
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
            limits=limits_from_env(),
            device=device,
            dtype=config.get("HALOWEAVE_DTYPE", "float32"),
            model_path=str(model_store.model_path()),
            worker_prefix=config.get("HALOWEAVE_WORKER_PREFIX", socket.gethostname()),
            claim_idle_ms=config.get_int("HALOWEAVE_CLAIM_IDLE_MS", 15_000),
            ray_address=config.get("RAY_ADDRESS", "local"),
        )


LIMIT_VARIABLES = {
    "max_running": "HALOWEAVE_MAX_RUNNING",
    "max_waiting": "HALOWEAVE_MAX_WAITING",
    "prefill_chunk_tokens": "HALOWEAVE_PREFILL_CHUNK_TOKENS",
    "max_step_tokens": "HALOWEAVE_MAX_STEP_TOKENS",
    "kv_budget_bytes": "HALOWEAVE_KV_BUDGET_BYTES",
    "cold_budget_bytes": "HALOWEAVE_COLD_BUDGET_BYTES",
}


def limits_from_env() -> Limits:
    defaults = Limits()
    values = {name: config.get_int(variable, getattr(defaults, name)) for name, variable in LIMIT_VARIABLES.items()}
    try:
        return Limits(**values)
    except ValueError as error:
        message = str(error)
        for name, variable in LIMIT_VARIABLES.items():  # name the variables the operator sets, not the fields
            message = message.replace(name, variable)
        raise config.ConfigError(message) from None
