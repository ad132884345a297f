"""The snapshot service's settings, read from the environment once at start-up."""

from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path
from urllib.parse import urlparse

from pydantic import Field, field_validator, model_validator

from services.common import config
from services.common.model_store import REPO_ROOT
from services.snapshot.crypto import parse_master_key

log = logging.getLogger(__name__)

MASTER_KEY_VAR = "HALOWEAVE_SNAPSHOT_MASTER_KEY"


class SnapshotConfig(config.EnvSettings):
    url: str = Field(
        default_factory=lambda: (REPO_ROOT / ".state" / "snapshots").as_uri(),
        validation_alias="HALOWEAVE_SNAPSHOT_URL",
        min_length=1,
        description="The object store: `file:///dir` or `s3://bucket/prefix` (a missing bucket is created; S3: see"
        " `HALOWEAVE_S3_ENDPOINT`).",
        json_schema_extra={"shown_default": "`file://` + `.state/snapshots` in the repository"},
    )
    listen: str = Field(
        default="127.0.0.1:50052",
        validation_alias="HALOWEAVE_SNAPSHOT_LISTEN",
        min_length=1,
        description="gRPC `host:port`.",
    )
    metrics_port: int = Field(
        default=9102,
        validation_alias="HALOWEAVE_SNAPSHOT_METRICS_PORT",
        ge=0,
        le=65535,
        description="Port of the snapshot service's HTTP `/metrics`; 0: none.",
    )
    # Never printed: a logged or dumped config must not carry it.
    master_key: bytes = config.secret(
        MASTER_KEY_VAR,
        "The key that encrypts snapshots at rest: 32 bytes as 64 hex digits or base64. Required for `s3://`;"
        " for a local directory without one, a development key is generated beside it (`<dir>.master-key`).",
        default=b"",
        shown_default="generated for `file://` stores",
    )
    gc_grace_s: float = Field(
        default=3600.0,
        validation_alias="HALOWEAVE_SNAPSHOT_GC_GRACE_S",
        ge=0,
        description="Seconds after which an incomplete snapshot folder counts as an orphan and is collected.",
    )
    gc_interval_s: float = Field(
        default=600.0,
        validation_alias="HALOWEAVE_SNAPSHOT_GC_INTERVAL_S",
        ge=0,
        description="Seconds between collections of orphans; 0: only at start-up.",
    )

    @field_validator("master_key", mode="before")
    @classmethod
    def _parse_key(cls, value: object) -> object:
        if isinstance(value, bytes):  # given by keyword, already the key's bytes
            return value
        return parse_master_key(str(value))  # its ValueError says what is expected, never what was given

    @model_validator(mode="after")
    def _key_for_the_store(self) -> SnapshotConfig:
        if not self.master_key:
            # Frozen model: the resolved key is set once, here, while the model is being built.
            object.__setattr__(self, "master_key", development_key(self.url))
        return self

    @classmethod
    def from_env(cls) -> SnapshotConfig:
        return cls()


def master_key_from_env(url: str) -> bytes:
    """The configured key; for a local directory with none configured, a development key kept beside it."""
    return SnapshotConfig(url=url).master_key


def development_key(url: str) -> bytes:
    """The key kept beside a local store, generated on first use; other stores must be given one."""
    parsed = urlparse(url)
    if parsed.scheme != "file":
        raise ValueError(f"{MASTER_KEY_VAR} is not set (required for {parsed.scheme}:// stores)")
    directory = Path(parsed.path)
    key_file = directory.parent / f"{directory.name}.master-key"
    if key_file.exists():
        return parse_master_key(key_file.read_text())
    key_file.parent.mkdir(parents=True, exist_ok=True)
    # O_EXCL: two services starting at once cannot write two different keys.
    try:
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return parse_master_key(key_file.read_text())
    with os.fdopen(fd, "w") as out:
        out.write(secrets.token_hex(32) + "\n")
    log.warning(
        "%s is not set: generated a development master key in %s (set it in production)", MASTER_KEY_VAR, key_file
    )
    return parse_master_key(key_file.read_text())
