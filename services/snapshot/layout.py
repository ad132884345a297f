"""The context-snapshot layout (DESIGN.md section 5): folder names, file names, config.txt and the manifest.

One folder per save, named `m<month>d<day>x<hour>x<minute>x<second>` in UTC, with `_2`, `_3`, ... appended when that
name is taken. Inside it:

    input_ids.npy  attention_mask.npy  position_ids.npy
    past_key_values/{i}_key.npy  past_key_values/{i}_value.npy
    cold/input_ids.npy  cold/position_ids.npy    optional, all or none: the keys and values of pruned tokens kept
    cold/past_key_values/{i}_key.npy             for recall (the cold tier), at their own RoPE positions
    cold/past_key_values/{i}_value.npy
    metadata/config.txt  metadata/symbolic_map.npy  metadata/obfchain.txt  metadata/keylog.txt
    metadata/tracker_state.bin
    manifest.json          written last: a snapshot without it is incomplete and never listed or loaded

The hot tensors are `input_ids`, `attention_mask`, `position_ids` (int64 [1, tokens]) and `layer.{i}.key|value`
([batch, kv_heads, tokens, head_dim]). The cold tier, when a snapshot has one, is `cold.input_ids` and
`cold.position_ids` (int64 [1, C]) and `cold.layer.{i}.key|value` ([1, kv_heads, C, head_dim]) for every layer, C
independent of the hot token count and possibly 0. A snapshot holds all of its 2 + 2 * num_layers cold tensors or none;
snapshots without a cold tier read as they always have (an older reader refuses one with a cold tier as incomplete).

Every file but the manifest is stored encrypted; the manifest is the plaintext envelope that lists each file's sha256
and size and carries the wrapped data key (never the key itself).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from services.common import snapshot_ids
from services.common.errors import DataLoss, InvalidArgument

# Bumped whenever the stored bytes change meaning; a snapshot of another version is refused on load.
FORMAT_VERSION = 1

MANIFEST = "manifest.json"
CONFIG = "metadata/config.txt"
SYMBOLIC_MAP = "metadata/symbolic_map.npy"
OBFCHAIN = "metadata/obfchain.txt"
KEYLOG = "metadata/keylog.txt"
TRACKER_STATE = "metadata/tracker_state.bin"

FIXED_TENSORS = ("input_ids", "attention_mask", "position_ids")
COLD = "cold."  # the prefix of every cold-tier tensor name; its files live under cold/
COLD_FIXED_TENSORS = ("cold.input_ids", "cold.position_ids")
# Matched whole (fullmatch): with `$`, `layer.0.key\n` would name the file of `layer.0.key` a second time.
_LAYER_NAME = re.compile(r"(cold\.)?layer\.(0|[1-9][0-9]*)\.(key|value)")
_LAYER_FILE = re.compile(r"(cold/)?past_key_values/(0|[1-9][0-9]*)_(key|value)\.npy")
_MAX_SUFFIX = 10_000


def snapshot_id_base(now: datetime) -> str:
    now = now.astimezone(UTC)
    return f"m{now.month}d{now.day}x{now.hour}x{now.minute}x{now.second}"


def snapshot_id_candidates(now: datetime) -> list[str]:
    """The names a save made at `now` tries in order; the first it can claim is its id."""
    base = snapshot_id_base(now)
    return [base] + [f"{base}_{n}" for n in range(2, _MAX_SUFFIX)]


def check_snapshot_id(snapshot_id: str) -> str:
    """Raises InvalidArgument for anything that is not a snapshot folder name (no paths sneak through)."""
    if not snapshot_ids.is_snapshot_id(snapshot_id):
        raise InvalidArgument(
            f"{snapshot_id!r} is not a snapshot id (expected m<month>d<day>x<hour>x<minute>x<second>)"
        )
    return snapshot_id


def is_snapshot_id(name: str) -> bool:
    return snapshot_ids.is_snapshot_id(name)


def layer_of(name: str) -> tuple[int, str] | None:
    """`layer.3.key` and `cold.layer.3.key` → (3, "key"); None for the fixed tensors."""
    match = _LAYER_NAME.fullmatch(name)
    return (int(match.group(2)), match.group(3)) if match else None


def is_cold(name: str) -> bool:
    """Whether a tensor name belongs to the cold tier."""
    return name.startswith(COLD)


def tensor_file(name: str) -> str:
    """The file that holds a tensor: `input_ids` → `input_ids.npy`, `layer.3.key` → `past_key_values/3_key.npy`,
    `cold.input_ids` → `cold/input_ids.npy`, `cold.layer.3.key` → `cold/past_key_values/3_key.npy`."""
    if name in FIXED_TENSORS or name in COLD_FIXED_TENSORS:
        return f"{name.replace('.', '/')}.npy"
    layer = layer_of(name)
    if layer is None:
        raise InvalidArgument(
            f"unknown tensor name {name!r}: expected input_ids, attention_mask, position_ids, layer.<i>.key|value,"
            " or cold.input_ids, cold.position_ids, cold.layer.<i>.key|value"
        )
    return f"{'cold/' if is_cold(name) else ''}past_key_values/{layer[0]}_{layer[1]}.npy"


def tensor_name(path: str) -> str:
    """The inverse of tensor_file."""
    for name in (*FIXED_TENSORS, *COLD_FIXED_TENSORS):
        if path == f"{name.replace('.', '/')}.npy":
            return name
    match = _LAYER_FILE.fullmatch(path)
    if not match:
        raise ValueError(f"{path!r} is not a tensor file")
    return f"{COLD if match.group(1) else ''}layer.{match.group(2)}.{match.group(3)}"


def tensor_names(num_layers: int, cold: bool = False) -> list[str]:
    """Every tensor a complete snapshot holds, in the order Load streams them: the hot tensors, then (`cold=True`,
    for a snapshot with a cold tier) `cold_tensor_names`."""
    names = list(FIXED_TENSORS)
    for i in range(num_layers):
        names += [f"layer.{i}.key", f"layer.{i}.value"]
    return names + cold_tensor_names(num_layers) if cold else names


def cold_tensor_names(num_layers: int) -> list[str]:
    """The cold tier's tensors, in the order Load streams them (after the hot ones): `cold.input_ids`,
    `cold.position_ids`, then `cold.layer.{i}.key`, `cold.layer.{i}.value` for each layer i."""
    names = list(COLD_FIXED_TENSORS)
    for i in range(num_layers):
        names += [f"{COLD}layer.{i}.key", f"{COLD}layer.{i}.value"]
    return names


@dataclass(slots=True)
class Config:
    """metadata/config.txt: what a loader must match. One `key=value` per line, so a person can read it."""

    model: str
    dtype: str
    cache_impl: str
    tokenizer_fingerprint: str
    num_layers: int
    session_id: str
    snapshot_id: str
    created_at: str
    format_version: int = FORMAT_VERSION

    def to_text(self) -> str:
        lines = [
            f"format_version={self.format_version}",
            f"model={self.model}",
            f"dtype={self.dtype}",
            f"cache_impl={self.cache_impl}",
            f"tokenizer_fingerprint={self.tokenizer_fingerprint}",
            f"num_layers={self.num_layers}",
            f"session_id={self.session_id}",
            f"snapshot_id={self.snapshot_id}",
            f"created_at={self.created_at}",
        ]
        return "\n".join(lines) + "\n"

    @classmethod
    def from_text(cls, text: str) -> Config:
        values: dict[str, str] = {}
        for line in text.splitlines():
            if not line.strip():
                continue
            key, sep, value = line.partition("=")
            if not sep:
                raise DataLoss(f"config.txt: malformed line {line!r}")
            values[key.strip()] = value.strip()
        try:
            return cls(
                format_version=int(values["format_version"]),
                model=values["model"],
                dtype=values["dtype"],
                cache_impl=values["cache_impl"],
                tokenizer_fingerprint=values["tokenizer_fingerprint"],
                num_layers=int(values["num_layers"]),
                session_id=values["session_id"],
                snapshot_id=values["snapshot_id"],
                created_at=values["created_at"],
            )
        except (KeyError, ValueError) as error:
            raise DataLoss(f"config.txt: missing or malformed field {error}") from None


@dataclass(slots=True)
class FileEntry:
    sha256: str  # of the bytes as stored
    size: int  # stored bytes
    plain_size: int  # bytes before encryption


@dataclass(slots=True)
class TensorEntry:
    dtype: str  # the dtype string the saver sent (may be `bfloat16`, stored as raw 2-byte words)
    shape: list[int]


@dataclass(slots=True)
class Manifest:
    """The envelope, written last. `info` is what List shows without decrypting anything."""

    snapshot_id: str
    session_id: str
    created_at: str
    model: str
    dtype: str
    tokens: int
    format_version: int
    encrypted: bool
    key: dict[str, str]  # key_id, master_key_id, wrapped data key (base64) - never a plaintext key
    files: dict[str, FileEntry] = field(default_factory=dict)
    tensors: dict[str, TensorEntry] = field(default_factory=dict)
    mac: str = ""  # HMAC over everything above, keyed by the data key: a tampered manifest is refused

    @property
    def total_bytes(self) -> int:
        return sum(entry.size for entry in self.files.values())

    def body(self) -> dict[str, Any]:
        return {
            "snapshot_id": self.snapshot_id,
            "session_id": self.session_id,
            "created_at": self.created_at,
            "model": self.model,
            "dtype": self.dtype,
            "tokens": self.tokens,
            "format_version": self.format_version,
            "encrypted": self.encrypted,
            "key": dict(sorted(self.key.items())),
            "files": {p: [e.sha256, e.size, e.plain_size] for p, e in sorted(self.files.items())},
            "tensors": {n: [t.dtype, t.shape] for n, t in sorted(self.tensors.items())},
        }

    def canonical(self) -> bytes:
        """The bytes the MAC covers: sorted keys, no whitespace, so that it is stable across writers."""
        return json.dumps(self.body(), sort_keys=True, separators=(",", ":")).encode()

    def to_bytes(self) -> bytes:
        return json.dumps({**self.body(), "mac": self.mac}, sort_keys=True, indent=1).encode()

    @classmethod
    def from_bytes(cls, data: bytes, where: str) -> Manifest:
        try:
            raw = json.loads(data)
            return cls(
                snapshot_id=str(raw["snapshot_id"]),
                session_id=str(raw["session_id"]),
                created_at=str(raw["created_at"]),
                model=str(raw["model"]),
                dtype=str(raw["dtype"]),
                tokens=int(raw["tokens"]),
                format_version=int(raw["format_version"]),
                encrypted=bool(raw["encrypted"]),
                key={str(k): str(v) for k, v in raw["key"].items()},
                files={str(p): FileEntry(str(e[0]), int(e[1]), int(e[2])) for p, e in raw["files"].items()},
                tensors={str(n): TensorEntry(str(t[0]), [int(d) for d in t[1]]) for n, t in raw["tensors"].items()},
                mac=str(raw["mac"]),
            )
        except (ValueError, KeyError, TypeError, IndexError, AttributeError) as error:
            raise DataLoss(f"snapshot {where}: manifest is corrupt ({error.__class__.__name__}: {error})") from None


def now_rfc3339(now: datetime) -> str:
    return now.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
