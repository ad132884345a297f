"""Fixtures for the snapshot tests: stores on a temporary directory and on a real SeaweedFS S3 server."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack.seaweed import SeaweedS3
from services.snapshot.backends.file import FileBackend
from services.snapshot.store import SnapshotStore
from tests.snapshot.support import new_master


@pytest.fixture
def file_store(tmp_path: Path) -> SnapshotStore:
    return SnapshotStore(FileBackend(tmp_path / "snapshots"), new_master())


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    """One real S3 server (SeaweedFS) for the test session, credentials enforced; stopped by its own pid."""
    with SeaweedS3(tmp_path_factory.mktemp("seaweedfs")) as server:
        yield server


@pytest.fixture
def s3_bucket(seaweed: SeaweedS3, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh bucket per test, with this process's S3 settings pointing at the server."""
    for name, value in seaweed.env().items():
        monkeypatch.setenv(name, value)
    bucket = "snap-" + secrets.token_hex(6)
    seaweed.create_bucket(bucket)
    return bucket
