"""Hashing and signing of the audit chain. Pure functions: no database access.

An event's hash is SHA-256 over a canonical JSON serialisation of every stored field plus
the previous event's hash, so changing, removing or inserting any event breaks every hash
after it. A checkpoint's signature is an HMAC-SHA256, with a key kept outside the database,
over the chain's head (sequence, hash) and the time of signing.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

GENESIS_HASH = "0" * 64
FORMAT_VERSION = 1

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
    """The exact bytes an event's hash covers."""
    document: dict[str, Any] = {"v": FORMAT_VERSION}
    for name in HASHED_FIELDS:
        value = fields[name]
        if name == "occurred_at":
            value = timestamp(value)
        elif name in {"ip", "actor_id"} and value is not None:
            value = str(value)
        document[name] = value
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode(
        "utf-8"
    )


def event_hash(fields: Mapping[str, Any]) -> str:
    return hashlib.sha256(canonical(fields)).hexdigest()


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
