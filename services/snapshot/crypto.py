"""Encryption at rest: AES-256-GCM with a fresh data key per snapshot, wrapped by the service's master key.

A stored file is a sequence of segments, each `nonce (12) | ciphertext | tag (16)` over at most SEGMENT_BYTES of
plaintext. The associated data binds a segment to its file, its index and whether it is the last one, so segments
cannot be reordered, moved between files or dropped from the end without the load failing. Segments keep memory per
operation small and let large tensors be processed piece by piece.

Key ids, never keys, go to `metadata/keylog.txt` and the manifest: the data key's random id and the master key's id
(a one-way hash of it, so a loader can tell which master key a snapshot needs).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from services.common.errors import DataLoss

SEGMENT_BYTES = 4 * 1024 * 1024
NONCE_BYTES = 12
TAG_BYTES = 16
KEY_BYTES = 32


def parse_master_key(text: str) -> bytes:
    """32 bytes given as 64 hex digits or as base64; anything else is a ValueError that says what was expected."""
    text = text.strip()
    try:
        if len(text) == 2 * KEY_BYTES:
            return bytes.fromhex(text)
        key = base64.b64decode(text, validate=True)
    except (ValueError, binascii.Error):
        key = b""
    if len(key) != KEY_BYTES:
        raise ValueError("the snapshot master key must be 32 bytes, as 64 hex digits or base64")
    return key


def master_key_id(key: bytes) -> str:
    return hashlib.sha256(b"haloweave snapshot master key\0" + key).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class DataKey:
    key_id: str
    key: bytes

    @classmethod
    def new(cls) -> DataKey:
        return cls(uuid.uuid4().hex, AESGCM.generate_key(bit_length=256))

    def mac(self, data: bytes) -> str:
        """Authenticates the manifest; a key derived from the data key so it is never used for two purposes."""
        mac_key = hashlib.sha256(b"haloweave manifest mac\0" + self.key).digest()
        return hmac.new(mac_key, data, hashlib.sha256).hexdigest()


class MasterKey:
    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise ValueError("the master key must be 32 bytes")
        self._aead = AESGCM(key)
        self.key_id = master_key_id(key)

    def wrap(self, data_key: DataKey, snapshot_id: str) -> str:
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._aead.encrypt(nonce, data_key.key, _wrap_aad(snapshot_id, data_key.key_id))
        return base64.b64encode(nonce + sealed).decode()

    def unwrap(self, wrapped: str, key_id: str, master_id: str, snapshot_id: str) -> DataKey:
        if master_id != self.key_id:
            # Without that key the manifest cannot be authenticated, so a tampered id looks the same: DataLoss.
            raise DataLoss(
                f"snapshot {snapshot_id} names master key {master_id}, this service holds {self.key_id}"
                " (another deployment's snapshot, or a tampered manifest)"
            )
        try:
            raw = base64.b64decode(wrapped, validate=True)
            key = self._aead.decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], _wrap_aad(snapshot_id, key_id))
        except (InvalidTag, ValueError, binascii.Error):
            raise DataLoss(f"snapshot {snapshot_id}: its data key does not unwrap (manifest tampered)") from None
        return DataKey(key_id, key)


def _wrap_aad(snapshot_id: str, key_id: str) -> bytes:
    return f"haloweave-dek|{snapshot_id}|{key_id}".encode()


def _segment_aad(path: str, index: int, last: bool) -> bytes:
    return f"{path}|{index}|{int(last)}".encode()


def _segments(parts: Sequence[memoryview]) -> Iterator[list[memoryview]]:
    """The parts' concatenation cut into SEGMENT_BYTES segments, each as the pieces of parts it spans (no copies)."""
    pieces: list[memoryview] = []
    filled = 0
    for part in parts:
        start = 0
        while start < len(part):
            take = min(SEGMENT_BYTES - filled, len(part) - start)
            pieces.append(part[start : start + take])
            filled += take
            start += take
            if filled == SEGMENT_BYTES:
                yield pieces
                pieces, filled = [], 0
    if pieces:
        yield pieces


def _segment_count(plain_size: int) -> int:
    return max(1, -(-plain_size // SEGMENT_BYTES))


def sealed_size(plain_size: int) -> int:
    return plain_size + _segment_count(plain_size) * (NONCE_BYTES + TAG_BYTES)


def encrypt(key: DataKey, path: str, parts: Sequence[memoryview]) -> bytearray:
    """Seals `parts` (an .npy header and its data blocks, in stored order) into one stored file without joining
    them: a segment that spans several parts is fed to the cipher piece by piece."""
    aead = AESGCM(key.key)
    plain_size = sum(len(p) for p in parts)
    count = _segment_count(plain_size)
    out = bytearray(sealed_size(plain_size))
    view = memoryview(out)
    segments = _segments(parts) if plain_size else iter([[memoryview(b"")]])
    offset = 0
    for index, pieces in enumerate(segments):
        nonce = os.urandom(NONCE_BYTES)
        view[offset : offset + NONCE_BYTES] = nonce
        offset += NONCE_BYTES
        aad = _segment_aad(path, index, index == count - 1)
        if len(pieces) == 1:
            end = offset + len(pieces[0]) + TAG_BYTES
            aead.encrypt_into(nonce, pieces[0], aad, view[offset:end])
            offset = end
            continue
        # The same AES-GCM, streamed: identical bytes to a one-shot seal of the joined pieces.
        encryptor = Cipher(algorithms.AES(key.key), modes.GCM(nonce)).encryptor()
        encryptor.authenticate_additional_data(aad)
        for piece in pieces:
            # update_into wants room for one more block than it writes; the tag's place after it provides that.
            offset += encryptor.update_into(piece, view[offset : offset + len(piece) + 15])
        rest = encryptor.finalize()  # GCM buffers nothing, but write whatever it returns
        view[offset : offset + len(rest)] = rest
        offset += len(rest)
        view[offset : offset + TAG_BYTES] = encryptor.tag
        offset += TAG_BYTES
    return out


def decrypt(key: DataKey, path: str, sealed: bytes | bytearray | memoryview, plain_size: int, where: str) -> bytearray:
    """Opens a stored file; any change to it (or a segment moved, reordered or cut) raises DataLoss."""
    aead = AESGCM(key.key)
    out = bytearray(plain_size)
    view = memoryview(out)
    data = memoryview(sealed)
    offset = written = index = 0
    try:
        while True:
            size = min(SEGMENT_BYTES, plain_size - written)
            end = offset + NONCE_BYTES + size + TAG_BYTES
            last = written + size >= plain_size
            if end > len(data) or (last and end != len(data)):
                raise DataLoss(f"snapshot {where}: {path} has the wrong length")
            nonce = data[offset : offset + NONCE_BYTES]
            aad = _segment_aad(path, index, last)
            aead.decrypt_into(nonce, data[offset + NONCE_BYTES : end], aad, view[written : written + size])
            written += size
            offset = end
            index += 1
            if last:
                return out
    except InvalidTag:
        raise DataLoss(f"snapshot {where}: {path} fails authentication (corrupt or tampered)") from None
