"""One save in progress: tensors are checked, obfuscated, sealed and written as they arrive; the manifest goes last.

Only one tensor is held at a time (plus its sealed copy), so a multi-gigabyte cache never sits in memory whole. Until
`finish` writes the manifest the folder is invisible: List and Load ignore it, and garbage collection removes it if
its save never completes.
"""

from __future__ import annotations

import hashlib
import math
import threading
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait

import numpy as np

from services.common.errors import InvalidArgument
from services.common.tensor_chunks import MAX_DIMS, MAX_TENSOR_BYTES
from services.snapshot import crypto, layout
from services.snapshot.backends import Backend, Data
from services.snapshot.obfuscation import Chain
from services.snapshot.tensors import CACHE_DTYPES, Header, Info, npy_header, numpy_dtype, to_npy_bytes


class SaveSession:
    def __init__(
        self,
        backend: Backend,
        header: Header,
        snapshot_id: str,
        created_at: str,
        master: crypto.MasterKey | None,
        on_close: Callable[[str], None],
    ) -> None:
        self.backend = backend
        self.header = header
        self.snapshot_id = snapshot_id
        self.created_at = created_at
        self.master = master
        self.data_key = crypto.DataKey.new() if master is not None else None
        self.chain = Chain.new(header.obfuscation)
        self._on_close = on_close
        self._closed = False
        # add/finish run in worker threads; abort may come from another thread while one is writing (a cancelled
        # stream). The lock makes abort wait for that write, so nothing is written after the folder is removed.
        self._lock = threading.Lock()
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"save-{snapshot_id}")
        self._pending: deque[Future[tuple[str, layout.FileEntry]]] = deque()
        self.manifest = layout.Manifest(
            snapshot_id=snapshot_id,
            session_id=header.session_id,
            created_at=created_at,
            model=header.model,
            dtype=header.dtype,
            tokens=0,
            format_version=layout.FORMAT_VERSION,
            encrypted=master is not None,
            key={},
        )
        self._layer_dims: tuple[int, int] | None = None  # (batch, tokens), shared by every hot layer tensor
        self._cold_tokens: tuple[int, str] | None = None  # (C, the tensor that set it), shared by every cold tensor

    @property
    def bytes_written(self) -> int:
        return self.manifest.total_bytes

    def add(self, name: str, dtype: str, shape: Sequence[int], data: bytearray) -> None:
        """Takes ownership of `data` (it may be transformed in place)."""
        with self._lock:
            self._check_open()
            self._add(name, dtype, shape, data)

    def _check_open(self) -> None:
        if self._closed:
            raise InvalidArgument(f"save of {self.snapshot_id} is already closed")

    def _add(self, name: str, dtype: str, shape: Sequence[int], data: bytearray) -> None:
        path = layout.tensor_file(name)
        layer = layout.layer_of(name)
        if layer is not None and layer[0] >= self.header.num_layers:
            raise InvalidArgument(f"{name}: the header declares {self.header.num_layers} layers")
        if name in self.manifest.tensors:
            raise InvalidArgument(f"{name} was sent twice")
        np_dtype = numpy_dtype(dtype)
        dims = tuple(int(d) for d in shape)
        if any(d < 0 for d in dims):
            raise InvalidArgument(f"{name}: negative dimension in shape {list(dims)}")
        if len(dims) > MAX_DIMS or math.prod(d for d in dims if d) * np_dtype.itemsize > MAX_TENSOR_BYTES:
            # Even an empty array cannot have a shape whose other dimensions multiply past what numpy addresses.
            raise InvalidArgument(f"{name}: shape {list(dims)} of {dtype} is over the size limit")
        expected = math.prod(dims) * np_dtype.itemsize
        if expected != len(data):
            raise InvalidArgument(f"{name}: shape {list(dims)} of {dtype} needs {expected} bytes, got {len(data)}")
        if layer is not None:
            self._check_layer(name, dtype, dims)
        elif layout.is_cold(name):
            self._check_cold_ids(name, np_dtype, dims)
        array = np.frombuffer(data, dtype=np_dtype).reshape(dims)
        self._store(path, [memoryview(npy_header(array)), *self.chain.apply_parts(name, array)])
        self.manifest.tensors[name] = layout.TensorEntry(dtype, list(dims))
        if name == "input_ids":
            self.manifest.tokens = int(dims[-1]) if dims else 1

    def _check_layer(self, name: str, dtype: str, dims: tuple[int, ...]) -> None:
        if dtype not in CACHE_DTYPES[self.header.dtype]:
            raise InvalidArgument(f"{name} is {dtype}, but the header says the cache is {self.header.dtype}")
        if len(dims) != 4:
            raise InvalidArgument(f"{name}: a layer tensor is (batch, kv_heads, tokens, head_dim), got {list(dims)}")
        if layout.is_cold(name):
            if dims[0] != 1:
                raise InvalidArgument(f"{name}: a cold layer tensor has batch 1, got {list(dims)}")
            self._check_cold_tokens(name, dims[2])
            counterpart = name.removeprefix(layout.COLD)
        else:
            batch_tokens = (dims[0], dims[2])
            if self._layer_dims is None:
                self._layer_dims = batch_tokens
            elif self._layer_dims != batch_tokens:
                raise InvalidArgument(
                    f"{name}: (batch, tokens) {batch_tokens} differs from the other layers' {self._layer_dims}"
                )
            counterpart = layout.COLD + name
        # A cold layer and the hot layer of its index share heads and head size (and so one head rotation).
        other = self.manifest.tensors.get(counterpart)
        if other is not None and (other.shape[1], other.shape[3]) != (dims[1], dims[3]):
            raise InvalidArgument(
                f"{name}: (kv_heads, head_dim) {(dims[1], dims[3])} differs from {counterpart}'s"
                f" {(other.shape[1], other.shape[3])}"
            )

    def _check_cold_ids(self, name: str, np_dtype: np.dtype, dims: tuple[int, ...]) -> None:
        if np_dtype != np.dtype(np.int64):
            raise InvalidArgument(f"{name} is {np_dtype.str}, expected int64")
        if len(dims) != 2 or dims[0] != 1:
            raise InvalidArgument(f"{name}: expected shape [1, cold tokens], got {list(dims)}")
        self._check_cold_tokens(name, dims[1])

    def _check_cold_tokens(self, name: str, tokens: int) -> None:
        """Every cold tensor holds the same C tokens (independent of the hot tokens; 0 is allowed)."""
        if self._cold_tokens is None:
            self._cold_tokens = (tokens, name)
        elif self._cold_tokens[0] != tokens:
            raise InvalidArgument(
                f"{name}: {tokens} cold tokens, but {self._cold_tokens[1]} has {self._cold_tokens[0]}"
                " (every cold tensor holds the same tokens)"
            )

    def _store(self, path: str, parts: Sequence[memoryview]) -> None:
        """Seals a file here and hands it to the writer thread, so that hashing and writing one tensor overlap with
        receiving, obfuscating and sealing the next. At most one write waits, which bounds the memory held."""
        plain_size = sum(len(p) for p in parts)
        stored: Sequence[Data] = parts
        if self.data_key is not None:
            stored = [crypto.encrypt(self.data_key, path, parts)]
        self._drain(limit=1)
        self._pending.append(self._writer.submit(self._write, path, stored, plain_size))

    def _write(self, path: str, stored: Sequence[Data], plain_size: int) -> tuple[str, layout.FileEntry]:
        digest = hashlib.sha256()
        for part in stored:
            digest.update(part)
        self.backend.write(self.snapshot_id, path, stored)
        return path, layout.FileEntry(digest.hexdigest(), sum(len(p) for p in stored), plain_size)

    def _drain(self, limit: int = 0) -> None:
        """Waits until at most `limit` writes are in flight; a failed write raises here."""
        while len(self._pending) > limit:
            path, entry = self._pending.popleft().result()
            self.manifest.files[path] = entry

    def finish(self) -> Info:
        """Checks the snapshot is complete, writes the metadata, then the manifest: from here on it is visible."""
        with self._lock:
            self._check_open()
            return self._finish()

    def _finish(self) -> Info:
        missing = [n for n in layout.tensor_names(self.header.num_layers) if n not in self.manifest.tensors]
        if missing:
            raise InvalidArgument(f"snapshot incomplete: missing {_shown(missing)}")
        cold = layout.cold_tensor_names(self.header.num_layers)
        missing_cold = [n for n in cold if n not in self.manifest.tensors]
        if missing_cold and len(missing_cold) < len(cold):
            raise InvalidArgument(
                f"snapshot incomplete: the cold tier is all of its {len(cold)} tensors or none; missing"
                f" {_shown(missing_cold)}"
            )
        header = self.header
        config = layout.Config(
            model=header.model,
            dtype=header.dtype,
            cache_impl=header.cache_impl,
            tokenizer_fingerprint=header.tokenizer_fingerprint,
            num_layers=header.num_layers,
            session_id=header.session_id,
            snapshot_id=self.snapshot_id,
            created_at=self.created_at,
        )
        cipher = "none"
        if self.master is not None and self.data_key is not None:
            cipher = "AES-256-GCM"
            self.manifest.key = {
                "key_id": self.data_key.key_id,
                "master_key_id": self.master.key_id,
                "wrapped": self.master.wrap(self.data_key, self.snapshot_id),
            }
        data_key_id = self.manifest.key.get("key_id", "-")
        master_key_id = self.manifest.key.get("master_key_id", "-")
        keylog = (
            f"{self.created_at} create snapshot={self.snapshot_id} session={header.session_id} cipher={cipher}"
            f" data_key={data_key_id} master_key={master_key_id}\n"
        )
        metadata = {
            layout.CONFIG: config.to_text().encode(),
            layout.OBFCHAIN: self.chain.to_text().encode(),
            layout.SYMBOLIC_MAP: to_npy_bytes(self.chain.symbolic_map()),
            layout.KEYLOG: keylog.encode(),
            layout.TRACKER_STATE: header.tracker_state,
        }
        for path, content in metadata.items():
            self._store(path, [memoryview(content)])
        self._drain()
        if self.data_key is not None:
            self.manifest.mac = self.data_key.mac(self.manifest.canonical())
        self.backend.write(self.snapshot_id, layout.MANIFEST, [self.manifest.to_bytes()])
        self._close()
        return Info(
            snapshot_id=self.snapshot_id,
            session_id=header.session_id,
            model=header.model,
            dtype=header.dtype,
            tokens=self.manifest.tokens,
            bytes=self.manifest.total_bytes,
            created_at=self.created_at,
        )

    def abort(self) -> None:
        """Removes everything written so far: a failed or cancelled save leaves nothing behind."""
        with self._lock:
            if not self._closed:
                for pending in self._pending:
                    pending.cancel()
                wait(self._pending)  # a write still running would recreate what the delete removes
                self.backend.delete(self.snapshot_id)
                self._close()

    def _close(self) -> None:
        self._closed = True
        self._pending.clear()
        self._writer.shutdown(wait=False)
        self._on_close(self.snapshot_id)


def _shown(names: list[str]) -> str:
    return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
