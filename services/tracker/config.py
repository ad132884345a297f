"""The tracker's settings, read from the environment once at start-up."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from services.common import config, model_store


@dataclass(frozen=True, slots=True)
class TrackerConfig:
    redis_url: str
    listen: str
    metrics_port: int  # 0: no metrics endpoint
    model_path: Path

    @classmethod
    def from_env(cls) -> TrackerConfig:
        return cls(
            redis_url=config.require("HALOWEAVE_REDIS_URL"),
            listen=config.get("HALOWEAVE_TRACKER_LISTEN", "127.0.0.1:50051"),
            metrics_port=config.get_int("HALOWEAVE_TRACKER_METRICS_PORT", 9101),
            model_path=model_store.model_path(),
        )
