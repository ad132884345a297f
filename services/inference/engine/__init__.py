"""The inference engine: a transformers causal LM stepped over per-session KV caches, with attention capture.

`Engine` owns the model; `SessionCache` is one conversation's KV cache with the RoPE position of every slot;
`forward` runs one packed step over many conversations (`BatchEntry` each) and returns, per conversation, the logits
plus the newest query's attention row aggregated on the model's device (`prefill`/`decode` are a batch of one);
`evict` prunes in place (moving what it removes to the session's cold tier when recall is on) and `reinsert`
puts cold entries back by position; `export_cache`/`import_cache` round-trip a cache exactly. `Sampler` picks tokens.
"""

from .batch import BatchEntry
from .capture import CAPTURE_MODES, CaptureMode
from .cold import ColdChunk, ColdTier
from .config import EngineConfig
from .engine import Engine, Probe, StepOutput
from .errors import EngineInputError
from .kv_cache import SessionCache
from .sampling import Sampler, SamplingParams, stop_reached

__all__ = [
    "CAPTURE_MODES",
    "BatchEntry",
    "CaptureMode",
    "ColdChunk",
    "ColdTier",
    "Engine",
    "EngineConfig",
    "EngineInputError",
    "Probe",
    "Sampler",
    "SamplingParams",
    "SessionCache",
    "StepOutput",
    "stop_reached",
]
