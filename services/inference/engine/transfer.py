"""A session cache as named numpy arrays and back, bit for bit (the snapshot format's tensors, DESIGN.md section 5).

Names: `input_ids`, `position_ids`, `attention_mask` as int64 [1, tokens]; `layer.{i}.key` / `layer.{i}.value` as
[batch, kv_heads, tokens, head_dim] in the engine's dtype. A non-empty cold tier (recall) adds `cold.input_ids` and
`cold.position_ids` [1, cold tokens] and `cold.layer.{i}.key|value` [1, kv_heads, cold tokens, head_dim].
numpy has no bfloat16, so bfloat16 tensors travel as their uint16 bit patterns: exact, and checked against the
engine's dtype on import.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .cold import ColdChunk
from .errors import EngineInputError
from .kv_cache import SessionCache

_NUMPY_DTYPES: dict[str, np.dtype[Any]] = {
    "float32": np.dtype(np.float32),
    "float16": np.dtype(np.float16),
    "bfloat16": np.dtype(np.uint16),
}


def _to_numpy(tensor: torch.Tensor) -> np.ndarray:
    tensor = tensor.detach().contiguous().cpu()
    if tensor.dtype == torch.bfloat16:
        return tensor.view(torch.int16).numpy().view(np.uint16).copy()
    return tensor.numpy().copy()


def _to_torch(array: np.ndarray, dtype: str, device: torch.device) -> torch.Tensor:
    array = np.ascontiguousarray(array)
    if dtype == "bfloat16":
        return torch.from_numpy(array.view(np.int16)).view(torch.bfloat16).to(device)
    return torch.from_numpy(array).to(device)


def export_arrays(cache: SessionCache, dtype: str, kv_heads: int, head_dim: int) -> dict[str, np.ndarray]:
    n = len(cache)
    arrays: dict[str, np.ndarray] = {
        "input_ids": np.asarray(cache.token_ids, dtype=np.int64).reshape(1, n),
        "position_ids": np.asarray(cache.positions, dtype=np.int64).reshape(1, n),
        "attention_mask": np.ones((1, n), dtype=np.int64),
    }
    for i, layer in enumerate(cache.layers):
        if n == 0:  # a session with nothing cached yet still exports (and imports) as zero-token tensors
            arrays[f"layer.{i}.key"] = np.zeros((1, kv_heads, 0, head_dim), dtype=_NUMPY_DTYPES[dtype])
            arrays[f"layer.{i}.value"] = np.zeros((1, kv_heads, 0, head_dim), dtype=_NUMPY_DTYPES[dtype])
            continue
        if layer.keys is None or layer.values is None or layer.length != n:
            raise EngineInputError(f"export: layer {i} holds {layer.length} slots, the cache lists {n} tokens")
        arrays[f"layer.{i}.key"] = _to_numpy(layer.keys)
        arrays[f"layer.{i}.value"] = _to_numpy(layer.values)
    cold = cache.cold.all()
    if cold is not None:
        c = len(cold.positions)
        arrays["cold.input_ids"] = np.asarray(cold.token_ids, dtype=np.int64).reshape(1, c)
        arrays["cold.position_ids"] = np.asarray(cold.positions, dtype=np.int64).reshape(1, c)
        for i in range(len(cache.layers)):
            arrays[f"cold.layer.{i}.key"] = _to_numpy(cold.kv[i, 0][None])
            arrays[f"cold.layer.{i}.value"] = _to_numpy(cold.kv[i, 1][None])
    for name, array in arrays.items():
        if ".layer." in f".{name}" and array.dtype != _NUMPY_DTYPES[dtype]:
            raise EngineInputError(f"export: {name} is {array.dtype}, the engine runs {dtype}")
    return arrays


def _ids(arrays: dict[str, np.ndarray], name: str) -> np.ndarray:
    if name not in arrays:
        raise EngineInputError(f"import: array {name!r} is missing")
    array = np.asarray(arrays[name])
    if array.ndim != 2 or array.shape[0] != 1 or not np.issubdtype(array.dtype, np.integer):
        raise EngineInputError(f"import: {name} must be an integer array [1, tokens], got {array.dtype} {array.shape}")
    return array[0].astype(np.int64)


def import_arrays(
    cache: SessionCache,
    arrays: dict[str, np.ndarray],
    dtype: str,
    device: torch.device,
    shape: tuple[int, int, int, int],
) -> None:
    """Fills an empty cache; validates everything before touching it. `shape` = (layers, kv_heads, head_dim, vocab)."""
    num_layers, kv_heads, head_dim, vocab = shape
    token_ids, positions, mask = (_ids(arrays, n) for n in ("input_ids", "position_ids", "attention_mask"))
    n = len(token_ids)
    if len(positions) != n or len(mask) != n:
        raise EngineInputError(f"import: {n} input_ids, {len(positions)} position_ids, {len(mask)} mask entries")
    if not np.all(mask == 1):
        raise EngineInputError("import: attention_mask must be all ones (a session cache holds no padding)")
    if n and (positions[0] < 0 or np.any(np.diff(positions) <= 0)):
        raise EngineInputError("import: position_ids must be non-negative and strictly ascending")
    if n and (token_ids.min() < 0 or token_ids.max() >= vocab):
        raise EngineInputError(f"import: input_ids outside the vocabulary [0, {vocab})")
    layers = [k for k in arrays if k.startswith("layer.")]
    if len(layers) != 2 * num_layers:
        raise EngineInputError(f"import: {len(layers)} layer arrays, this model needs {2 * num_layers}")
    tensors = _layer_tensors(arrays, "layer.", num_layers, (1, kv_heads, n, head_dim), dtype, device)
    cold = _cold(arrays, positions, shape, dtype)
    for layer, (keys, values) in zip(cache.layers, tensors, strict=True):
        layer.install(keys, values)
    cache.token_ids = [int(t) for t in token_ids]
    cache.positions = [int(p) for p in positions]
    if cold is not None:
        cache.cold.add(cold)


def _layer_tensors(
    arrays: dict[str, np.ndarray],
    prefix: str,
    num_layers: int,
    expected: tuple[int, int, int, int],
    dtype: str,
    device: torch.device,
) -> list[list[torch.Tensor]]:
    tensors = []
    for i in range(num_layers):
        pair = []
        for part in ("key", "value"):
            name = f"{prefix}{i}.{part}"
            array = arrays.get(name)
            if array is None:
                raise EngineInputError(f"import: array {name!r} is missing")
            if array.shape != expected or array.dtype != _NUMPY_DTYPES[dtype]:
                raise EngineInputError(
                    f"import: {name} is {array.dtype} {array.shape}, this model needs {_NUMPY_DTYPES[dtype]} {expected}"
                )
            pair.append(_to_torch(array, dtype, device))
        tensors.append(pair)
    return tensors


def _cold(
    arrays: dict[str, np.ndarray],
    hot_positions: np.ndarray,
    shape: tuple[int, int, int, int],
    dtype: str,
) -> ColdChunk | None:
    """The cold tier's arrays (all of them or none), checked like the hot ones; kept on the host."""
    names = [k for k in arrays if k.startswith("cold.")]
    if not names:
        return None
    num_layers, kv_heads, head_dim, vocab = shape
    token_ids, positions = (_ids(arrays, n) for n in ("cold.input_ids", "cold.position_ids"))
    c = len(token_ids)
    if len(positions) != c:
        raise EngineInputError(f"import: {c} cold.input_ids but {len(positions)} cold.position_ids")
    if c and (positions[0] < 0 or np.any(np.diff(positions) <= 0)):
        raise EngineInputError("import: cold.position_ids must be non-negative and strictly ascending")
    if np.intersect1d(positions, hot_positions).size:
        raise EngineInputError("import: a cold position is also in the cache")
    if c and (token_ids.min() < 0 or token_ids.max() >= vocab):
        raise EngineInputError(f"import: cold.input_ids outside the vocabulary [0, {vocab})")
    if len(names) != 2 + 2 * num_layers:
        raise EngineInputError(f"import: {len(names)} cold arrays, this model needs {2 + 2 * num_layers}")
    # The cold tier lives on the host, whatever the model's device.
    pairs = _layer_tensors(arrays, "cold.layer.", num_layers, (1, kv_heads, c, head_dim), dtype, torch.device("cpu"))
    kv = torch.stack([torch.stack([k[0], v[0]]) for k, v in pairs])
    return ColdChunk([int(p) for p in positions], [int(t) for t in token_ids], kv)
