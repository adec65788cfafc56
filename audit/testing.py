"""Helpers for tests and benchmarks of the audit trail: seeding a chain, and tampering with
it the way an attacker with database access (and perhaps the HMAC key) could."""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

from django.db import connection

from audit import chain
from audit.catalogue import AuditAction
from audit.models import AuditCheckpoint, AuditEvent
from audit.services import EventSpec, audit_record_batch


def seed_events(count: int, actor: Any = None) -> int:
    """Append `count` realistic "message sent" events through the real chain writer."""
    return audit_record_batch(
        EventSpec(
            action=AuditAction.MESSAGE_SENT,
            actor=actor,
            ip="10.0.0.7",
            request_id=f"req-{n:06d}",
            target_type="conversation",
            target_id=f"c-{n}",
            details={"n": n, "model": "demo"},
        )
        for n in range(count)
    )


def insert_unkeyed(after: int, **changes: Any) -> int:
    """Insert an event after `after` without the key: every later event is renumbered and
    its plain SHA-256 hash recomputed (format 1). Returns the inserted sequence."""
    events = list(AuditEvent.objects.filter(sequence__gt=after).order_by("-sequence"))
    for event in events:  # highest first, so no number is taken twice
        raw_sql(
            "UPDATE audit_auditevent SET sequence = sequence + 1 WHERE sequence = %s",
            [event.sequence],
        )
    template = AuditEvent.objects.get(sequence=after)
    fields = {name: getattr(template, name) for name in chain.HASHED_FIELDS}
    fields.update(sequence=after + 1, key_id="", **changes)
    _rechain_unkeyed(after + 1, fields)
    return after + 1


def _rechain_unkeyed(sequence: int, inserted: dict[str, Any]) -> None:
    cast = "::jsonb" if connection.vendor == "postgresql" else ""
    prev_hash = (
        AuditEvent.objects.get(sequence=sequence - 1).hash if sequence > 1 else (chain.GENESIS_HASH)
    )
    inserted = {**inserted, "prev_hash": prev_hash}
    new_hash = hashlib.sha256(chain.canonical(inserted)).hexdigest()
    columns = [name for name in chain.HASHED_FIELDS if name != "sequence"]
    raw_sql(
        f"INSERT INTO audit_auditevent (sequence, {', '.join(columns)}, hash) "  # noqa: S608
        f"VALUES (%s, {', '.join('%s' + cast if c == 'details' else '%s' for c in columns)}, %s)",
        [
            sequence,
            *[json.dumps(inserted[c]) if c == "details" else inserted[c] for c in columns],
            new_hash,
        ],
    )
    prev_hash = new_hash
    for event in AuditEvent.objects.filter(sequence__gt=sequence).order_by("sequence"):
        fields = {name: getattr(event, name) for name in chain.HASHED_FIELDS}
        fields.update(prev_hash=prev_hash, key_id="")
        prev_hash = hashlib.sha256(chain.canonical(fields)).hexdigest()
        raw_sql(
            "UPDATE audit_auditevent SET prev_hash = %s, hash = %s, key_id = '' "
            "WHERE sequence = %s",
            [fields["prev_hash"], prev_hash, event.sequence],
        )


def delete_and_relink(sequence: int) -> None:
    """Delete event `sequence` without the key: later events move down one number and are
    re-hashed with plain SHA-256, keeping their key ids (no gap, every link consistent)."""
    raw_sql("DELETE FROM audit_auditevent WHERE sequence = %s", [sequence])
    for event in AuditEvent.objects.filter(sequence__gt=sequence).order_by("sequence"):
        raw_sql(
            "UPDATE audit_auditevent SET sequence = sequence - 1 WHERE sequence = %s",
            [event.sequence],
        )
    prev_hash = (
        AuditEvent.objects.get(sequence=sequence - 1).hash if sequence > 1 else (chain.GENESIS_HASH)
    )
    for event in AuditEvent.objects.filter(sequence__gte=sequence).order_by("sequence"):
        fields = {name: getattr(event, name) for name in chain.HASHED_FIELDS}
        fields["prev_hash"] = prev_hash
        prev_hash = hashlib.sha256(chain.canonical(fields)).hexdigest()
        raw_sql(
            "UPDATE audit_auditevent SET prev_hash = %s, hash = %s WHERE sequence = %s",
            [fields["prev_hash"], prev_hash, event.sequence],
        )


def raw_sql(sql: str, params: list[Any] | None = None) -> None:
    """Run SQL behind the application's back (the models refuse to change audit rows)."""
    with connection.cursor() as cursor:
        cursor.execute(sql, params or [])


Forgery = Literal["held", "unkeyed", "plain"]


def forge_from(
    sequence: int,
    details: dict[str, Any],
    *,
    key: Forgery = "held",
    resign: bool = False,
    through: int | None = None,
) -> None:
    """Rewrite event `sequence`'s details and recompute every later hash, the way someone
    who can write the database could:

    - `key="held"`: with the chain key (someone holding the database and the key) — a chain
      consistent in itself, which only signed checkpoints and anchors give away;
    - `key="unkeyed"`: without the key, as format 1 events (empty key id, plain SHA-256);
    - `key="plain"`: without the key, keeping each event's key id but hashing with plain
      SHA-256 (what the unkeyed chain did).

    `through` stops the rewrite at that sequence (later events keep their stored link and
    hash). With `resign`, also re-sign the checkpoints from there on with the current HMAC
    key."""
    cast = "::jsonb" if connection.vendor == "postgresql" else ""
    prev_hash = AuditEvent.objects.get(sequence=sequence - 1).hash if sequence > 1 else None
    events = AuditEvent.objects.filter(sequence__gte=sequence).order_by("sequence")
    if through is not None:
        events = events.filter(sequence__lte=through)
    for event in events:
        fields = {name: getattr(event, name) for name in chain.HASHED_FIELDS}
        if event.sequence == sequence:
            fields["details"] = details
        if prev_hash is not None:
            fields["prev_hash"] = prev_hash
        if key == "unkeyed":
            fields["key_id"] = ""
        if key == "held":
            new_hash = chain.event_hash(fields)
        else:
            new_hash = hashlib.sha256(chain.canonical(fields)).hexdigest()
        raw_sql(
            f"UPDATE audit_auditevent SET details = %s{cast}, prev_hash = %s, hash = %s, "  # noqa: S608
            "key_id = %s WHERE sequence = %s",
            [
                json.dumps(fields["details"]),
                fields["prev_hash"],
                new_hash,
                fields["key_id"],
                event.sequence,
            ],
        )
        prev_hash = new_hash
    if not resign:
        return
    signing_key = chain.signing_key()
    for checkpoint in AuditCheckpoint.objects.filter(sequence__gte=sequence):
        head_hash = AuditEvent.objects.get(sequence=checkpoint.sequence).hash
        signature = chain.checkpoint_signature(
            signing_key,
            sequence=checkpoint.sequence,
            head_hash=head_hash,
            signed_at=checkpoint.signed_at,
            kid=checkpoint.key_id,
        )
        raw_sql(
            "UPDATE audit_auditcheckpoint SET head_hash = %s, signature = %s WHERE id = %s",
            [head_hash, signature, checkpoint.pk],
        )
