"""The chain itself: hashing, append-only records, checkpoints and tamper detection.

These run on SQLite (no trigger there, so tampering needs no preparation); the same
tampering on PostgreSQL, with its trigger, is in tests/production/test_audit_postgres.py.
"""

from __future__ import annotations

from datetime import timedelta
from io import StringIO
from typing import Any

import pytest
from django.core.management import call_command
from django.db import connection
from django.utils import timezone

from audit import chain, personal
from audit.catalogue import AuditAction, AuditOutcome
from audit.models import AppendOnlyError, AuditCheckpoint, AuditEvent
from audit.services import audit_record, checkpoint_create
from audit.testing import forge_from, raw_sql, seed_events
from audit.verify import verify_chain

pytestmark = pytest.mark.django_db


def fields_of(sequence: int) -> dict[str, Any]:
    row = AuditEvent.objects.values(*chain.HASHED_FIELDS).get(sequence=sequence)
    return row


# --- Writing ---------------------------------------------------------------------------------


def test_events_are_numbered_from_one_and_linked(owner) -> None:
    first = audit_record(action=AuditAction.LOGIN, actor=owner, target=owner)
    second = audit_record(action=AuditAction.LOGOUT, actor=owner, target=owner)
    assert (first.sequence, second.sequence) == (1, 2)
    assert first.prev_hash == chain.GENESIS_HASH
    assert second.prev_hash == first.hash
    # The e-mail is stored sealed (audit/personal.py); readers see it through reveal.
    assert first.actor_email.startswith(personal.SEALED_PREFIX)
    assert personal.reveal(first).actor_email == "alice@example.com"
    assert (first.target_type, first.target_id) == ("user", str(owner.public_id))


def test_the_stored_row_hashes_to_its_hash(owner) -> None:
    event = audit_record(
        action=AuditAction.MESSAGE_SENT,
        actor=owner,
        details={"uuid": owner.public_id, "when": timezone.now(), "nested": {"b": 1, "a": [1]}},
    )
    assert chain.event_hash(fields_of(event.sequence)) == event.hash


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("action", "auth.logout"),
        ("outcome", "denied"),
        ("actor_email", "mallory@example.com"),
        ("ip", "10.9.9.9"),
        ("target_id", "other"),
        ("details", {"n": 2}),
        ("request_id", "forged"),
        ("prev_hash", "f" * 64),
    ],
)
def test_the_hash_covers_every_field(owner, field: str, value: Any) -> None:
    event = audit_record(action=AuditAction.LOGIN, actor=owner, details={"n": 1})
    fields = fields_of(event.sequence)
    fields[field] = value
    assert chain.event_hash(fields) != event.hash


def test_the_hash_covers_the_time(owner) -> None:
    event = audit_record(action=AuditAction.LOGIN, actor=owner)
    fields = fields_of(event.sequence)
    fields["occurred_at"] += timedelta(microseconds=1)
    assert chain.event_hash(fields) != event.hash


def test_records_refuse_update_and_delete_in_python(owner) -> None:
    event = audit_record(action=AuditAction.LOGIN, actor=owner)
    event.action = AuditAction.LOGOUT
    with pytest.raises(AppendOnlyError):
        event.save()
    with pytest.raises(AppendOnlyError):
        event.delete()
    with pytest.raises(AppendOnlyError):
        AuditEvent.objects.filter(pk=event.pk).update(action="auth.logout")
    with pytest.raises(AppendOnlyError):
        AuditEvent.objects.all().delete()
    with pytest.raises(AppendOnlyError):
        AuditEvent.objects.bulk_create([AuditEvent(sequence=99, hash="x", prev_hash="y")])
    checkpoint = checkpoint_create()
    with pytest.raises(AppendOnlyError):
        checkpoint.delete()
    with pytest.raises(AppendOnlyError):
        AuditCheckpoint.objects.update(sequence=0)
    assert AuditEvent.objects.get(pk=event.pk).action == AuditAction.LOGIN


def test_oversized_details_are_replaced_by_their_keys(owner) -> None:
    event = audit_record(action=AuditAction.LOGIN, actor=owner, details={"blob": "x" * 50_000})
    assert event.details == {"truncated": True, "keys": ["blob"]}
    assert verify_chain().ok


# --- Checkpoints ----------------------------------------------------------------------------


def test_a_checkpoint_is_written_even_when_nothing_happened() -> None:
    first = checkpoint_create()
    second = checkpoint_create()
    assert (first.sequence, second.sequence) == (0, 0)
    assert first.head_hash == second.head_hash == chain.GENESIS_HASH
    assert AuditCheckpoint.objects.count() == 2
    report = verify_chain()
    assert report.ok and report.checkpoints_checked == 2


def test_a_checkpoint_signs_the_head_with_the_key_from_the_environment(owner, settings) -> None:
    seed_events(3, owner)
    checkpoint = checkpoint_create()
    assert checkpoint.sequence == 3
    assert checkpoint.head_hash == AuditEvent.objects.get(sequence=3).hash
    assert checkpoint.key_id == chain.key_id(settings.AUDIT_HMAC_KEY.encode())
    assert chain.checkpoint_signature_valid(
        sequence=3,
        head_hash=checkpoint.head_hash,
        signed_at=checkpoint.signed_at,
        kid=checkpoint.key_id,
        signature=checkpoint.signature,
    )


def test_checkpoints_signed_with_a_retired_key_still_verify(owner, settings) -> None:
    seed_events(2, owner)
    old_key = settings.AUDIT_HMAC_KEY
    checkpoint_create()
    settings.AUDIT_HMAC_KEY = "a-brand-new-checkpoint-key-after-rotation-0001"
    settings.AUDIT_HMAC_PREVIOUS_KEYS = [old_key]
    checkpoint_create()
    assert verify_chain().ok

    settings.AUDIT_HMAC_PREVIOUS_KEYS = []
    report = verify_chain()
    # The events hashed with the retired key are the first thing that can no longer be
    # verified (the keyed chain); then its checkpoints.
    assert report.problem is not None and report.problem.kind == "unknown_key"
    assert report.problem.sequence == 1 and "not configured" in report.problem.message


def test_a_forged_checkpoint_signature_is_caught(owner) -> None:
    seed_events(4, owner)
    checkpoint = checkpoint_create()
    raw_sql(
        "UPDATE audit_auditcheckpoint SET signature = %s WHERE id = %s", ["0" * 64, checkpoint.pk]
    )
    report = verify_chain()
    assert report.problem is not None
    assert (report.problem.kind, report.problem.sequence) == ("checkpoint_signature", 4)


# --- Tampering -------------------------------------------------------------------------------


def test_an_intact_chain_verifies(owner) -> None:
    seed_events(50, owner)
    checkpoint_create()
    seed_events(10, owner)
    report = verify_chain()
    assert report.ok, report.summary()
    assert (report.events_checked, report.last_sequence, report.checkpoints_checked) == (60, 60, 1)


def test_changed_details_are_caught_at_their_sequence(owner) -> None:
    seed_events(20, owner)
    raw_sql("UPDATE audit_auditevent SET details = %s WHERE sequence = 7", ['{"n": 999}'])
    report = verify_chain()
    assert report.problem is not None
    assert (report.problem.kind, report.problem.sequence) == ("hash_mismatch", 7)
    assert report.events_checked == 6


def test_a_row_deleted_from_the_middle_is_caught_as_a_gap(owner) -> None:
    seed_events(20, owner)
    raw_sql("DELETE FROM audit_auditevent WHERE sequence = 11")
    report = verify_chain()
    assert report.problem is not None
    assert (report.problem.kind, report.problem.sequence) == ("gap", 11)


def test_rows_deleted_after_a_checkpoint_are_caught_as_truncation(owner) -> None:
    seed_events(20, owner)
    checkpoint_create()
    raw_sql("DELETE FROM audit_auditevent WHERE sequence > 17")
    report = verify_chain()
    assert report.problem is not None
    assert (report.problem.kind, report.problem.sequence) == ("truncated", 18)
    assert "#20" in report.problem.message and "#17" in report.problem.message


def test_a_rewrite_with_every_later_hash_recomputed_is_caught_by_the_checkpoint(owner) -> None:
    seed_events(10, owner)
    checkpoint_create()
    seed_events(10, owner)
    checkpoint_create()
    forge_from(5, {"n": "forged"})
    # The forged chain is self-consistent: only the signed checkpoint gives it away.
    report = verify_chain()
    assert report.problem is not None
    assert (report.problem.kind, report.problem.sequence) == ("checkpoint_mismatch", 10)
    assert "after #0 up to #10" in report.problem.message


def test_verify_command_exits_non_zero_and_names_the_sequence(owner) -> None:
    seed_events(12, owner)
    out, err = StringIO(), StringIO()
    call_command("verify_audit_chain", stdout=out, stderr=err)
    assert "OK" in out.getvalue()

    raw_sql("UPDATE audit_auditevent SET outcome = 'success' WHERE sequence = 9")
    raw_sql("UPDATE audit_auditevent SET action = 'auth.logout' WHERE sequence = 9")
    with pytest.raises(SystemExit) as exit_info:
        call_command("verify_audit_chain", stdout=out, stderr=err)
    assert exit_info.value.code == 1
    assert "sequence #9" in err.getvalue() and "hash_mismatch" in err.getvalue()

    # Each verification is itself recorded, with its result.
    recorded = AuditEvent.objects.filter(action=AuditAction.CHAIN_VERIFIED).order_by("sequence")
    assert [e.outcome for e in recorded] == [AuditOutcome.SUCCESS, AuditOutcome.FAILED]
    assert recorded.last().details["failed_sequence"] == 9  # type: ignore[union-attr]


def test_checkpoint_command_prints_the_signed_head(owner) -> None:
    seed_events(3, owner)
    out = StringIO()
    call_command("audit_checkpoint", stdout=out)
    assert "head #3" in out.getvalue()
    assert AuditCheckpoint.objects.get().sequence == 3


def test_verification_reads_in_pages_not_all_at_once(owner, monkeypatch) -> None:
    from audit import verify

    monkeypatch.setattr(verify, "PAGE_SIZE", 7)
    seed_events(30, owner)
    checkpoint_create()
    queries: list[str] = []

    def record(run: Any, sql: str, *args: Any) -> Any:
        queries.append(sql)
        return run(sql, *args)

    with connection.execute_wrapper(record):
        report = verify_chain()
    assert report.ok and report.events_checked == 30
    event_pages = [q for q in queries if 'FROM "audit_auditevent"' in q and "LIMIT 7" in q]
    assert len(event_pages) == 6  # pages of 7, 7, 7, 7 and 2 events, then an empty one
