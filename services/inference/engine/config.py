"""The engine's settings: which model, on which device, in which precision."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

from services.common import model_store

Dtype = Literal["float32", "float16", "bfloat16"]
TORCH_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}


def _default_model_path() -> str:
    # A factory, not a constant: the path comes from HALOWEAVE_MODEL_PATH when the config is built, not at import.
    return str(model_store.model_path())


@dataclass(slots=True)
class EngineConfig:
    """Validated on construction, so a bad setting fails at start-up rather than on the first request."""

    model_path: str = field(default_factory=_default_model_path)  # a local transformers causal-LM directory
    device: str = "cpu"  # "cpu" | "cuda" | "cuda:N"
    dtype: str = "float32"  # float32 | float16 | bfloat16
    threads: int | None = None  # torch.set_num_threads on CPU when set

    def __post_init__(self) -> None:
        if not self.model_path:
            raise ValueError("model_path: must name a model directory")
        if self.dtype not in TORCH_DTYPES:
            raise ValueError(f"dtype: {self.dtype!r} is not one of {', '.join(TORCH_DTYPES)}")
        if self.device != "cpu" and not (self.device == "cuda" or self._is_cuda_index(self.device)):
            raise ValueError(f"device: {self.device!r} is not 'cpu', 'cuda' or 'cuda:N'")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads: must be at least 1, got {self.threads}")

    @staticmethod
    def _is_cuda_index(device: str) -> bool:
        prefix, _, index = device.partition(":")
        return prefix == "cuda" and index.isdigit()

    @property
    def torch_dtype(self) -> torch.dtype:
        return TORCH_DTYPES[self.dtype]
