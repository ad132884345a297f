"""The snapshot service's settings, read from the environment once at start-up."""

from __future__ import annotations

import logging
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from services.common import config
from services.common.model_store import REPO_ROOT
from services.snapshot.crypto import parse_master_key

log = logging.getLogger(__name__)

MASTER_KEY_VAR = "HALOWEAVE_SNAPSHOT_MASTER_KEY"


@dataclass(frozen=True, slots=True)
class SnapshotConfig:
    url: str  # file:///dir or s3://bucket/prefix
    listen: str
    metrics_port: int  # 0: no metrics endpoint
    master_key: bytes = field(repr=False)  # never printed: a logged or dumped config must not carry it
    gc_grace_s: float  # an incomplete folder older than this is an orphan
    gc_interval_s: float  # 0: collect only at start-up

    @classmethod
    def from_env(cls) -> SnapshotConfig:
        url = config.get("HALOWEAVE_SNAPSHOT_URL", (REPO_ROOT / ".state" / "snapshots").as_uri())
        return cls(
            url=url,
            listen=config.get("HALOWEAVE_SNAPSHOT_LISTEN", "127.0.0.1:50052"),
            metrics_port=config.get_int("HALOWEAVE_SNAPSHOT_METRICS_PORT", 9102),
            master_key=master_key_from_env(url),
            gc_grace_s=config.get_float("HALOWEAVE_SNAPSHOT_GC_GRACE_S", 3600.0),
            gc_interval_s=config.get_float("HALOWEAVE_SNAPSHOT_GC_INTERVAL_S", 600.0),
        )


def master_key_from_env(url: str) -> bytes:
    """The configured key; for a local directory with none configured, a development key kept beside it."""
    raw = os.environ.get(MASTER_KEY_VAR)
    if raw:
        try:
            return parse_master_key(raw)
        except ValueError as error:
            raise config.ConfigError(f"{MASTER_KEY_VAR}: {error}") from None
    parsed = urlparse(url)
    if parsed.scheme != "file":
        raise config.ConfigError(f"{MASTER_KEY_VAR} is not set (required for {parsed.scheme}:// stores)")
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
