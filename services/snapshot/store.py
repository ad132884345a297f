"""The snapshot store: save, load, list, delete and garbage collection over one backend.

Visibility is the manifest: it is written last, so a snapshot is listed and loadable only once complete, and a save
that crashes leaves a folder without one, which `collect_garbage` removes once it is older than the grace period
(other replicas may still be writing younger ones; this process's own saves in flight are always spared).

Load checks everything before returning anything: the manifest's MAC, the owner, the format version, model, dtype
and tokenizer fingerprint, then every file's size and every segment's GCM tag (the sha256 for plaintext stores).
Only then are the tensors returned, so a caller never sees part of a bad snapshot. They come in `layout.tensor_names`
order: the hot tensors, then the cold tier's when the snapshot has one (all of it: a partial cold tier is DataLoss).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import numpy as np

from services.common.errors import DataLoss, FailedPrecondition, InvalidArgument, NotFound, PermissionDenied
from services.snapshot import crypto, layout
from services.snapshot.backends import Backend
from services.snapshot.obfuscation import Chain
from services.snapshot.saving import SaveSession
from services.snapshot.tensors import Header, Info, Loaded, Tensor, from_npy, numpy_dtype

log = logging.getLogger(__name__)

_METADATA = (layout.CONFIG, layout.OBFCHAIN, layout.SYMBOLIC_MAP, layout.KEYLOG, layout.TRACKER_STATE)


class SnapshotStore:
    def __init__(
        self,
        backend: Backend,
        master: crypto.MasterKey | None,
        gc_grace_s: float = 3600.0,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        """`master=None` stores plaintext (integrity by sha256 only); the service always passes a key."""
        self.backend = backend
        self.master = master
        self.gc_grace_s = gc_grace_s
        self.clock = clock
        self._active: set[str] = set()
        self._lock = threading.Lock()

    # -- save ---------------------------------------------------------------------------------------------------

    def begin(self, header: Header) -> SaveSession:
        """Claims a unique folder name for a new save (the first free of m..x..x..x.., _2, _3, ...)."""
        header.validate()
        Chain.new(header.obfuscation)  # refuse an unknown step before anything is written
        now = self.clock()
        created_at = layout.now_rfc3339(now)
        claim = f"session={header.session_id} claimed_at={created_at}\n".encode()
        for candidate in layout.snapshot_id_candidates(now):
            if self.backend.claim(candidate, claim):
                with self._lock:
                    self._active.add(candidate)
                return SaveSession(self.backend, header, candidate, created_at, self.master, self._release)
        raise FailedPrecondition(f"no free snapshot name for {layout.snapshot_id_base(now)}")

    def _release(self, snapshot_id: str) -> None:
        with self._lock:
            self._active.discard(snapshot_id)

    # -- load ---------------------------------------------------------------------------------------------------

    def _manifest(self, snapshot_id: str) -> layout.Manifest:
        layout.check_snapshot_id(snapshot_id)
        try:
            raw = self.backend.read(snapshot_id, layout.MANIFEST)
        except FileNotFoundError:
            raise NotFound(f"no snapshot {snapshot_id}") from None
        manifest = layout.Manifest.from_bytes(raw, snapshot_id)
        if manifest.snapshot_id != snapshot_id:
            raise DataLoss(f"snapshot {snapshot_id}: its manifest names {manifest.snapshot_id} (moved or tampered)")
        return manifest

    def _data_key(self, manifest: layout.Manifest) -> crypto.DataKey | None:
        """Authenticates the manifest; returns the key that opens its files (None for a plaintext store)."""
        sid = manifest.snapshot_id
        if manifest.format_version != layout.FORMAT_VERSION:
            raise FailedPrecondition(
                f"snapshot {sid} has format version {manifest.format_version};"
                f" this service reads version {layout.FORMAT_VERSION}"
            )
        if self.master is None:
            if manifest.encrypted:
                raise FailedPrecondition(f"snapshot {sid} is encrypted and this store has no master key")
            return None
        if not manifest.encrypted:
            raise DataLoss(f"snapshot {sid} is not encrypted; this store only loads encrypted snapshots")
        try:
            key = self.master.unwrap(
                manifest.key["wrapped"], manifest.key["key_id"], manifest.key["master_key_id"], sid
            )
        except KeyError as missing:
            raise DataLoss(f"snapshot {sid}: manifest lacks key field {missing}") from None
        if not hmac.compare_digest(key.mac(manifest.canonical()), manifest.mac):
            raise DataLoss(f"snapshot {sid}: manifest fails authentication (tampered)")
        return key

    def _read_file(self, manifest: layout.Manifest, key: crypto.DataKey | None, path: str) -> bytearray:
        sid = manifest.snapshot_id
        entry = manifest.files.get(path)
        if entry is None:
            raise DataLoss(f"snapshot {sid}: manifest does not list {path}")
        try:
            stored = self.backend.read(sid, path)
        except FileNotFoundError:
            raise DataLoss(f"snapshot {sid}: {path} is missing") from None
        if len(stored) != entry.size:
            raise DataLoss(f"snapshot {sid}: {path} has {len(stored)} bytes, its manifest says {entry.size}")
        if key is None:
            # Plaintext: the manifest's sha256 is the only integrity check there is.
            if hashlib.sha256(stored).hexdigest() != entry.sha256:
                raise DataLoss(f"snapshot {sid}: {path} does not match its checksum (corrupt or tampered)")
            return bytearray(stored)
        # Encrypted: every segment's GCM tag authenticates its bytes, its file and its place, under a key bound to
        # this snapshot, so hashing the whole file again would only repeat that check at a second full pass.
        return crypto.decrypt(key, path, stored, entry.plain_size, sid)

    def load(self, session_id: str, snapshot_id: str, model: str, dtype: str, tokenizer_fingerprint: str) -> Loaded:
        for field_name, value in (("model", model), ("dtype", dtype), ("tokenizer_fingerprint", tokenizer_fingerprint)):
            if not value:
                raise InvalidArgument(
                    f"load: {field_name} of the loader is required (it is checked against the snapshot)"
                )
        manifest = self._manifest(snapshot_id)
        key = self._data_key(manifest)
        if manifest.session_id != session_id:
            raise PermissionDenied(f"snapshot {snapshot_id} belongs to another session")
        config = layout.Config.from_text(self._read_file(manifest, key, layout.CONFIG).decode(errors="replace"))
        if (config.snapshot_id, config.session_id, config.model, config.dtype) != (
            snapshot_id,
            manifest.session_id,
            manifest.model,
            manifest.dtype,
        ):
            raise DataLoss(f"snapshot {snapshot_id}: config.txt disagrees with the manifest")
        _check_compatible(config, model, dtype, tokenizer_fingerprint)
        # The cold tier is optional but whole: any of its tensors or files listed means all of them must be.
        cold = layout.cold_tensor_names(config.num_layers)
        has_cold = any(n in manifest.tensors or layout.tensor_file(n) in manifest.files for n in cold)
        names = layout.tensor_names(config.num_layers, cold=has_cold)
        expected = {*_METADATA, *(layout.tensor_file(n) for n in names)}
        if set(manifest.files) != expected or set(manifest.tensors) != set(names):
            missing = sorted((expected - set(manifest.files)) | (set(names) - set(manifest.tensors)))
            unexpected = sorted((set(manifest.files) - expected) | (set(manifest.tensors) - set(names)))
            detail = "; ".join(
                f"{what} {', '.join(items[:5])}{f' and {len(items) - 5} more' if len(items) > 5 else ''}"
                for what, items in (("missing", missing), ("unexpected", unexpected))
                if items
            )
            raise DataLoss(
                f"snapshot {snapshot_id}: the manifest does not list the files of a complete snapshot ({detail})"
            )
        symbolic_map = from_npy(self._read_file(manifest, key, layout.SYMBOLIC_MAP), layout.SYMBOLIC_MAP)
        chain = Chain.from_text(self._read_file(manifest, key, layout.OBFCHAIN).decode(errors="replace"), symbolic_map)
        tracker_state = bytes(self._read_file(manifest, key, layout.TRACKER_STATE))
        self._read_file(manifest, key, layout.KEYLOG)  # audited like every file, though nothing in it is needed
        # Two threads: reading, decrypting and un-obfuscating release the GIL, so files are processed side by side.
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="load") as pool:
            tensors = list(pool.map(lambda name: self._read_tensor(manifest, key, chain, name), names))
        header = Header(
            session_id=manifest.session_id,
            model=config.model,
            dtype=config.dtype,
            cache_impl=config.cache_impl,
            tokenizer_fingerprint=config.tokenizer_fingerprint,
            num_layers=config.num_layers,
            tracker_state=tracker_state,
            obfuscation=chain.kinds,
        )
        return Loaded(header, _info(manifest), tensors)

    def _read_tensor(self, manifest: layout.Manifest, key: crypto.DataKey | None, chain: Chain, name: str) -> Tensor:
        path = layout.tensor_file(name)
        entry = manifest.tensors[name]
        where = f"snapshot {manifest.snapshot_id}: {path}"
        array = from_npy(self._read_file(manifest, key, path), where)
        try:
            np_dtype = numpy_dtype(entry.dtype)
        except InvalidArgument:
            raise DataLoss(f"{where}: unknown dtype {entry.dtype!r} in the manifest") from None
        if array.dtype != np_dtype or list(array.shape) != entry.shape:
            raise DataLoss(
                f"{where}: holds {array.dtype.str} {list(array.shape)}, the manifest says {entry.dtype} {entry.shape}"
            )
        array = np.ascontiguousarray(chain.undo(name, array))
        return Tensor(name, entry.dtype, tuple(entry.shape), array)

    # -- list, delete, garbage collection ------------------------------------------------------------------------

    def list_session(self, session_id: str) -> list[Info]:
        """The session's complete snapshots, newest first (unreadable manifests are skipped and logged)."""
        if not session_id:
            raise InvalidArgument("list: session_id is required")
        found = []
        for snapshot_id in self.backend.list_ids():
            if not layout.is_snapshot_id(snapshot_id):
                continue
            try:
                manifest = self._manifest(snapshot_id)
            except NotFound:
                continue  # still being written, or abandoned
            except DataLoss as error:
                log.warning("skipping %s in listing: %s", snapshot_id, error.message)
                continue
            if manifest.session_id == session_id:
                found.append(_info(manifest))
        return sorted(found, key=lambda info: (info.created_at, info.snapshot_id), reverse=True)

    def delete(self, session_id: str, snapshot_id: str) -> None:
        """Owner only. The manifest goes first, so the snapshot vanishes at once even if the rest takes a while."""
        manifest = self._manifest(snapshot_id)
        if manifest.session_id != session_id:
            raise PermissionDenied(f"snapshot {snapshot_id} belongs to another session")
        self.backend.remove(snapshot_id, layout.MANIFEST)
        self.backend.delete(snapshot_id)

    def collect_garbage(self, grace_s: float | None = None) -> list[str]:
        """Removes folders without a manifest claimed more than `grace_s` ago; returns their names."""
        grace = self.gc_grace_s if grace_s is None else grace_s
        cutoff = time.time() - grace
        collected = []
        for snapshot_id in self.backend.list_ids():
            with self._lock:
                if snapshot_id in self._active:
                    continue
            if not layout.is_snapshot_id(snapshot_id) or self.backend.exists(snapshot_id, layout.MANIFEST):
                continue
            claimed = self.backend.claimed_at(snapshot_id)
            if claimed is not None and claimed <= cutoff:
                self.backend.delete(snapshot_id)
                collected.append(snapshot_id)
        if collected:
            log.info("collected %d incomplete snapshot folder(s): %s", len(collected), ", ".join(collected))
        return collected


def _check_compatible(config: layout.Config, model: str, dtype: str, fingerprint: str) -> None:
    problems = []
    if config.model != model:
        problems.append(f"model {config.model!r} (loader runs {model!r})")
    if config.dtype != dtype:
        problems.append(f"dtype {config.dtype} (loader uses {dtype})")
    if config.tokenizer_fingerprint != fingerprint:
        problems.append(f"tokenizer {config.tokenizer_fingerprint} (loader has {fingerprint})")
    if problems:
        raise FailedPrecondition(
            f"snapshot {config.snapshot_id} does not fit this worker: it has " + "; ".join(problems)
        )


def _info(manifest: layout.Manifest) -> Info:
    return Info(
        snapshot_id=manifest.snapshot_id,
        session_id=manifest.session_id,
        model=manifest.model,
        dtype=manifest.dtype,
        tokens=manifest.tokens,
        bytes=manifest.total_bytes,
        created_at=manifest.created_at,
    )
