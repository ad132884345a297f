"""Encryption at rest: round trips over segment boundaries; any changed, moved or missing byte is refused."""

from __future__ import annotations

import base64
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.common.errors import DataLoss
from services.snapshot import crypto


@pytest.fixture
def small_segments(monkeypatch: pytest.MonkeyPatch) -> int:
    """Tiny segments, so that small inputs exercise many segments and every boundary case."""
    monkeypatch.setattr(crypto, "SEGMENT_BYTES", 16)
    return 16


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(parts=st.lists(st.binary(max_size=70), max_size=4))
def test_round_trip_over_parts_and_segment_boundaries(parts: list[bytes]) -> None:
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(crypto, "SEGMENT_BYTES", 16)
        key = crypto.DataKey.new()
        sealed = crypto.encrypt(key, "past_key_values/0_key.npy", [memoryview(p) for p in parts])
        plain = b"".join(parts)
        assert len(sealed) == crypto.sealed_size(len(plain))
        if len(plain) >= 8:  # shorter strings turn up in random bytes by chance
            assert plain not in bytes(sealed)
        opened = crypto.decrypt(key, "past_key_values/0_key.npy", sealed, len(plain), "t")
        assert bytes(opened) == plain


def test_every_single_byte_change_is_detected(small_segments: int) -> None:
    key = crypto.DataKey.new()
    plain = os.urandom(3 * small_segments + 5)
    sealed = crypto.encrypt(key, "input_ids.npy", [memoryview(plain)])
    for i in range(len(sealed)):
        tampered = bytearray(sealed)
        tampered[i] ^= 0x01
        with pytest.raises(DataLoss, match=r"input_ids\.npy"):
            crypto.decrypt(key, "input_ids.npy", tampered, len(plain), "t")


def test_moved_reordered_or_cut_segments_are_detected(small_segments: int) -> None:
    key = crypto.DataKey.new()
    plain = os.urandom(3 * small_segments)
    sealed = bytes(crypto.encrypt(key, "a.npy", [memoryview(plain)]))
    step = crypto.NONCE_BYTES + small_segments + crypto.TAG_BYTES
    segments = [sealed[i : i + step] for i in range(0, len(sealed), step)]
    cases = {
        "another file": (crypto.encrypt(key, "b.npy", [memoryview(plain)]), len(plain)),
        "reordered": (segments[1] + segments[0] + segments[2], len(plain)),
        "last segment cut": (b"".join(segments[:2]), len(plain)),
        "cut and size lied about": (b"".join(segments[:2]), 2 * small_segments),
        "a byte appended": (sealed + b"\0", len(plain)),
        "another key": (crypto.encrypt(crypto.DataKey.new(), "a.npy", [memoryview(plain)]), len(plain)),
    }
    for case, (data, size) in cases.items():
        with pytest.raises(DataLoss):
            crypto.decrypt(key, "a.npy", data, size, case)


def test_master_key_parsing_wrapping_and_ids() -> None:
    raw = os.urandom(32)
    assert crypto.parse_master_key(raw.hex()) == raw
    assert crypto.parse_master_key(base64.b64encode(raw).decode() + "\n") == raw
    for bad in ["", "abc", raw.hex()[:-2], base64.b64encode(raw[:16]).decode(), "zz" * 32]:
        with pytest.raises(ValueError, match="32 bytes"):
            crypto.parse_master_key(bad)
    master = crypto.MasterKey(raw)
    data_key = crypto.DataKey.new()
    wrapped = master.wrap(data_key, "m1d1x0x0x0")
    assert data_key.key not in base64.b64decode(wrapped)
    assert master.unwrap(wrapped, data_key.key_id, master.key_id, "m1d1x0x0x0") == data_key
    with pytest.raises(DataLoss, match="does not unwrap"):
        master.unwrap(wrapped, data_key.key_id, master.key_id, "m1d1x0x0x1")  # bound to its snapshot
    with pytest.raises(DataLoss, match="does not unwrap"):
        master.unwrap(wrapped, "another-key-id", master.key_id, "m1d1x0x0x0")
    other = crypto.MasterKey(os.urandom(32))
    with pytest.raises(DataLoss, match="names master key"):
        other.unwrap(wrapped, data_key.key_id, master.key_id, "m1d1x0x0x0")
    assert master.key_id == crypto.master_key_id(raw) and raw.hex() not in master.key_id
