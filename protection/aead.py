"""Authenticated encryption of bytes: AES-256-GCM in a versioned, self-describing blob.

Blob layout (all of it is authenticated, the header through the associated data):

    version (1 byte, 0x01) | key-id length (1 byte) | key id (UTF-8) | nonce (12 bytes)
    | ciphertext + 16-byte tag

The key id names the data key that sealed the blob, so a reader can find the key without
any other column; the caller's `aad` (for example the table and column a value belongs to)
binds the blob to its place, so a blob copied to another column fails to open.
"""

from __future__ import annotations

import os as _os
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

FORMAT_VERSION = 1
NONCE_BYTES = 12
TAG_BYTES = 16
KEY_BYTES = 32
_HEADER = struct.Struct(">BB")


class ProtectionError(Exception):
    """Base of the errors of encryption at rest. `code` is a stable machine code; the
    message never contains key material or plaintext, so both are safe to log and show."""

    code = "protection_error"


class TamperedError(ProtectionError):
    """The blob is malformed, or its tag does not verify: altered, truncated, moved to
    another place (different associated data), or opened with the wrong key."""

    code = "ciphertext_tampered"


class KeyUnavailableError(ProtectionError):
    """The key needed to open a blob cannot be had (unknown key, master key not
    configured, KMS refused or unreachable)."""

    code = "key_unavailable"


def _check_key(key: bytes) -> None:
    if not isinstance(key, bytes | bytearray) or len(key) != KEY_BYTES:
        raise ValueError("AES-256-GCM needs a 32-byte key.")


def seal(key: bytes, plaintext: bytes, *, aad: bytes, key_id: str = "") -> bytes:
    """Encrypt and authenticate `plaintext` under `key`, binding `aad` and `key_id`.

    Raises ValueError for a key that is not 32 bytes or a key id longer than 255 bytes.
    """
    _check_key(key)
    raw_id = key_id.encode("utf-8")
    if len(raw_id) > 255:
        raise ValueError("A key id is at most 255 bytes.")
    header = _HEADER.pack(FORMAT_VERSION, len(raw_id)) + raw_id
    nonce = _os.urandom(NONCE_BYTES)
    sealed = AESGCM(bytes(key)).encrypt(nonce, plaintext, header + aad)
    return header + nonce + sealed


def key_id_of(blob: bytes) -> str:
    """The data-key id a blob names. Raises TamperedError for a malformed blob."""
    return _parse(blob)[1]


def _parse(blob: bytes) -> tuple[bytes, str, bytes, bytes]:
    if len(blob) < _HEADER.size:
        raise TamperedError("The sealed value is truncated.")
    version, id_length = _HEADER.unpack_from(blob)
    if version != FORMAT_VERSION:
        raise TamperedError(f"Unknown sealed-value format version {version}.")
    body_start = _HEADER.size + id_length
    if len(blob) < body_start + NONCE_BYTES + TAG_BYTES:
        raise TamperedError("The sealed value is truncated.")
    try:
        key_id = blob[_HEADER.size : body_start].decode("utf-8")
    except UnicodeDecodeError:
        raise TamperedError("The sealed value's key id is not text.") from None
    header = blob[:body_start]
    nonce = blob[body_start : body_start + NONCE_BYTES]
    return header, key_id, nonce, blob[body_start + NONCE_BYTES :]


def open(key: bytes, blob: bytes, *, aad: bytes) -> bytes:
    """Verify and decrypt a blob made by `seal` with the same key and `aad`.

    Raises TamperedError when the blob is malformed or does not authenticate.
    """
    _check_key(key)
    header, _key_id, nonce, sealed = _parse(bytes(blob))
    try:
        return AESGCM(bytes(key)).decrypt(nonce, sealed, header + aad)
    except InvalidTag:
        raise TamperedError(
            "The sealed value failed authentication (altered, moved or wrong key)."
        ) from None
