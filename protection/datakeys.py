"""Data keys of stored text: the current one for writing, any one by id for reading.

`seal_text` / `open_text` are the one place stored transcript text is encrypted and
decrypted (the encrypted model fields call them). Unwrapped keys are cached in-process
(bounded, with a TTL: ENCRYPTION_KEY_CACHE_SIZE, ENCRYPTION_KEY_CACHE_SECONDS), so a page of
messages costs one unwrap per data key rather than one per row.

A key created inside a transaction is cached for writing only once that transaction has
committed: a rolled-back key must never seal a later value.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable

from django.conf import settings
from django.core.signals import setting_changed
from django.db import IntegrityError, transaction
from django.dispatch import receiver
from django.utils import timezone

from protection import aead, keyring
from protection.aead import KeyUnavailableError, TamperedError
from protection.cache import LruTtlCache
from protection.models import DataKey, new_key_id

TRANSCRIPTS = "transcripts"
# The key of the chat search's blind index (conversations.search): one for all time (its
# `period` is STANDING), never retired by re-encryption, re-wrapped with every data key.
SEARCH = "search"
STANDING = "standing"
PREFIX = "enc:"  # every encrypted column value starts so; "" stays "" (see docs)


def _size() -> int:
    return int(getattr(settings, "ENCRYPTION_KEY_CACHE_SIZE", 1000))


def _ttl() -> float:
    return float(getattr(settings, "ENCRYPTION_KEY_CACHE_SECONDS", 300))


_by_id: LruTtlCache[bytes] = LruTtlCache(max_entries=_size(), ttl_seconds=_ttl())
_for_writing: LruTtlCache[tuple[str, bytes]] = LruTtlCache(max_entries=16, ttl_seconds=_ttl())
_pending: set[str] = set()  # created by this process in a transaction not yet committed


def clear_cache() -> None:
    """Forget every cached data key (tests, and after a rotation in this process)."""
    _by_id.clear()
    _for_writing.clear()
    _pending.clear()
    _by_id.max_entries, _by_id.ttl_seconds = _size(), _ttl()
    _for_writing.ttl_seconds = _ttl()
    keyring.clear_cache()


@receiver(setting_changed)
def _settings_changed(*, setting: str, **_: object) -> None:
    if setting.startswith("ENCRYPTION_"):
        clear_cache()


def wrap_purpose(data_key: DataKey) -> str:
    """The purpose a data key is wrapped for (the KMS EncryptionContext): it names the key
    itself, so a wrapped key copied onto another row does not unwrap."""
    return f"{data_key.purpose}:{data_key.key_id}"


def wrapped_of(data_key: DataKey) -> keyring.WrappedKey:
    return keyring.WrappedKey(master_key_id=data_key.master_key_id, blob=bytes(data_key.wrapped))


def current_period() -> str:
    return timezone.now().strftime("%Y-%m")


def key_for_writing(purpose: str = TRANSCRIPTS, period: str = "") -> tuple[str, bytes]:
    """(key id, plaintext key) of the active data key for this purpose and month (or the
    given `period`, e.g. STANDING), created (wrapped under the current master key) on first
    use. Raises KeyUnavailableError."""
    period = period or current_period()
    cached = _for_writing.get((purpose, period))
    if cached is not None:
        return cached
    data_key = DataKey.objects.filter(
        purpose=purpose, period=period, retired_at__isnull=True
    ).first()
    if data_key is None:
        data_key = _create(purpose, period)
    result = (data_key.key_id, key_for_reading(data_key))
    if data_key.key_id not in _pending or not transaction.get_connection().in_atomic_block:
        _pending.discard(data_key.key_id)  # a row seen outside a transaction is committed
        _for_writing.put((purpose, period), result)
    return result


def _create(purpose: str, period: str) -> DataKey:
    """A new active data key for the month, or the one another process created first."""
    key_id = new_key_id()
    candidate = DataKey(key_id=key_id, purpose=purpose, period=period)
    plaintext, wrapped = keyring.new_data_key(purpose=wrap_purpose(candidate))
    candidate.master_key_id = wrapped.master_key_id
    candidate.wrapped = wrapped.blob
    try:
        with transaction.atomic():
            candidate.save(force_insert=True)
    except IntegrityError:  # another process created this month's key first
        return DataKey.objects.get(purpose=purpose, period=period, retired_at__isnull=True)
    _by_id.put(key_id, plaintext)
    if transaction.get_connection().in_atomic_block:
        # Created inside the caller's transaction: only once that commits may the key seal
        # values written by later transactions (a rolled-back key would orphan them).
        _pending.add(key_id)
        transaction.on_commit(lambda: _pending.discard(key_id))
    return candidate


def key_for_reading(data_key: DataKey | str) -> bytes:
    """The plaintext of a data key (a row, or its key id). Raises KeyUnavailableError (no
    such key, or its master key unusable) or TamperedError (the wrapped key is altered)."""
    key_id = data_key if isinstance(data_key, str) else data_key.key_id
    cached = _by_id.get(key_id)
    if cached is not None:
        return cached
    if isinstance(data_key, str):
        row = DataKey.objects.filter(key_id=key_id).first()
        if row is None:
            raise KeyUnavailableError(f"Data key {key_id} does not exist.")
        data_key = row
    plaintext = keyring.unwrap(wrapped_of(data_key), purpose=wrap_purpose(data_key))
    _by_id.put(key_id, plaintext)
    return plaintext


def seal_bytes(plaintext: bytes, *, aad: bytes, purpose: str = TRANSCRIPTS) -> str:
    """`plaintext` sealed under the current data key, as column text (PREFIX + base64)."""
    key_id, key = key_for_writing(purpose)
    blob = aead.seal(key, plaintext, aad=aad, key_id=key_id)
    return PREFIX + base64.urlsafe_b64encode(blob).decode("ascii")


def open_bytes(stored: str, *, aad: bytes, key_for: Callable[[str], bytes] | None = None) -> bytes:
    """The plaintext of a value made by `seal_bytes`. Raises TamperedError (not a sealed
    value, altered, moved) or KeyUnavailableError (its data key cannot be had).

    `key_for` maps a data key id to the key; by default this database's data keys
    (`key_for_reading`). A test that reads another process's database passes its own."""
    if not stored.startswith(PREFIX):
        raise TamperedError("The stored value is not encrypted.")
    try:
        blob = base64.urlsafe_b64decode(stored[len(PREFIX) :].encode("ascii"))
    except (binascii.Error, ValueError, UnicodeEncodeError):
        raise TamperedError("The stored value is not valid base64.") from None
    key = (key_for or key_for_reading)(aead.key_id_of(blob))
    return aead.open(key, blob, aad=aad)


def is_sealed(stored: str) -> bool:
    return stored.startswith(PREFIX)
