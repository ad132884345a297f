"""Object-store backends, chosen by URL scheme: `file:///dir` (default) and `s3://bucket/prefix`.

A backend speaks snapshot folders and bytes; it knows nothing of tensors, keys or manifests. Heavy clients (boto3) are
imported only inside their adapter, so a file-backed service never loads them.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from urllib.parse import urlparse

from services.common.errors import InvalidArgument

# What a backend writes: the store hands over buffers it already holds, without joining or copying them.
Data = bytes | bytearray | memoryview


def check_location(snapshot_id: str, path: str = "") -> None:
    """Refuses any folder or file name that could reach outside the store: a folder is one plain name, a file a
    relative path of plain names. The store only ever passes snapshot ids and layout paths; this is the backstop."""
    if not _plain(snapshot_id):
        raise InvalidArgument(f"snapshot folder {snapshot_id[:80]!r} is not a plain name")
    if path and not all(_plain(part) for part in path.split("/")):
        raise InvalidArgument(f"snapshot file {path[:80]!r} is not a relative path inside its folder")


def _plain(name: str) -> bool:
    return bool(name) and name not in (".", "..") and not any(c in name for c in "/\\\0")


class Backend(abc.ABC):
    kind: str  # the metrics label: file | s3

    @abc.abstractmethod
    def claim(self, snapshot_id: str, content: bytes) -> bool:
        """Atomically creates the folder with its claim marker; False when the name is taken."""

    @abc.abstractmethod
    def write(self, snapshot_id: str, path: str, parts: Sequence[Data]) -> None:
        """Stores the parts' concatenation as one file (parts avoid joining an .npy header and its data)."""

    @abc.abstractmethod
    def remove(self, snapshot_id: str, path: str) -> None:
        """Removes one file; a missing file is not an error."""

    @abc.abstractmethod
    def read(self, snapshot_id: str, path: str) -> bytes:
        """Raises FileNotFoundError when the file is absent."""

    @abc.abstractmethod
    def exists(self, snapshot_id: str, path: str) -> bool: ...

    @abc.abstractmethod
    def list_ids(self) -> list[str]:
        """Every folder, complete or not."""

    @abc.abstractmethod
    def claimed_at(self, snapshot_id: str) -> float | None:
        """Unix time the folder was claimed (or last written, if its claim is gone); None if it does not exist."""

    @abc.abstractmethod
    def delete(self, snapshot_id: str) -> None:
        """Removes the folder and everything in it; a missing folder is not an error."""

    @abc.abstractmethod
    def describe(self) -> str: ...


def open_backend(url: str) -> Backend:
    """`file:///abs/dir` or `s3://bucket/optional/prefix`; anything else is a ValueError naming what is accepted."""
    parsed = urlparse(url)
    if parsed.scheme == "file":
        from services.snapshot.backends.file import FileBackend

        if parsed.netloc not in ("", "localhost") or not parsed.path:
            raise ValueError(f"{url!r}: a file URL needs an absolute path, like file:///var/lib/haloweave/snapshots")
        return FileBackend(parsed.path)
    if parsed.scheme == "s3":
        from services.snapshot.backends.s3 import S3Backend

        if not parsed.netloc:
            raise ValueError(f"{url!r}: an s3 URL needs a bucket, like s3://snapshots/prefix")
        return S3Backend(parsed.netloc, parsed.path.strip("/"))
    raise ValueError(f"{url!r}: unsupported snapshot store (use file:///dir or s3://bucket/prefix)")
