"""Folder names, file names, config.txt and the manifest: round trips, and bad input refused clearly."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from services.common.errors import DataLoss, InvalidArgument
from services.snapshot import layout


def test_folder_name_is_month_day_hour_minute_second_in_utc() -> None:
    now = datetime(2026, 3, 7, 4, 5, 9, tzinfo=UTC)
    assert layout.snapshot_id_base(now) == "m3d7x4x5x9"
    # The same instant seen from another time zone names the same folder.
    assert layout.snapshot_id_base(now.astimezone(timezone(timedelta(hours=-5)))) == "m3d7x4x5x9"
    assert layout.snapshot_id_candidates(now)[:3] == ["m3d7x4x5x9", "m3d7x4x5x9_2", "m3d7x4x5x9_3"]


def test_every_candidate_is_a_valid_id_and_paths_are_not() -> None:
    now = datetime(2026, 12, 31, 23, 59, 59, tzinfo=UTC)
    for candidate in layout.snapshot_id_candidates(now)[:50]:
        assert layout.check_snapshot_id(candidate) == candidate
    for bad in ["", "../etc", "m12d31x23x59x59/x", "m13d1x0x0x0", "m1d1x24x0x0", "m1d1x0x0x0_1", "m1d1x0x0x07"]:
        assert not layout.is_snapshot_id(bad)
        with pytest.raises(InvalidArgument, match="not a snapshot id"):
            layout.check_snapshot_id(bad)


def test_tensor_files_follow_the_layout_and_round_trip() -> None:
    assert layout.tensor_file("input_ids") == "input_ids.npy"
    assert layout.tensor_file("layer.12.value") == "past_key_values/12_value.npy"
    for name in layout.tensor_names(30):
        assert layout.tensor_name(layout.tensor_file(name)) == name
    assert len(layout.tensor_names(30)) == 3 + 60
    for bad in ["layer.x.key", "layer.1.query", "layer.01.key", "logits", "../input_ids"]:
        with pytest.raises(InvalidArgument, match="unknown tensor name"):
            layout.tensor_file(bad)


def test_cold_tier_files_follow_the_layout_and_stream_after_the_hot_tensors() -> None:
    assert layout.tensor_file("cold.input_ids") == "cold/input_ids.npy"
    assert layout.tensor_file("cold.position_ids") == "cold/position_ids.npy"
    assert layout.tensor_file("cold.layer.12.key") == "cold/past_key_values/12_key.npy"
    assert layout.tensor_file("cold.layer.0.value") == "cold/past_key_values/0_value.npy"
    assert layout.cold_tensor_names(2) == [
        "cold.input_ids",
        "cold.position_ids",
        "cold.layer.0.key",
        "cold.layer.0.value",
        "cold.layer.1.key",
        "cold.layer.1.value",
    ]
    assert layout.tensor_names(2, cold=True) == layout.tensor_names(2) + layout.cold_tensor_names(2)
    assert layout.tensor_names(2, cold=False) == layout.tensor_names(2)
    names = layout.tensor_names(30, cold=True)
    assert len(names) == 3 + 60 + 2 + 60 and len(set(map(layout.tensor_file, names))) == len(names)
    for name in names:
        assert layout.tensor_name(layout.tensor_file(name)) == name
    # Cold layers share the index (and so the head rotation) of the hot layer they came from.
    assert layout.layer_of("cold.layer.7.value") == layout.layer_of("layer.7.value") == (7, "value")
    assert layout.layer_of("cold.input_ids") is None
    assert layout.is_cold("cold.layer.0.key") and not layout.is_cold("layer.0.key")
    for bad in ["cold.attention_mask", "cold.layer.x.key", "cold.layer.01.key", "cold.cold.input_ids", "cold.logits"]:
        with pytest.raises(InvalidArgument, match="unknown tensor name"):
            layout.tensor_file(bad)
    for path in ["cold/attention_mask.npy", "cold/cold/input_ids.npy", "cold/past_key_values/01_key.npy"]:
        with pytest.raises(ValueError, match="not a tensor file"):
            layout.tensor_name(path)


def test_config_round_trips_and_refuses_garbage() -> None:
    config = layout.Config("SmolLM2", "float32", "dynamic", "abc", 30, "sess", "m1d1x0x0x0", "2026-01-01T00:00:00Z")
    text = config.to_text()
    assert "format_version=1\n" in text and "model=SmolLM2\n" in text
    assert layout.Config.from_text(text) == config
    with pytest.raises(DataLoss, match="malformed line"):
        layout.Config.from_text(text + "no equals sign\n")
    with pytest.raises(DataLoss, match="missing or malformed"):
        layout.Config.from_text(text.replace("num_layers=30", "num_layers=many"))


def test_manifest_round_trips_and_its_mac_input_is_canonical() -> None:
    manifest = layout.Manifest("m1d1x0x0x0", "sess", "t", "model", "float32", 5, 1, True, {"key_id": "k"})
    manifest.files["input_ids.npy"] = layout.FileEntry("ab" * 32, 100, 72)
    manifest.tensors["input_ids"] = layout.TensorEntry("<i8", [1, 5])
    manifest.mac = "f" * 64
    again = layout.Manifest.from_bytes(manifest.to_bytes(), "x")
    assert again == manifest
    assert again.canonical() == manifest.canonical()
    assert manifest.total_bytes == 100
    for broken in [b"", b"{", b"[]", manifest.to_bytes().replace(b'"tokens"', b'"tokenz"')]:
        with pytest.raises(DataLoss, match="manifest is corrupt"):
            layout.Manifest.from_bytes(broken, "x")
