"""The tracker's settings, read from the environment once at start-up."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from services.common import config, events, model_store


class TrackerConfig(config.EnvSettings):
    redis_url: str = config.peer("HALOWEAVE_REDIS_URL")
    listen: str = Field(
        default="127.0.0.1:50051",
        validation_alias="HALOWEAVE_TRACKER_LISTEN",
        min_length=1,
        description="gRPC `host:port`.",
    )
    metrics_port: int = Field(
        default=9101,
        validation_alias="HALOWEAVE_TRACKER_METRICS_PORT",
        ge=0,
        le=65535,
        description="Port of the tracker's HTTP `/metrics`; 0: none.",
    )

    @property
    def model_path(self) -> Path:
        """The model whose tokenizer the tracker loads (`services.common.model_store.ModelSettings`)."""
        return model_store.model_path()

    @classmethod
    def from_env(cls) -> TrackerConfig:
        cfg = cls()
        model_store.ModelSettings()  # a bad model setting or Stream bound stops the tracker here, at start-up
        events.limits()
        return cfg
