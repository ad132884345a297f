"""Helpers for the snapshot tests: synthetic caches shaped like SmolLM2's, and saving them through a store."""

from __future__ import annotations

import os

import numpy as np

from services.snapshot.crypto import MasterKey
from services.snapshot.store import SnapshotStore
from services.snapshot.tensors import Header, Info

MODEL = "SmolLM2-135M-Instruct"
FINGERPRINT = "0123456789abcdef"


def make_cache(
    layers: int = 2, heads: int = 3, tokens: int = 12, head_dim: int = 8, seed: int = 0, dtype: str = "<f4"
) -> dict[str, np.ndarray]:
    """Random tensors of every name a snapshot holds; the floats carry arbitrary bit patterns, NaNs included."""
    rng = np.random.default_rng(seed)
    cache: dict[str, np.ndarray] = {
        "input_ids": rng.integers(0, 49152, (1, tokens), dtype=np.int64),
        "attention_mask": np.ones((1, tokens), dtype=np.int64),
        "position_ids": np.sort(rng.choice(4 * tokens + 1, tokens, replace=False)).astype(np.int64)[None],
    }
    itemsize = np.dtype(dtype).itemsize
    for i in range(layers):
        for kind in ("key", "value"):
            raw = rng.integers(0, 256, heads * tokens * head_dim * itemsize, dtype=np.uint8)
            cache[f"layer.{i}.{kind}"] = raw.view(dtype).reshape(1, heads, tokens, head_dim)
    return cache


def header(layers: int = 2, session_id: str = "s-owner", obfuscation: list[str] | None = None, **kw: object) -> Header:
    fields: dict[str, object] = {
        "session_id": session_id,
        "model": MODEL,
        "dtype": "float32",
        "cache_impl": "dynamic",
        "tokenizer_fingerprint": FINGERPRINT,
        "num_layers": layers,
        "tracker_state": b"\x08\x01tracker-state",
        "obfuscation": ["rotate_heads", "xor_mask", "remap_ids"] if obfuscation is None else obfuscation,
    }
    fields.update(kw)
    return Header(**fields)  # type: ignore[arg-type]


def save(store: SnapshotStore, head: Header, cache: dict[str, np.ndarray]) -> Info:
    session = store.begin(head)
    for name, array in cache.items():
        session.add(name, array.dtype.str, array.shape, bytearray(array.tobytes()))
    return session.finish()


def load(store: SnapshotStore, info: Info, session_id: str = "s-owner", **kw: str) -> dict[str, np.ndarray]:
    args = {"model": MODEL, "dtype": "float32", "tokenizer_fingerprint": FINGERPRINT, **kw}
    loaded = store.load(session_id, info.snapshot_id, args["model"], args["dtype"], args["tokenizer_fingerprint"])
    return {t.name: t.array for t in loaded.tensors}


def assert_bit_exact(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert set(got) == set(want)
    for name, array in want.items():
        assert got[name].dtype == array.dtype, name
        assert got[name].shape == array.shape, name
        assert got[name].tobytes() == array.tobytes(), f"{name} differs"


def new_master() -> MasterKey:
    return MasterKey(os.urandom(32))
