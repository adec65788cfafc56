"""AES-256-GCM sealed blobs: round trip, and every kind of tampering detected."""

from __future__ import annotations

import os

import pytest

from protection import aead
from protection.aead import TamperedError

KEY = os.urandom(32)


def test_round_trip_names_the_key_and_hides_the_text() -> None:
    blob = aead.seal(KEY, b"the quarterly numbers", aad=b"t.c", key_id="dk-1")
    assert b"quarterly" not in blob
    assert aead.key_id_of(blob) == "dk-1"
    assert blob[0] == aead.FORMAT_VERSION
    assert aead.open(KEY, blob, aad=b"t.c") == b"the quarterly numbers"


def test_each_seal_uses_a_fresh_nonce() -> None:
    assert aead.seal(KEY, b"same", aad=b"") != aead.seal(KEY, b"same", aad=b"")


@pytest.mark.parametrize("position", [0, 5, 20, -1])
def test_a_flipped_byte_anywhere_is_detected(position: int) -> None:
    blob = bytearray(aead.seal(KEY, b"payload", aad=b"a", key_id="dk-1"))
    blob[position] ^= 0x01
    with pytest.raises(TamperedError):
        aead.open(KEY, bytes(blob), aad=b"a")


def test_other_associated_data_wrong_key_and_truncation_are_detected() -> None:
    blob = aead.seal(KEY, b"payload", aad=b"messages.content")
    with pytest.raises(TamperedError):
        aead.open(KEY, blob, aad=b"conversations.title")
    with pytest.raises(TamperedError):
        aead.open(os.urandom(32), blob, aad=b"messages.content")
    with pytest.raises(TamperedError):
        aead.open(KEY, blob[:10], aad=b"messages.content")
    assert TamperedError.code == "ciphertext_tampered"


def test_a_changed_key_id_is_detected() -> None:
    blob = aead.seal(KEY, b"payload", aad=b"", key_id="dk-1")
    forged = blob.replace(b"dk-1", b"dk-2", 1)
    with pytest.raises(TamperedError):
        aead.open(KEY, forged, aad=b"")


def test_a_short_key_is_refused() -> None:
    with pytest.raises(ValueError, match="32-byte"):
        aead.seal(b"short", b"x", aad=b"")
