"""Master keys (key-encryption keys) that wrap and unwrap data keys.

Two kinds of master key, chosen by settings (docs/data-protection.md, "Keys and KMS"):

* **kms**: an AWS KMS key (`ENCRYPTION_KMS_KEY_ID`), through boto3. A data key comes from
  GenerateDataKey and is unwrapped with Decrypt; re-wrapping from one KMS key to another is
  ReEncrypt, so the plaintext never leaves KMS. Every call carries an EncryptionContext
  naming the application and the purpose, so a wrapped key cannot be unwrapped for another
  use. Credentials come only from the standard AWS chain.
* **local**: a 256-bit key (`ENCRYPTION_MASTER_KEY`, or `ENCRYPTION_MASTER_KEY_FILE`); the
  embedded default creates one in `.local/encryption_master_key` (0600) on first use.
  Wrapping is AES-256-GCM with the purpose as associated data.

The newest configured key wraps new data keys (KMS when both are configured). Earlier keys
stay readable: `ENCRYPTION_PREVIOUS_MASTER_KEYS` for local keys, and any KMS key the
product's AWS role may still Decrypt with. `rewrap` moves a wrapped key under the current
master key; `manage.py rotate_encryption_keys` does it for every stored data key.

A `WrappedKey` says which master key wrapped it: `local:<fingerprint>` (16 hex digits of a
SHA-256 over the key, not the key) or `kms:<key ARN>`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.signals import setting_changed
from django.dispatch import receiver

from protection import aead
from protection.aead import KeyUnavailableError, TamperedError
from protection.cache import LruTtlCache
from protection.keyfile import decode_master_key, ensure_local_key_file

logger = logging.getLogger(__name__)

LOCAL_PREFIX = "local:"
KMS_PREFIX = "kms:"
APPLICATION = "enterprise-ai"
_WRAP_AAD = b"enterprise-ai/data-key\x00"


@dataclass(frozen=True)
class WrappedKey:
    master_key_id: str  # which master key wrapped it (local key fingerprint, or KMS key ARN/id)
    blob: bytes  # the wrapped data key


def _cache_size() -> int:
    return int(getattr(settings, "ENCRYPTION_KEY_CACHE_SIZE", 1000))


def _cache_seconds() -> float:
    return float(getattr(settings, "ENCRYPTION_KEY_CACHE_SECONDS", 300))


_unwrapped: LruTtlCache[bytes] = LruTtlCache(max_entries=_cache_size(), ttl_seconds=300)
_kms_arns: dict[str, str] = {}
_lock = threading.Lock()


def clear_cache() -> None:
    """Forget every unwrapped key and resolved KMS key (after a configuration change)."""
    _unwrapped.clear()
    _unwrapped.max_entries = _cache_size()
    _unwrapped.ttl_seconds = _cache_seconds()
    _kms_arns.clear()


@receiver(setting_changed)
def _settings_changed(*, setting: str, **_: Any) -> None:
    if setting.startswith("ENCRYPTION_"):
        clear_cache()


clear_cache()


# --- local master keys ---------------------------------------------------------------------


def fingerprint(key: bytes) -> str:
    """A local master key's public name: it identifies the key without revealing it."""
    return hashlib.sha256(b"enterprise-ai master key fingerprint\x00" + key).hexdigest()[:16]


def _current_local_key() -> bytes | None:
    written = getattr(settings, "ENCRYPTION_MASTER_KEY", "")
    if written:
        return decode_master_key(written)
    path = getattr(settings, "ENCRYPTION_MASTER_KEY_LOCAL_FILE", "")
    if path:
        with _lock:
            return ensure_local_key_file(Path(path))
    return None


def _local_keys() -> dict[str, bytes]:
    """Every configured local master key by its id, the current one first."""
    keys: dict[str, bytes] = {}
    current = _current_local_key()
    if current is not None:
        keys[LOCAL_PREFIX + fingerprint(current)] = current
    for written in getattr(settings, "ENCRYPTION_PREVIOUS_MASTER_KEYS", []):
        key = decode_master_key(written)
        keys.setdefault(LOCAL_PREFIX + fingerprint(key), key)
    return keys


def _local_wrap(master_id: str, master: bytes, data_key: bytes, purpose: str) -> WrappedKey:
    blob = aead.seal(master, data_key, aad=_WRAP_AAD + purpose.encode("utf-8"), key_id=master_id)
    return WrappedKey(master_key_id=master_id, blob=blob)


def _local_unwrap(wrapped: WrappedKey, purpose: str) -> bytes:
    master = _local_keys().get(wrapped.master_key_id)
    if master is None:
        raise KeyUnavailableError(
            f"Master key {wrapped.master_key_id} is not configured "
            "(ENCRYPTION_MASTER_KEY or ENCRYPTION_PREVIOUS_MASTER_KEYS)."
        )
    return aead.open(master, wrapped.blob, aad=_WRAP_AAD + purpose.encode("utf-8"))


# --- AWS KMS ---------------------------------------------------------------------------------


def _kms_key_setting() -> str:
    return str(getattr(settings, "ENCRYPTION_KMS_KEY_ID", "") or "")


def _kms_client() -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client(
        "kms",
        region_name=getattr(settings, "ENCRYPTION_KMS_REGION", "") or None,
        endpoint_url=getattr(settings, "ENCRYPTION_KMS_ENDPOINT_URL", "") or None,
        config=Config(
            connect_timeout=5, read_timeout=10, retries={"max_attempts": 3, "mode": "standard"}
        ),
    )


def _context(purpose: str) -> dict[str, str]:
    return {"application": APPLICATION, "purpose": purpose}


def _kms_failure(exc: Exception) -> KeyUnavailableError:
    from botocore.exceptions import ClientError

    if isinstance(exc, ClientError):
        code = exc.response.get("Error", {}).get("Code", "unknown")
        return KeyUnavailableError(f"AWS KMS refused the request ({code}).")
    return KeyUnavailableError(f"AWS KMS could not be reached ({type(exc).__name__}).")


def _kms_call(operation: str, **kwargs: Any) -> dict[str, Any]:
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        response: dict[str, Any] = getattr(_kms_client(), operation)(**kwargs)
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if code == "InvalidCiphertextException":
            raise TamperedError(
                "AWS KMS rejected the wrapped data key (altered, or wrong purpose)."
            ) from None
        raise _kms_failure(exc) from None
    except BotoCoreError as exc:
        raise _kms_failure(exc) from None
    return response


def current_kms_arn() -> str:
    """The configured KMS key's ARN (an alias or bare id is resolved once, then cached)."""
    configured = _kms_key_setting()
    arn = _kms_arns.get(configured)
    if arn is None:
        arn = str(_kms_call("describe_key", KeyId=configured)["KeyMetadata"]["Arn"])
        _kms_arns[configured] = arn
    return arn


# --- the contract ----------------------------------------------------------------------------


def current_master_key_id() -> str:
    """The id new data keys are wrapped under. Raises KeyUnavailableError when no master key
    is configured, or when the KMS key cannot be described."""
    if _kms_key_setting():
        return KMS_PREFIX + current_kms_arn()
    local = _current_local_key()
    if local is None:
        raise KeyUnavailableError(
            "No master key is configured (ENCRYPTION_KMS_KEY_ID or ENCRYPTION_MASTER_KEY)."
        )
    return LOCAL_PREFIX + fingerprint(local)


def new_data_key(*, purpose: str) -> tuple[bytes, WrappedKey]:
    """A fresh 32-byte data key and its form wrapped under the current master key.

    Raises KeyUnavailableError when no master key is usable.
    """
    if _kms_key_setting():
        response = _kms_call(
            "generate_data_key",
            KeyId=_kms_key_setting(),
            KeySpec="AES_256",
            EncryptionContext=_context(purpose),
        )
        plaintext = bytes(response["Plaintext"])
        wrapped = WrappedKey(
            master_key_id=KMS_PREFIX + str(response["KeyId"]),
            blob=bytes(response["CiphertextBlob"]),
        )
    else:
        master_id = current_master_key_id()
        plaintext = os.urandom(aead.KEY_BYTES)
        wrapped = _local_wrap(master_id, _local_keys()[master_id], plaintext, purpose)
    _unwrapped.put((wrapped.master_key_id, wrapped.blob, purpose), plaintext)
    return plaintext, wrapped


def unwrap(wrapped: WrappedKey, *, purpose: str) -> bytes:
    """The plaintext data key; cached in-process (bounded LRU with a TTL).

    Raises KeyUnavailableError when its master key is not configured or KMS cannot be used,
    TamperedError when the wrapped key does not authenticate for this purpose.
    """
    cache_key = (wrapped.master_key_id, wrapped.blob, purpose)
    cached = _unwrapped.get(cache_key)
    if cached is not None:
        return cached
    if wrapped.master_key_id.startswith(KMS_PREFIX):
        response = _kms_call(
            "decrypt",
            CiphertextBlob=wrapped.blob,
            KeyId=wrapped.master_key_id.removeprefix(KMS_PREFIX),
            EncryptionContext=_context(purpose),
        )
        plaintext = bytes(response["Plaintext"])
    elif wrapped.master_key_id.startswith(LOCAL_PREFIX):
        plaintext = _local_unwrap(wrapped, purpose)
    else:
        raise KeyUnavailableError(f"Unknown kind of master key {wrapped.master_key_id!r}.")
    if len(plaintext) != aead.KEY_BYTES:
        raise TamperedError("The unwrapped data key has the wrong length.")
    _unwrapped.put(cache_key, plaintext)
    return plaintext


def rewrap(wrapped: WrappedKey, *, purpose: str) -> WrappedKey:
    """The same data key wrapped under the current master key (unchanged if it already is).

    KMS to KMS uses ReEncrypt (the data key never leaves KMS); otherwise the key is unwrapped
    here and wrapped again (KMS Encrypt, or AES-GCM under the local key).
    Raises as `unwrap` does.
    """
    current = current_master_key_id()
    if wrapped.master_key_id == current:
        return wrapped
    if current.startswith(KMS_PREFIX):
        arn = current.removeprefix(KMS_PREFIX)
        if wrapped.master_key_id.startswith(KMS_PREFIX):
            response = _kms_call(
                "re_encrypt",
                CiphertextBlob=wrapped.blob,
                SourceKeyId=wrapped.master_key_id.removeprefix(KMS_PREFIX),
                SourceEncryptionContext=_context(purpose),
                DestinationKeyId=arn,
                DestinationEncryptionContext=_context(purpose),
            )
        else:
            response = _kms_call(
                "encrypt",
                KeyId=arn,
                Plaintext=unwrap(wrapped, purpose=purpose),
                EncryptionContext=_context(purpose),
            )
        return WrappedKey(
            master_key_id=KMS_PREFIX + str(response["KeyId"]),
            blob=bytes(response["CiphertextBlob"]),
        )
    plaintext = unwrap(wrapped, purpose=purpose)
    return _local_wrap(current, _local_keys()[current], plaintext, purpose)
