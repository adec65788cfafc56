"""Hashing and signing of the audit chain. Pure functions: no database access.

An event's hash covers a canonical JSON serialisation of every stored field plus the
previous event's hash, so changing, removing or inserting any event breaks every hash after
it. Since format 2 the hash is keyed: HMAC-SHA256 under the *chain key*, derived from
AUDIT_HMAC_KEY (kept outside the database) with its own label, and the event stores the
short id of the key that hashed it (`key_id`, itself covered by the hash). Whoever can write
the table but does not hold the key cannot compute a valid hash for an inserted, altered or
re-linked event. Format 1 (plain SHA-256, empty `key_id`) is what events written before the
keyed chain carry; they still verify, but never after a keyed event (no downgrade).

A checkpoint's signature is an HMAC-SHA256, with the same key kept outside the database,
over the chain's head (sequence, hash) and the time of signing; a verification marker is
the same over the head a verification walked (see audit.verify).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import json.scanner
from collections.abc import Mapping
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

GENESIS_HASH = "0" * 64
UNKEYED_VERSION = 1  # plain SHA-256, `key_id` empty: events written before the keyed chain
FORMAT_VERSION = 2  # HMAC-SHA256 under the chain key named by `key_id`
# Derives the chain key from AUDIT_HMAC_KEY, so one secret serves both purposes while the
# two uses never share a key (a checkpoint signature is never a valid event hash).
CHAIN_KEY_LABEL = b"enterprise-ai/audit-chain-key/v2"

# Every stored field of an event that its hash covers, in this order (documented).
HASHED_FIELDS = (
    "sequence",
    "occurred_at",
    "actor_id",
    "actor_email",
    "ip",
    "user_agent",
    "session_hash",
    "request_id",
    "action",
    "target_type",
    "target_id",
    "outcome",
    "details",
    "prev_hash",
    "key_id",  # format 2: hashed as "kid"; format 1 events have it empty and do not hash it
)


def timestamp(value: datetime) -> str:
    """A UTC timestamp with microseconds, the one form hashed and signed."""
    if value.tzinfo is None:
        raise ValueError("audit timestamps must be timezone-aware")
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def normalise_details(details: Mapping[str, Any] | None) -> dict[str, Any]:
    """Details as they will come back from the database: JSON types only.

    Anything else (UUIDs, dates, Decimals) becomes its string form, so the hash computed
    before the insert equals the hash recomputed from the stored row.
    """
    if not details:
        return {}
    return json.loads(json.dumps(dict(details), default=str, ensure_ascii=False))


def canonical(fields: Mapping[str, Any]) -> bytes:
    """The exact bytes an event's hash covers (the reference form; `RowHasher` builds the
    same bytes faster). Format 2 when `fields["key_id"]` is set, else format 1."""
    kid = fields.get("key_id") or ""
    document: dict[str, Any] = {"v": FORMAT_VERSION if kid else UNKEYED_VERSION}
    if kid:
        document["kid"] = kid
    for name in HASHED_FIELDS[:-1]:
        value = fields[name]
        if name == "occurred_at":
            value = timestamp(value)
        elif name in {"ip", "actor_id"} and value is not None:
            value = str(value)
        document[name] = value
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode(
        "utf-8"
    )


class UnknownKeyError(Exception):
    """An event names a chain key that is not configured here."""


def event_hash(fields: Mapping[str, Any]) -> str:
    """The hash of an event: keyed (format 2) when `fields["key_id"]` names a chain key,
    plain SHA-256 (format 1) when it is empty. Raises UnknownKeyError for a key id that is
    neither the current key's nor a previous key's."""
    kid = fields.get("key_id") or ""
    if not kid:
        return hashlib.sha256(canonical(fields)).hexdigest()
    key = chain_keys().get(kid)
    if key is None:
        raise UnknownKeyError(kid)
    return hmac.new(key, canonical(fields), hashlib.sha256).hexdigest()


# --- Chain keys -------------------------------------------------------------------------------


def _master_keys() -> list[bytes]:
    keys = [settings.AUDIT_HMAC_KEY, *settings.AUDIT_HMAC_PREVIOUS_KEYS]
    return [k.encode("utf-8") for k in keys if k]


@lru_cache(maxsize=16)
def _derive(master: bytes) -> tuple[str, bytes]:
    return key_id(master), hmac.new(master, CHAIN_KEY_LABEL, hashlib.sha256).digest()


def current_chain_key() -> tuple[str, bytes]:
    """(key id, chain key) for hashing new events: derived from AUDIT_HMAC_KEY. The key id
    is the one checkpoints signed with the same AUDIT_HMAC_KEY carry."""
    return _derive(signing_key())


def chain_keys() -> dict[str, bytes]:
    """Every chain key an event may have been hashed with: the current and retired ones."""
    return dict(_derive(master) for master in _master_keys())


_encode_str = json.encoder.encode_basestring  # what json.dumps(ensure_ascii=False) uses


def _details_encoder() -> Any:
    """json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False), minus
    the per-call set-up: the C encoder json.dumps builds on every call, built once (without
    the circular-reference check, which JSON read back from a database never needs)."""
    reference = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:
        return reference.encode
    try:
        encoder = make(None, reference.default, _encode_str, None, ":", ",", True, False, True)
    except TypeError:  # another Python's signature: the reference path is still correct
        return reference.encode

    def encode(value: Any) -> str:
        return "".join(encoder(value, 0))

    sample = {"b": [1, 2.5, None, True, 'é\n"'], "a": {"z": {}, "y": []}}
    return encode if encode(sample) == reference.encode(sample) else reference.encode


def _details_decoder() -> Any:
    """json.loads for the JSON text a database returns, straight to the C scanner."""
    make = getattr(json.scanner, "c_make_scanner", None)
    if make is None:
        return json.loads
    scan = make(json.JSONDecoder())

    def decode(text: str) -> Any:
        try:
            value, end = scan(text, 0)
        except StopIteration:  # leading white space, or not JSON: json.loads says which
            return json.loads(text)
        if end != len(text):  # not a single value with nothing around it: the slow path
            return json.loads(text)
        return value

    return decode


_encode_details = _details_encoder()
decode_details = _details_decoder()


def fast_timestamp(value: datetime) -> str:
    """`timestamp()` without strftime (several times faster; same string)."""
    offset = value.utcoffset()
    if offset is None:
        raise ValueError("audit timestamps must be timezone-aware")
    if offset:
        value = (value - offset).replace(tzinfo=UTC)
    if value.year < 1000:
        return timestamp(value)
    return (
        f"{value.year}-{value.month:02d}-{value.day:02d}T{value.hour:02d}:"
        f"{value.minute:02d}:{value.second:02d}.{value.microsecond:06d}Z"
    )


class RowHasher:
    """Recomputes the hashes of stored events fast, for the verifier.

    Builds exactly the bytes of `canonical()` (tests compare them on awkward input) from a
    row in `ROW_FIELDS` order, with the fields written straight into a template in the
    order sort_keys would put them, and hashes them with a pre-keyed HMAC that is copied
    per event.
    """

    def __init__(self) -> None:
        self._keyed = {
            kid: hmac.new(key, digestmod=hashlib.sha256) for kid, key in chain_keys().items()
        }

    def knows(self, kid: str) -> bool:
        return kid in self._keyed

    @staticmethod
    def canonical_row(row: tuple[Any, ...], occurred_at: str, details: Any) -> bytes:
        (
            sequence,
            _,
            actor_id,
            actor_email,
            ip,
            user_agent,
            session_hash,
            request_id,
            action,
            target_type,
            target_id,
            outcome,
            _details,
            prev_hash,
            _hash,
            kid,
        ) = row
        s = _encode_str
        head = (
            f'{{"action":{s(action)},"actor_email":{s(actor_email)},"actor_id":'
            f"{'null' if actor_id is None else s(str(actor_id))},"
            f'"details":{_encode_details(details)},"ip":'
            f"{'null' if ip is None else s(str(ip))},"
        )
        tail = (
            f'"occurred_at":"{occurred_at}","outcome":{s(outcome)},'
            f'"prev_hash":{s(prev_hash)},"request_id":{s(request_id)},"sequence":{sequence},'
            f'"session_hash":{s(session_hash)},"target_id":{s(target_id)},'
            f'"target_type":{s(target_type)},"user_agent":{s(user_agent)},'
        )
        if kid:
            return f'{head}"kid":{s(kid)},{tail}"v":{FORMAT_VERSION}}}'.encode()
        return f'{head}{tail}"v":{UNKEYED_VERSION}}}'.encode()

    def hash_row(self, row: tuple[Any, ...], occurred_at: str, details: Any) -> str:
        """The hash of a stored row (ROW_FIELDS order), given its `occurred_at` already in
        the hashed form and its details decoded. Raises UnknownKeyError when the row's key
        id is not configured."""
        kid = row[15]
        data = self.canonical_row(row, occurred_at, details)
        if not kid:
            return hashlib.sha256(data).hexdigest()
        keyed = self._keyed.get(kid)
        if keyed is None:
            raise UnknownKeyError(kid)
        mac = keyed.copy()
        mac.update(data)
        return mac.hexdigest()


# A stored event as the verifier reads it: the hashed fields, the stored hash, the key id.
ROW_FIELDS = (*HASHED_FIELDS[:-1], "hash", "key_id")


# --- Checkpoint signing -----------------------------------------------------------------------


def key_id(key: bytes) -> str:
    """A short, non-secret name for a key, stored with each checkpoint it signs."""
    return hashlib.sha256(b"audit-checkpoint-key:" + key).hexdigest()[:16]


def signing_key() -> bytes:
    key = settings.AUDIT_HMAC_KEY
    if not key:
        raise ImproperlyConfigured(
            "AUDIT_HMAC_KEY (or AUDIT_HMAC_KEY_FILE) is required to sign audit checkpoints."
        )
    return key.encode("utf-8")


def verification_marker_signature(key: bytes, *, sequence: int, head_hash: str, kid: str) -> str:
    """Signs "a verification walked the chain up to `sequence`, whose hash is `head_hash`":
    where the next incremental verification may start (audit.verify)."""
    message = f"audit-verified:v1|{sequence}|{head_hash}|{kid}".encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def verification_keys() -> dict[str, bytes]:
    """Every key a checkpoint may have been signed with: the current one and retired ones."""
    keys = [settings.AUDIT_HMAC_KEY, *settings.AUDIT_HMAC_PREVIOUS_KEYS]
    return {key_id(k.encode("utf-8")): k.encode("utf-8") for k in keys if k}


def checkpoint_message(*, sequence: int, head_hash: str, signed_at: datetime, kid: str) -> bytes:
    return f"audit-checkpoint:v1|{sequence}|{head_hash}|{timestamp(signed_at)}|{kid}".encode()


def checkpoint_signature(
    key: bytes, *, sequence: int, head_hash: str, signed_at: datetime, kid: str
) -> str:
    message = checkpoint_message(
        sequence=sequence, head_hash=head_hash, signed_at=signed_at, kid=kid
    )
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def checkpoint_signature_valid(
    *, sequence: int, head_hash: str, signed_at: datetime, kid: str, signature: str
) -> bool | None:
    """True or False; None when the key that signed it is not configured here."""
    key = verification_keys().get(kid)
    if key is None:
        return None
    expected = checkpoint_signature(
        key, sequence=sequence, head_hash=head_hash, signed_at=signed_at, kid=kid
    )
    return hmac.compare_digest(expected, signature)
