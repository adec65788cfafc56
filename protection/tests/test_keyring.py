"""Master keys wrapping data keys: local key files and AWS KMS (moto's server on loopback,
real boto3 calls), previous keys readable, re-wrapping under the current key."""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import pytest

from protection import keyring
from protection.aead import KeyUnavailableError, TamperedError
from protection.keyfile import decode_master_key, generate_master_key
from protection.keyring import WrappedKey


def test_local_round_trip(local_master: str) -> None:
    plaintext, wrapped = keyring.new_data_key(purpose="transcripts")
    assert len(plaintext) == 32
    assert wrapped.master_key_id == "local:" + keyring.fingerprint(decode_master_key(local_master))
    assert plaintext not in wrapped.blob
    keyring.clear_cache()
    assert keyring.unwrap(wrapped, purpose="transcripts") == plaintext


def test_local_unwrap_for_another_purpose_is_refused(local_master: str) -> None:
    _, wrapped = keyring.new_data_key(purpose="transcripts")
    keyring.clear_cache()
    with pytest.raises(TamperedError):
        keyring.unwrap(wrapped, purpose="person:42")


def test_embedded_default_creates_a_private_key_file_once(tmp_path: Path, settings: Any) -> None:
    key_file = tmp_path / "local" / "encryption_master_key"
    settings.ENCRYPTION_KMS_KEY_ID = ""
    settings.ENCRYPTION_MASTER_KEY = ""
    settings.ENCRYPTION_MASTER_KEY_LOCAL_FILE = str(key_file)
    plaintext, wrapped = keyring.new_data_key(purpose="transcripts")
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    first = key_file.read_text()
    keyring.clear_cache()
    assert keyring.unwrap(wrapped, purpose="transcripts") == plaintext
    assert key_file.read_text() == first
    assert wrapped.master_key_id == "local:" + keyring.fingerprint(decode_master_key(first))


def test_no_master_key_configured_is_a_clear_error(settings: Any) -> None:
    settings.ENCRYPTION_KMS_KEY_ID = ""
    settings.ENCRYPTION_MASTER_KEY = ""
    settings.ENCRYPTION_MASTER_KEY_LOCAL_FILE = ""
    with pytest.raises(KeyUnavailableError) as caught:
        keyring.new_data_key(purpose="transcripts")
    assert caught.value.code == "key_unavailable"


def test_previous_local_key_stays_readable_and_rewrap_moves_it(
    local_master: str, settings: Any
) -> None:
    plaintext, old = keyring.new_data_key(purpose="transcripts")
    settings.ENCRYPTION_MASTER_KEY = generate_master_key()
    settings.ENCRYPTION_PREVIOUS_MASTER_KEYS = [local_master]
    assert keyring.unwrap(old, purpose="transcripts") == plaintext

    new = keyring.rewrap(old, purpose="transcripts")
    assert new.master_key_id != old.master_key_id
    assert new.master_key_id == keyring.current_master_key_id()
    assert keyring.rewrap(new, purpose="transcripts") is new  # idempotent

    settings.ENCRYPTION_PREVIOUS_MASTER_KEYS = []  # the old key retired
    assert keyring.unwrap(new, purpose="transcripts") == plaintext
    with pytest.raises(KeyUnavailableError):
        keyring.unwrap(old, purpose="transcripts")


def _forget_kms_key(arn: str) -> None:
    """The KMS key is gone (deleted, or access revoked): the double no longer has it."""
    from moto.kms.models import kms_backends

    _, _, _, region, account, resource = arn.split(":", 5)
    del kms_backends[account][region].keys[resource.removeprefix("key/")]


def test_cache_spares_repeated_unwraps(kms_key: str) -> None:
    plaintext, wrapped = keyring.new_data_key(purpose="transcripts")
    keyring.clear_cache()
    assert keyring.unwrap(wrapped, purpose="transcripts") == plaintext
    _forget_kms_key(kms_key)
    # The unwrapped key is served from memory: no KMS call per row...
    assert keyring.unwrap(wrapped, purpose="transcripts") == plaintext
    keyring.clear_cache()  # ...until it is forgotten.
    with pytest.raises(KeyUnavailableError) as caught:
        keyring.unwrap(wrapped, purpose="transcripts")
    assert "AWS KMS refused" in str(caught.value)


def test_cache_is_bounded(local_master: str, settings: Any) -> None:
    settings.ENCRYPTION_KEY_CACHE_SIZE = 3
    for _ in range(10):
        keyring.new_data_key(purpose="transcripts")
    assert len(keyring._unwrapped) == 3


def test_kms_round_trip_with_encryption_context(kms_key: str, kms: Any) -> None:
    plaintext, wrapped = keyring.new_data_key(purpose="transcripts")
    assert wrapped.master_key_id == "kms:" + kms_key
    keyring.clear_cache()
    assert keyring.unwrap(wrapped, purpose="transcripts") == plaintext
    # The wrapped key is bound to its purpose by the EncryptionContext, checked by KMS itself.
    with pytest.raises(Exception, match="InvalidCiphertext"):
        kms.decrypt(CiphertextBlob=wrapped.blob, EncryptionContext={"purpose": "other"})
    keyring.clear_cache()
    with pytest.raises(TamperedError):
        keyring.unwrap(wrapped, purpose="person:7")


def test_kms_alias_resolves_to_the_key_arn(kms_key: str, kms: Any, settings: Any) -> None:
    kms.create_alias(AliasName="alias/eai-transcripts", TargetKeyId=kms_key)
    settings.ENCRYPTION_KMS_KEY_ID = "alias/eai-transcripts"
    assert keyring.current_master_key_id() == "kms:" + kms_key


def test_kms_rotation_to_a_new_key_uses_reencrypt(kms_key: str, kms: Any, settings: Any) -> None:
    plaintext, old = keyring.new_data_key(purpose="transcripts")
    new_arn = str(kms.create_key()["KeyMetadata"]["Arn"])
    settings.ENCRYPTION_KMS_KEY_ID = new_arn
    new = keyring.rewrap(old, purpose="transcripts")
    assert new.master_key_id == "kms:" + new_arn
    keyring.clear_cache()
    assert keyring.unwrap(new, purpose="transcripts") == plaintext
    _forget_kms_key(kms_key)  # the old KMS key is no longer needed
    keyring.clear_cache()
    assert keyring.unwrap(new, purpose="transcripts") == plaintext
    with pytest.raises(KeyUnavailableError):
        keyring.unwrap(old, purpose="transcripts")


def test_local_to_kms_migration(local_master: str, kms: Any, settings: Any) -> None:
    plaintext, old = keyring.new_data_key(purpose="transcripts")
    arn = str(kms.create_key()["KeyMetadata"]["Arn"])
    settings.ENCRYPTION_KMS_KEY_ID = arn  # KMS becomes current; the local key stays readable
    assert keyring.unwrap(old, purpose="transcripts") == plaintext
    new = keyring.rewrap(old, purpose="transcripts")
    assert new.master_key_id == "kms:" + arn
    settings.ENCRYPTION_MASTER_KEY = ""
    keyring.clear_cache()
    assert keyring.unwrap(new, purpose="transcripts") == plaintext


def test_kms_unreachable_is_key_unavailable(
    local_master: str, aws_env: None, settings: Any
) -> None:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings.ENCRYPTION_KMS_ENDPOINT_URL = f"http://127.0.0.1:{port}"
    settings.ENCRYPTION_KMS_REGION = "eu-west-1"
    wrapped = WrappedKey(master_key_id="kms:arn:aws:kms:eu-west-1:1:key/x", blob=b"x" * 40)
    with pytest.raises(KeyUnavailableError) as caught:
        keyring.unwrap(wrapped, purpose="transcripts")
    assert "could not be reached" in str(caught.value)


def test_unknown_kind_of_master_key(local_master: str) -> None:
    with pytest.raises(KeyUnavailableError):
        keyring.unwrap(WrappedKey(master_key_id="vault:1", blob=b""), purpose="x")
