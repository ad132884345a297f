"""The inference service's settings, read from the environment once at start-up (services.common.config)."""

from __future__ import annotations

import re
import socket
from typing import Literal

from pydantic import Field, field_validator, model_validator

from services.common import config, events, model_store
from services.inference.scheduler import Limits

# The precisions the engine loads a model in (services.inference.engine.config.TORCH_DTYPES; a test keeps them equal:
# the engine imports torch, which these settings must not).
Dtype = Literal["float32", "float16", "bfloat16"]
_LIMITS = Limits()  # the defaults of the batching bounds and budgets


class InferenceConfig(config.EnvSettings):
    redis_url: str = config.peer("HALOWEAVE_REDIS_URL")
    tracker_addr: str = config.peer("HALOWEAVE_TRACKER_ADDR")
    snapshot_addr: str = config.peer("HALOWEAVE_SNAPSHOT_ADDR")
    listen: str = Field(
        default="127.0.0.1:50053",
        validation_alias="HALOWEAVE_INFERENCE_LISTEN",
        min_length=1,
        description="gRPC `host:port` of the service's status and health.",
    )
    metrics_port: int = Field(
        default=9103,
        validation_alias="HALOWEAVE_INFERENCE_METRICS_PORT",
        ge=0,
        le=65535,
        description="Port of the inference service's HTTP `/metrics`; 0: none.",
    )
    workers: int = Field(
        default=1, validation_alias="HALOWEAVE_INFERENCE_WORKERS", ge=1, description="Worker actors (Ray)."
    )
    ray_num_cpus: int = Field(
        default=2,
        validation_alias="HALOWEAVE_RAY_NUM_CPUS",
        ge=1,
        description="CPUs of the private local Ray, shared by the workers (each gets a fraction and as many threads).",
    )
    device: str = Field(
        default="",
        validation_alias="HALOWEAVE_DEVICE",
        description="`cpu`, `cuda` or `cuda:N`.",
        json_schema_extra={"shown_default": "`cuda` when available, else `cpu`"},
    )
    dtype: Dtype = Field(
        default="float32", validation_alias="HALOWEAVE_DTYPE", description="Precision of the model weights."
    )
    engine: Literal["native", "vllm"] = Field(
        default="native",
        validation_alias="HALOWEAVE_ENGINE",
        description="`native` (in-place KV eviction, snapshots, recall) or `vllm` (vLLM's batching and kernels, with"
        " attention capture; pruning re-prefills; no snapshots or recall: docs/vllm.md). `vllm` runs in its own"
        " environment, `.venv-vllm`.",
    )
    vllm_max_model_len: int = Field(
        default=8192,
        validation_alias="HALOWEAVE_VLLM_MAX_MODEL_LEN",
        ge=64,
        description="Tokens of context a conversation may reach on the vLLM engine (vLLM sizes its buffers by it).",
    )
    # Stable worker names: a worker restarted by Ray keeps its name, so it finds its own forwarded jobs again.
    worker_prefix: str = Field(
        default_factory=socket.gethostname,
        validation_alias="HALOWEAVE_WORKER_PREFIX",
        min_length=1,
        description="Workers are named `<prefix>-<i>`; a restarted worker keeps its name and finds its jobs again.",
        json_schema_extra={"shown_default": "the host name"},
    )
    # A job pending this long on a consumer that no longer refreshes it belongs to a dead worker and is reclaimed.
    claim_idle_ms: int = Field(
        default=15_000,
        validation_alias="HALOWEAVE_CLAIM_IDLE_MS",
        ge=1000,
        description="Milliseconds a job may go unrefreshed by its worker before another worker reclaims it.",
    )
    # Continuous batching and the KV budget (services.inference.scheduler.Limits checks them together).
    max_running: int = Field(
        default=_LIMITS.max_running,
        validation_alias="HALOWEAVE_MAX_RUNNING",
        ge=1,
        description="Conversations one worker runs in one forward.",
    )
    max_waiting: int = Field(
        default=_LIMITS.max_waiting,
        validation_alias="HALOWEAVE_MAX_WAITING",
        ge=0,
        description="Opened replies queued behind the running ones; one more is refused as `overloaded`.",
    )
    prefill_chunk_tokens: int = Field(
        default=_LIMITS.prefill_chunk_tokens,
        validation_alias="HALOWEAVE_PREFILL_CHUNK_TOKENS",
        ge=1,
        description="Prompt tokens a step for each prompt being fed while others decode.",
    )
    max_step_tokens: int = Field(
        default=_LIMITS.max_step_tokens,
        validation_alias="HALOWEAVE_MAX_STEP_TOKENS",
        ge=1,
        description="Tokens in one forward at most, decodes included (the chunk when nobody decodes);"
        " at least `HALOWEAVE_MAX_RUNNING` and `HALOWEAVE_PREFILL_CHUNK_TOKENS`.",
    )
    kv_budget_bytes: int = Field(
        default=_LIMITS.kv_budget_bytes,
        validation_alias="HALOWEAVE_KV_BUDGET_BYTES",
        ge=0,
        description="KV cache bytes of one worker: what its running conversations reach together, and what it"
        " keeps between turns before offloading the least recently used sessions.",
    )
    cold_budget_bytes: int = Field(
        default=_LIMITS.cold_budget_bytes,
        validation_alias="HALOWEAVE_COLD_BUDGET_BYTES",
        ge=0,
        description="Host bytes of all sessions' cold tiers (pruned keys and values kept for recall); beyond it"
        " the oldest chunks of the least recently used sessions go.",
    )
    # Ray's own RAY_ADDRESS joins an existing cluster (Kubernetes, compose); unset, a private local Ray is started.
    ray_address: str = Field(
        default="local",
        validation_alias="RAY_ADDRESS",
        min_length=1,
        description="A running Ray cluster to join (Ray's own variable); `local`: start a private one.",
    )

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        if value and not re.fullmatch(r"cpu|cuda(:\d+)?", value):
            raise ValueError(f"{value!r} is not 'cpu', 'cuda' or 'cuda:N'")
        return value

    @model_validator(mode="after")
    def _limits_agree(self) -> InferenceConfig:
        self.limits  # noqa: B018 (built for its checks across the bounds)
        return self

    @property
    def limits(self) -> Limits:
        try:
            return Limits(**{name: getattr(self, name) for name in Limits.__dataclass_fields__})
        except ValueError as error:
            message = str(error)
            for name in Limits.__dataclass_fields__:  # name the variables the operator sets, not the fields
                message = message.replace(name, config.variable_of(InferenceConfig, name))
            raise ValueError(message) from None

    @property
    def model_path(self) -> str:
        """The model the workers load (`services.common.model_store.ModelSettings`)."""
        return str(model_store.model_path())

    @classmethod
    def from_env(cls) -> InferenceConfig:
        # Peers first: a missing one fails before anything slow (such as importing torch) happens.
        cfg = cls()
        model_store.ModelSettings()
        events.limits()
        if cfg.device:
            return cfg
        import torch

        return cfg.model_copy(update={"device": "cuda" if torch.cuda.is_available() else "cpu"})
