"""The gateway's settings, read from the environment once at start-up (`GatewayConfig.from_env`)."""

from __future__ import annotations

from pydantic import Field, model_validator

from services.common import config, events


class GatewayConfig(config.EnvSettings):
    redis_url: str = config.peer("HALOWEAVE_REDIS_URL")
    tracker_addr: str = config.peer("HALOWEAVE_TRACKER_ADDR")
    snapshot_addr: str = config.peer("HALOWEAVE_SNAPSHOT_ADDR")
    inference_addr: str = config.peer("HALOWEAVE_INFERENCE_ADDR")
    host: str = Field(
        default="127.0.0.1",
        validation_alias="HALOWEAVE_GATEWAY_HOST",
        min_length=1,
        description="Address HTTP listens on.",
    )
    port: int = Field(
        default=8000,
        validation_alias="HALOWEAVE_GATEWAY_PORT",
        ge=0,
        le=65535,
        description="Port of HTTP and WebSocket.",
    )
    max_frame_bytes: int = Field(
        default=64 * 1024,
        validation_alias="HALOWEAVE_GATEWAY_MAX_FRAME_BYTES",
        gt=0,
        description="A client frame larger than this is refused with `frame_too_large`; the connection stays open.",
    )
    hard_frame_bytes: int = Field(
        default=1024 * 1024,
        validation_alias="HALOWEAVE_GATEWAY_HARD_FRAME_BYTES",
        gt=0,
        description="Frames past this hard cap close the socket (1009) before they are even buffered;"
        " at least `HALOWEAVE_GATEWAY_MAX_FRAME_BYTES`.",
    )
    idle_timeout_s: float = Field(
        default=600.0,
        validation_alias="HALOWEAVE_GATEWAY_IDLE_TIMEOUT_S",
        gt=0,
        description="Seconds without a frame in either direction that close a connection (`idle_timeout`).",
    )
    send_buffer_frames: int = Field(
        default=4096,
        validation_alias="HALOWEAVE_GATEWAY_SEND_BUFFER",
        gt=0,
        description="Frames waiting to be sent to one socket, at most.",
    )
    send_buffer_bytes: int = Field(
        default=4 * 1024 * 1024,
        validation_alias="HALOWEAVE_GATEWAY_SEND_BUFFER_BYTES",
        gt=0,
        description="Bytes waiting to be sent to one socket, at most (a larger frame still goes alone).",
    )
    slow_client_s: float = Field(
        default=5.0,
        validation_alias="HALOWEAVE_GATEWAY_SLOW_CLIENT_S",
        gt=0,
        description="Seconds a socket's send buffer may stay full before the client is closed (`slow_consumer`).",
    )
    max_sessions: int = Field(
        default=4096,
        validation_alias="HALOWEAVE_GATEWAY_MAX_SESSIONS",
        gt=0,
        description="Connections following a session's Stream at once (each holds a Redis connection);"
        " one more `hello` is refused with `overloaded`.",
    )
    job_timeout_s: float = Field(
        default=120.0,
        validation_alias="HALOWEAVE_GATEWAY_JOB_TIMEOUT_S",
        gt=0,
        description="Seconds a REST snapshot take or restore waits for the worker's answer.",
    )
    rpc_timeout_s: float = Field(
        default=10.0,
        validation_alias="HALOWEAVE_GATEWAY_RPC_TIMEOUT_S",
        gt=0,
        description="Seconds every unary call to the tracker or the snapshot service may take.",
    )
    max_message_chars: int = Field(
        default=16_000,
        validation_alias="HALOWEAVE_GATEWAY_MAX_MESSAGE_CHARS",
        gt=0,
        description="Longest accepted user message, in characters.",
    )

    @model_validator(mode="after")
    def _hard_cap_above_refusal(self) -> GatewayConfig:
        if self.hard_frame_bytes < self.max_frame_bytes:
            raise ValueError("HALOWEAVE_GATEWAY_HARD_FRAME_BYTES must be >= HALOWEAVE_GATEWAY_MAX_FRAME_BYTES")
        return self

    @property
    def stream_limits(self) -> events.StreamLimits:
        """The bounds of a session's event Stream, applied to the error events the gateway appends (shared setting)."""
        return events.limits()

    @classmethod
    def from_env(cls) -> GatewayConfig:
        events.limits()  # a bad Stream bound stops the gateway at start-up, not at its first error event
        return cls()
