"""The gateway's settings, read from the environment once at start-up (`GatewayConfig.from_env`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from services.common import config, events


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    redis_url: str
    tracker_addr: str
    snapshot_addr: str
    inference_addr: str
    host: str = "127.0.0.1"
    port: int = 8000
    # A client frame larger than this is refused with `frame_too_large`; the connection stays open.
    max_frame_bytes: int = 64 * 1024
    # Frames past this hard cap close the socket (1009) before they are even buffered.
    hard_frame_bytes: int = 1024 * 1024
    # No frame in either direction for this long closes the connection (`idle_timeout`).
    idle_timeout_s: float = 600.0
    # Frames waiting for one socket, bounded in count and in bytes (a frame larger than the byte bound still goes
    # alone); when it stays full for `slow_client_s` the client is closed (`slow_consumer`).
    send_buffer_frames: int = 4096
    send_buffer_bytes: int = 4 * 1024 * 1024
    slow_client_s: float = 5.0
    # Connections that follow a session's Stream at once: each blocks in XREAD on a Redis connection of its own. One
    # more `hello` is refused with `overloaded` (the connection stays open).
    max_sessions: int = 4096
    # How long REST snapshot take/restore waits for the worker's answer event.
    job_timeout_s: float = 120.0
    # A bound on every unary call to the tracker or the snapshot service.
    rpc_timeout_s: float = 10.0
    # Longest accepted user message, in characters (a frame may hold less once JSON-escaped).
    max_message_chars: int = 16_000
    # The bounds of a session's event Stream, applied to the error events the gateway appends (shared setting).
    stream_limits: events.StreamLimits = field(default_factory=events.StreamLimits)

    def __post_init__(self) -> None:
        for name in (
            "max_frame_bytes",
            "hard_frame_bytes",
            "send_buffer_frames",
            "send_buffer_bytes",
            "max_message_chars",
            "max_sessions",
        ):
            if getattr(self, name) <= 0:
                raise config.ConfigError(f"gateway {name} must be positive")
        for name in ("idle_timeout_s", "job_timeout_s", "rpc_timeout_s", "slow_client_s"):
            if getattr(self, name) <= 0:
                raise config.ConfigError(f"gateway {name} must be positive")
        if self.hard_frame_bytes < self.max_frame_bytes:
            raise config.ConfigError("HALOWEAVE_GATEWAY_HARD_FRAME_BYTES must be >= HALOWEAVE_GATEWAY_MAX_FRAME_BYTES")

    @classmethod
    def from_env(cls) -> GatewayConfig:
        return cls(
            redis_url=config.require("HALOWEAVE_REDIS_URL"),
            tracker_addr=config.require("HALOWEAVE_TRACKER_ADDR"),
            snapshot_addr=config.require("HALOWEAVE_SNAPSHOT_ADDR"),
            inference_addr=config.require("HALOWEAVE_INFERENCE_ADDR"),
            host=config.get("HALOWEAVE_GATEWAY_HOST", "127.0.0.1"),
            port=config.get_int("HALOWEAVE_GATEWAY_PORT", 8000),
            max_frame_bytes=config.get_int("HALOWEAVE_GATEWAY_MAX_FRAME_BYTES", 64 * 1024),
            hard_frame_bytes=config.get_int("HALOWEAVE_GATEWAY_HARD_FRAME_BYTES", 1024 * 1024),
            idle_timeout_s=config.get_float("HALOWEAVE_GATEWAY_IDLE_TIMEOUT_S", 600.0),
            send_buffer_frames=config.get_int("HALOWEAVE_GATEWAY_SEND_BUFFER", 4096),
            send_buffer_bytes=config.get_int("HALOWEAVE_GATEWAY_SEND_BUFFER_BYTES", 4 * 1024 * 1024),
            slow_client_s=config.get_float("HALOWEAVE_GATEWAY_SLOW_CLIENT_S", 5.0),
            max_sessions=config.get_int("HALOWEAVE_GATEWAY_MAX_SESSIONS", 4096),
            job_timeout_s=config.get_float("HALOWEAVE_GATEWAY_JOB_TIMEOUT_S", 120.0),
            rpc_timeout_s=config.get_float("HALOWEAVE_GATEWAY_RPC_TIMEOUT_S", 10.0),
            max_message_chars=config.get_int("HALOWEAVE_GATEWAY_MAX_MESSAGE_CHARS", 16_000),
            stream_limits=events.limits(),
        )
