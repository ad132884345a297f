"""The vLLM engine (HALOWEAVE_ENGINE=vllm): vLLM's batching and kernels behind the native engine's interface, with
Halo Weave's attention capture hooked into vLLM's forward. Importing this package does not import vLLM; building a
`VllmEngine` does (it lives in its own environment, `.venv-vllm`: see docs/vllm.md)."""

from .engine import EngineStartError, NotSupported, VllmCache, VllmEngine, VllmOptions

__all__ = ["EngineStartError", "NotSupported", "VllmCache", "VllmEngine", "VllmOptions"]
