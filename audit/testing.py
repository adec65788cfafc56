"""Helpers for tests and benchmarks of the audit trail: seeding a chain, and tampering with
it the way an attacker with database access (and perhaps the HMAC key) could."""

from __future__ import annotations

import json
from typing import Any

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


def raw_sql(sql: str, params: list[Any] | None = None) -> None:
    """Run SQL behind the application's back (the models refuse to change audit rows)."""
    with connection.cursor() as cursor:
        cursor.execute(sql, params or [])


def forge_from(sequence: int, details: dict[str, Any], *, resign: bool = False) -> None:
    """Rewrite event `sequence`'s details and recompute every later hash: a chain that is
    consistent in itself. With `resign`, also re-sign the checkpoints from there on with the
    current HMAC key — what someone holding the database and the key could do."""
    cast = "::jsonb" if connection.vendor == "postgresql" else ""
    prev_hash = AuditEvent.objects.get(sequence=sequence - 1).hash if sequence > 1 else None
    for event in AuditEvent.objects.filter(sequence__gte=sequence).order_by("sequence"):
        fields = {name: getattr(event, name) for name in chain.HASHED_FIELDS}
        if event.sequence == sequence:
            fields["details"] = details
        if prev_hash is not None:
            fields["prev_hash"] = prev_hash
        new_hash = chain.event_hash(fields)
        raw_sql(
            f"UPDATE audit_auditevent SET details = %s{cast}, prev_hash = %s, hash = %s "  # noqa: S608
            "WHERE sequence = %s",
            [json.dumps(fields["details"]), fields["prev_hash"], new_hash, event.sequence],
        )
        prev_hash = new_hash
    if not resign:
        return
    key = chain.signing_key()
    for checkpoint in AuditCheckpoint.objects.filter(sequence__gte=sequence):
        head_hash = AuditEvent.objects.get(sequence=checkpoint.sequence).hash
        signature = chain.checkpoint_signature(
            key,
            sequence=checkpoint.sequence,
            head_hash=head_hash,
            signed_at=checkpoint.signed_at,
            kid=checkpoint.key_id,
        )
        raw_sql(
            "UPDATE audit_auditcheckpoint SET head_hash = %s, signature = %s WHERE id = %s",
            [head_hash, signature, checkpoint.pk],
        )
