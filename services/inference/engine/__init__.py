"""The inference engine: a transformers causal LM stepped over per-session KV caches, with attention capture.

`Engine` owns the model; `SessionCache` is one conversation's KV cache with the RoPE position of every slot;
`prefill`/`decode` return logits plus the newest query's attention row aggregated on the model's device; `evict`
prunes in place; `export_cache`/`import_cache` round-trip a cache exactly. `Sampler` picks tokens.
"""

from .capture import CAPTURE_MODES, CaptureMode
from .config import EngineConfig
from .engine import Engine, StepOutput
from .errors import EngineInputError
from .generate import Generation, Step
from .kv_cache import SessionCache
from .sampling import Sampler, SamplingParams, stop_reached

__all__ = [
    "CAPTURE_MODES",
    "CaptureMode",
    "Engine",
    "EngineConfig",
    "EngineInputError",
    "Generation",
    "Sampler",
    "SamplingParams",
    "SessionCache",
    "Step",
    "StepOutput",
    "stop_reached",
]
