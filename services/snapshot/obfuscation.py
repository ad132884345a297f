"""The obfuscation chain: reversible, seeded transforms of a snapshot's tensors (DESIGN.md section 5).

This is not security (authenticated encryption is, see crypto.py): it makes the stored tensors useless to a reader that
does not know the chain, and it is bit-exact to undo. Steps, in any order and any number of times:

- `rotate_heads`: permutes the KV heads (axis 1) of every layer tensor; one permutation per layer, shared by its key and
  value, so a layer's heads stay paired. A cold-tier layer (`cold.layer.{i}.key|value`) gets the permutation of hot
  layer i.
- `xor_mask`: XORs the raw bytes of every tensor but `input_ids` (so the cold tier's, `cold.input_ids` included) with a
  mask drawn from the step's seed and the tensor's name, so that no two tensors share a mask. The 64 KiB mask repeats
  over the tensor; done in place with numpy it costs little next to encryption. `input_ids` are left to `remap_ids`,
  so that a remap after a mask still sees token ids.
- `remap_ids`: replaces every token id in `input_ids` by its image under a seeded permutation of [0, max id]; the
  permutations are kept, one row per step, in `metadata/symbolic_map.npy`. Only the hot `input_ids`: the permutation
  is built from them (its range is their largest id, fixed when they arrive), so a pruned token's id in
  `cold.input_ids` may lie outside it, or arrive before it exists; `xor_mask` covers those ids instead.

Each step works on one tensor at a time, so a save transforms each tensor as it arrives; the chain is logged, in order,
in `metadata/obfchain.txt` and undone in reverse on load.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

import numpy as np

from services.common.errors import DataLoss, InvalidArgument
from services.snapshot.layout import layer_of

STEPS = ("rotate_heads", "xor_mask", "remap_ids")
# remap_ids stores a permutation as wide as the largest id; real vocabularies stay far below this.
MAX_REMAP_IDS = 1 << 22
_MASK_BYTES = 64 * 1024


def _rng(seed: int, *salt: int | str) -> np.random.Generator:
    words = [seed] + [int.from_bytes(s.encode(), "little") if isinstance(s, str) else s for s in salt]
    return np.random.default_rng(np.random.SeedSequence(words))


def _xor_in_place(array: np.ndarray, mask: np.ndarray) -> None:
    raw = array.reshape(-1).view(np.uint8)
    full = raw.size - raw.size % mask.size
    if full:
        block = raw[:full].reshape(-1, mask.size)
        np.bitwise_xor(block, mask, out=block)
    if raw.size > full:
        np.bitwise_xor(raw[full:], mask[: raw.size - full], out=raw[full:])


@dataclass(slots=True)
class Step:
    kind: str
    seed: int
    # remap_ids only: forward[i] is the stored id of token id i (a permutation of [0, len(forward))).
    forward: np.ndarray | None = None

    def apply(self, name: str, array: np.ndarray) -> np.ndarray:
        """Returns the transformed tensor; may reuse `array`'s memory (the caller hands it over)."""
        if self.kind == "rotate_heads":
            layer = layer_of(name)
            if layer is None:
                return array
            perm = self.head_permutation(layer[0], array.shape[1])
            return np.ascontiguousarray(array[:, perm])
        if self.kind == "xor_mask":
            if name == "input_ids":
                return array
            array = _writable(array)
            _xor_in_place(array, self._mask(name))
            return array
        if name != "input_ids":
            return array
        forward = self._forward_for(array)
        return forward[array].astype(array.dtype, copy=False)

    def undo(self, name: str, array: np.ndarray) -> np.ndarray:
        if self.kind == "rotate_heads":
            layer = layer_of(name)
            if layer is None:
                return array
            perm = self.head_permutation(layer[0], array.shape[1])
            return np.ascontiguousarray(array[:, np.argsort(perm)])
        if self.kind == "xor_mask":
            if name == "input_ids":
                return array
            array = _writable(array)
            _xor_in_place(array, self._mask(name))
            return array
        if name != "input_ids":
            return array
        if self.forward is None:
            raise DataLoss("obfuscation chain: remap_ids has no symbolic map")
        if array.size and (array.min() < 0 or array.max() >= self.forward.size):
            raise DataLoss("obfuscation chain: input_ids fall outside the symbolic map")
        inverse = np.empty_like(self.forward)
        inverse[self.forward] = np.arange(self.forward.size, dtype=self.forward.dtype)
        return inverse[array].astype(array.dtype, copy=False)

    def head_permutation(self, layer: int, heads: int) -> np.ndarray:
        return _rng(self.seed, layer).permutation(heads)

    def _mask(self, name: str) -> np.ndarray:
        return np.frombuffer(_rng(self.seed, name).bytes(_MASK_BYTES), dtype=np.uint8)

    def _forward_for(self, ids: np.ndarray) -> np.ndarray:
        if self.forward is None or (ids.size and ids.max() >= self.forward.size):
            raise InvalidArgument("remap_ids: input_ids do not fit the symbolic map prepared for them")
        return self.forward

    def prepare(self, size: int) -> None:
        self.forward = _rng(self.seed, "remap_ids").permutation(size).astype(np.int64)


def _writable(array: np.ndarray) -> np.ndarray:
    return array if array.flags.writeable and array.flags.c_contiguous else np.array(array, order="C")


@dataclass(slots=True)
class Chain:
    steps: list[Step] = field(default_factory=list)

    @classmethod
    def new(cls, kinds: list[str]) -> Chain:
        """A fresh chain with random seeds; unknown step names are refused."""
        for kind in kinds:
            if kind not in STEPS:
                raise InvalidArgument(f"unknown obfuscation step {kind!r}: expected one of {', '.join(STEPS)}")
        return cls([Step(kind, secrets.randbits(63)) for kind in kinds])

    @property
    def kinds(self) -> list[str]:
        return [step.kind for step in self.steps]

    def apply(self, name: str, array: np.ndarray) -> np.ndarray:
        if name == "input_ids":
            self._prepare_remaps(array)
        for step in self.steps:
            array = step.apply(name, array)
        return array

    def apply_parts(self, name: str, array: np.ndarray) -> list[memoryview]:
        """The same bytes as `apply(...)` gives, as views in stored order, without materialising head rotations.

        A save's hot path: rotations only reorder (batch, head) blocks, so they are tracked as an order over the
        blocks of the received buffer, and a mask is XORed in place at the offset each block will be stored at.
        """
        if name == "input_ids":
            self._prepare_remaps(array)
        layer = layer_of(name)
        order: np.ndarray | None = None  # stored block i is block order[i] of `array` (layer tensors only)
        for step in self.steps:
            if step.kind == "rotate_heads" and layer is not None:
                batch, heads = array.shape[:2]
                current = (
                    order.reshape(batch, heads) if order is not None else np.arange(batch * heads).reshape(batch, heads)
                )
                order = current[:, step.head_permutation(layer[0], heads)].reshape(-1)
            elif step.kind == "xor_mask" and order is not None:
                array = _writable(array)
                blocks = array.reshape(len(order), -1).view(np.uint8)
                mask = step._mask(name)
                for position, source in enumerate(order):
                    offset = position * blocks.shape[1]
                    _xor_in_place(blocks[source], np.roll(mask, -(offset % mask.size)))
            else:
                array = step.apply(name, array)
        if order is None:
            return [array.reshape(-1).view(np.uint8).data]
        blocks = np.ascontiguousarray(array).reshape(len(order), -1).view(np.uint8)
        return [blocks[source].data for source in order]

    def _prepare_remaps(self, ids: np.ndarray) -> None:
        """Every remap step permutes the same range, [0, max original id], so remapped ids stay inside it."""
        remaps = [step for step in self.steps if step.kind == "remap_ids"]
        if not remaps:
            return
        if ids.dtype.kind not in "iu":
            raise InvalidArgument(f"remap_ids needs integer input_ids, got dtype {ids.dtype.str}")
        if ids.size and ids.min() < 0:
            raise InvalidArgument("remap_ids needs non-negative input_ids")
        size = int(ids.max()) + 1 if ids.size else 1
        if size > MAX_REMAP_IDS:
            raise InvalidArgument(
                f"remap_ids: token id {size - 1} is beyond the supported vocabulary ({MAX_REMAP_IDS})"
            )
        for step in remaps:
            step.prepare(size)

    def undo(self, name: str, array: np.ndarray) -> np.ndarray:
        for step in reversed(self.steps):
            array = step.undo(name, array)
        return array

    def to_text(self) -> str:
        """obfchain.txt: one `<order> <step> seed=<n>` line per step, in the order they were applied."""
        return "".join(f"{i} {step.kind} seed={step.seed}\n" for i, step in enumerate(self.steps))

    def symbolic_map(self) -> np.ndarray:
        """One row per remap_ids step (all rows share a width: each maps [0, max id of the original ids])."""
        rows = [step.forward for step in self.steps if step.kind == "remap_ids"]
        if not rows:
            return np.zeros((0, 0), dtype=np.int64)
        if any(row is None for row in rows):
            raise InvalidArgument("remap_ids was requested but no input_ids were sent")
        return np.stack([row for row in rows if row is not None])

    @classmethod
    def from_text(cls, text: str, symbolic_map: np.ndarray) -> Chain:
        steps: list[Step] = []
        try:
            for i, line in enumerate(text.splitlines()):
                order, kind, seed = line.split(" ")
                if int(order) != i or kind not in STEPS or not seed.startswith("seed="):
                    raise ValueError(line)
                steps.append(Step(kind, int(seed.removeprefix("seed="))))
        except ValueError as error:
            raise DataLoss(f"obfchain.txt is malformed at {error}") from None
        remaps = [step for step in steps if step.kind == "remap_ids"]
        if symbolic_map.ndim != 2 or symbolic_map.shape[0] != len(remaps):
            raise DataLoss(f"symbolic_map.npy has shape {symbolic_map.shape}, the chain has {len(remaps)} remap_ids")
        for step, row in zip(remaps, symbolic_map, strict=True):
            if not np.array_equal(np.sort(row), np.arange(row.size)):
                raise DataLoss("symbolic_map.npy is not a permutation")
            step.forward = np.ascontiguousarray(row, dtype=np.int64)
        return cls(steps)
