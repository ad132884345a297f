"""Start-up settings: the master key from the environment, or a development key kept beside a local store."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from services.common.config import ConfigError
from services.snapshot.config import MASTER_KEY_VAR, SnapshotConfig, master_key_from_env


def test_a_local_store_without_a_key_gets_one_development_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv(MASTER_KEY_VAR, raising=False)
    url = (tmp_path / "snapshots").as_uri()
    first = master_key_from_env(url)
    key_file = tmp_path / "snapshots.master-key"
    assert len(first) == 32 and key_file.exists()
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert "generated a development master key" in caplog.text
    assert master_key_from_env(url) == first  # kept, not regenerated


def test_configured_keys_and_refusals(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(MASTER_KEY_VAR, "ab" * 32)
    assert master_key_from_env("s3://bucket/prefix") == bytes.fromhex("ab" * 32)
    monkeypatch.setenv(MASTER_KEY_VAR, "too-short")
    with pytest.raises(ConfigError, match="32 bytes"):
        master_key_from_env((tmp_path / "s").as_uri())
    monkeypatch.delenv(MASTER_KEY_VAR)
    with pytest.raises(ConfigError, match=f"{MASTER_KEY_VAR} is not set"):
        master_key_from_env("s3://bucket/prefix")


def test_settings_come_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HALOWEAVE_SNAPSHOT_URL", (tmp_path / "s").as_uri())
    monkeypatch.setenv("HALOWEAVE_SNAPSHOT_LISTEN", "127.0.0.1:1234")
    monkeypatch.setenv("HALOWEAVE_SNAPSHOT_METRICS_PORT", "0")
    monkeypatch.setenv("HALOWEAVE_SNAPSHOT_GC_GRACE_S", "5")
    monkeypatch.setenv(MASTER_KEY_VAR, "cd" * 32)
    cfg = SnapshotConfig.from_env()
    assert (cfg.listen, cfg.metrics_port, cfg.gc_grace_s, cfg.gc_interval_s) == ("127.0.0.1:1234", 0, 5.0, 600.0)
    monkeypatch.setenv("HALOWEAVE_SNAPSHOT_GC_GRACE_S", "soon")
    with pytest.raises(ConfigError, match="not a number"):
        SnapshotConfig.from_env()


def test_neither_the_settings_nor_a_refusal_print_the_master_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = "5c" * 32
    monkeypatch.setenv(MASTER_KEY_VAR, key)
    monkeypatch.setenv("HALOWEAVE_SNAPSHOT_URL", (tmp_path / "s").as_uri())
    settings = SnapshotConfig.from_env()
    assert settings.master_key == bytes.fromhex(key)
    assert key not in repr(settings) and repr(bytes.fromhex(key)) not in repr(settings)
    almost = key[:-2]  # one byte short: refused, and the message does not echo what was given
    monkeypatch.setenv(MASTER_KEY_VAR, almost)
    with pytest.raises(ConfigError) as refused:
        SnapshotConfig.from_env()
    assert almost not in str(refused.value)
