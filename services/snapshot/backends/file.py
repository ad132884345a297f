"""A local directory as the object store: one sub-directory per snapshot.

Claiming a name is `mkdir`, which the kernel makes exclusive, so concurrent saves (threads or processes, on one host
or over a POSIX shared file system) never share a folder. Files are written to a temporary name and renamed, so a
reader never sees half a file. Data is not fsynced: after a power loss a manifest may name files whose bytes were
lost, and those fail their checksums on load (refused, never silently wrong).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from services.snapshot.backends import Backend, Data, check_location

_CLAIM = ".claim"


class FileBackend(Backend):
    kind = "file"

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def _folder(self, snapshot_id: str) -> Path:
        check_location(snapshot_id)
        return self.root / snapshot_id

    def _file(self, snapshot_id: str, path: str) -> Path:
        check_location(snapshot_id, path)
        return self.root / snapshot_id / path

    def claim(self, snapshot_id: str, content: bytes) -> bool:
        try:
            self._folder(snapshot_id).mkdir()
        except FileExistsError:
            return False
        self.write(snapshot_id, _CLAIM, [content])
        return True

    def write(self, snapshot_id: str, path: str, parts: Sequence[Data]) -> None:
        target = self._file(snapshot_id, path)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".partial")
        with open(partial, "wb") as out:
            out.writelines(parts)
        os.replace(partial, target)

    def remove(self, snapshot_id: str, path: str) -> None:
        self._file(snapshot_id, path).unlink(missing_ok=True)

    def read(self, snapshot_id: str, path: str) -> bytes:
        return self._file(snapshot_id, path).read_bytes()

    def exists(self, snapshot_id: str, path: str) -> bool:
        return self._file(snapshot_id, path).is_file()

    def list_ids(self) -> list[str]:
        return [entry.name for entry in self.root.iterdir() if entry.is_dir()]

    def claimed_at(self, snapshot_id: str) -> float | None:
        for candidate in (self._folder(snapshot_id) / _CLAIM, self._folder(snapshot_id)):
            try:
                return candidate.stat().st_mtime
            except FileNotFoundError:
                continue
        return None

    def delete(self, snapshot_id: str) -> None:
        shutil.rmtree(self._folder(snapshot_id), ignore_errors=True)

    def describe(self) -> str:
        return f"file://{self.root}"
