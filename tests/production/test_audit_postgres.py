"""The audit trail on PostgreSQL: the append-only trigger, concurrent writers, tampering.

Run by `make test-production`. The trigger of migration 0002 refuses UPDATE and DELETE
whoever asks; the tampering tests therefore disable it first, as the table's owner could,
and always enable it again afterwards. The same tampering without a trigger (SQLite) is in
audit/tests/test_chain.py.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import timedelta
from io import StringIO
from typing import Any

import psycopg
import pytest
from django.core.management import call_command
from django.db import DatabaseError, connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from audit.catalogue import AuditAction, AuditOutcome
from audit.models import AppendOnlyError, AuditAnchor, AuditCheckpoint, AuditEvent
from audit.services import audit_chain_flush, audit_record, checkpoint_create
from audit.testing import forge_from, raw_sql, seed_events
from audit.verify import verify_chain

pytestmark = [pytest.mark.production, pytest.mark.django_db(transaction=True)]

WRITERS = 50
EVENTS_PER_WRITER = 4


@pytest.fixture(autouse=True)
def _no_s3_anchor(settings: Any) -> None:
    """These tests are about the database: checkpoints stay in it."""
    settings.AUDIT_ANCHOR_S3_BUCKET = ""


def trigger_state(name: str) -> str:
    """pg_trigger.tgenabled: 'O' fires (the default), 'D' disabled."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT tgenabled FROM pg_trigger WHERE tgname = %s", [name])
        row = cursor.fetchone()
    assert row is not None, f"trigger {name} does not exist"
    state = row[0]
    return state.decode() if isinstance(state, bytes) else str(state)


@pytest.fixture
def unguarded_events() -> Iterator[None]:
    """The event table with its append-only trigger disabled, restored whatever happens."""
    assert trigger_state("audit_auditevent_append_only") == "O"
    raw_sql("ALTER TABLE audit_auditevent DISABLE TRIGGER audit_auditevent_append_only")
    try:
        yield
    finally:
        raw_sql("ALTER TABLE audit_auditevent ENABLE TRIGGER audit_auditevent_append_only")
    assert trigger_state("audit_auditevent_append_only") == "O"


# --- Append-only -----------------------------------------------------------------------------


def _one_row_of(table: str) -> int:
    """Create a row in `table` (through the services) and return its primary key."""
    audit_record(action=AuditAction.LOGIN, actor=None)  # chained just after its commit
    audit_chain_flush()  # by this process's chainer thread: wait for it
    if table == "audit_auditevent":
        return AuditEvent.objects.latest("sequence").sequence
    checkpoint = checkpoint_create()
    if table == "audit_auditcheckpoint":
        return checkpoint.pk
    now = timezone.now()
    anchor = AuditAnchor(
        checkpoint=checkpoint,
        anchored_at=now,
        bucket="audit-anchors",
        key="audit-checkpoints/1.json",
        retain_until=now + timedelta(days=1),
    )
    anchor.save()
    return anchor.pk


TABLE_COLUMNS = {
    # table: (primary key column, a text column to overwrite)
    "audit_auditevent": ("sequence", "action"),
    "audit_auditcheckpoint": ("id", "key_id"),
    "audit_auditanchor": ("id", "bucket"),
}


@pytest.mark.parametrize("table", list(TABLE_COLUMNS))
def test_the_trigger_refuses_raw_update_and_delete(table: str) -> None:
    pk = _one_row_of(table)
    pk_column, text_column = TABLE_COLUMNS[table]
    statements = {
        "UPDATE": f"UPDATE {table} SET {text_column} = 'forged' WHERE {pk_column} = %s",  # noqa: S608
        "DELETE": f"DELETE FROM {table} WHERE {pk_column} = %s",  # noqa: S608
    }
    select = f"SELECT {text_column} FROM {table} WHERE {pk_column} = %s"  # noqa: S608
    with connection.cursor() as cursor:
        cursor.execute(select, [pk])
        before = cursor.fetchone()
    assert before is not None

    for operation, sql in statements.items():
        with pytest.raises(DatabaseError) as refused:
            raw_sql(sql, [pk])
        assert isinstance(refused.value.__cause__, psycopg.errors.InsufficientPrivilege)
        assert f"append-only: {operation} on {table} refused" in str(refused.value)

    with connection.cursor() as cursor:
        cursor.execute(select, [pk])
        assert cursor.fetchone() == before


def test_every_audit_table_has_its_trigger_enabled() -> None:
    for table in TABLE_COLUMNS:
        assert trigger_state(f"{table}_append_only") == "O"


def test_the_models_refuse_before_any_sql_is_sent() -> None:
    audit_record(action=AuditAction.LOGIN, actor=None, details={"n": 1})
    audit_chain_flush()  # chained just after its commit, by a thread: wait for it
    event = AuditEvent.objects.get()
    checkpoint = checkpoint_create()
    event.action = AuditAction.LOGOUT
    checkpoint.sequence = 99
    attempts = [
        event.save,
        event.delete,
        lambda: event.save(update_fields=["action"]),
        lambda: AuditEvent.objects.filter(pk=event.pk).update(action="auth.logout"),
        lambda: AuditEvent.objects.all().delete(),
        lambda: AuditEvent.objects.bulk_update([event], ["action"]),
        lambda: AuditEvent.objects.update_or_create(sequence=event.pk, defaults={"action": "x"}),
        lambda: AuditEvent.objects.bulk_create([AuditEvent(sequence=99, hash="x", prev_hash="y")]),
        checkpoint.save,
        checkpoint.delete,
        lambda: AuditCheckpoint.objects.update(sequence=0),
        lambda: AuditCheckpoint.objects.all().delete(),
    ]
    with CaptureQueriesContext(connection) as queries:
        for attempt in attempts:
            with pytest.raises(AppendOnlyError):
                attempt()
    writes = [q["sql"] for q in queries.captured_queries if not q["sql"].startswith("SELECT")]
    assert writes == []
    stored = AuditEvent.objects.get(pk=event.pk)
    assert (stored.action, stored.hash) == (AuditAction.LOGIN, event.hash)
    assert AuditCheckpoint.objects.get(pk=checkpoint.pk).sequence == 1
    assert verify_chain().ok


# --- Concurrent writers ------------------------------------------------------------------------


def test_concurrent_writers_never_fork_the_chain() -> None:
    barrier = threading.Barrier(WRITERS)
    errors: list[BaseException] = []
    recorded: list[int] = []
    lock = threading.Lock()

    def writer(index: int) -> None:
        try:
            barrier.wait(timeout=60)
            for n in range(EVENTS_PER_WRITER):
                event = audit_record(
                    action=AuditAction.MESSAGE_SENT,
                    actor=None,
                    details={"writer": index, "n": n},
                )
                with lock:
                    recorded.append(event.pending_id)  # type: ignore[attr-defined]
            if index % 10 == 0:  # checkpoints signed while the others write
                checkpoint_create()
        except BaseException as exc:
            with lock:
                errors.append(exc)
        finally:
            connection.close()  # each thread has its own connection

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(WRITERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads)
    assert errors == []

    total = WRITERS * EVENTS_PER_WRITER
    assert len(set(recorded)) == total  # each recorded once, in its own transaction
    stored = list(AuditEvent.objects.order_by("sequence").values_list("sequence", flat=True))
    assert stored == list(range(1, total + 1))
    writers_seen = {
        (d["writer"], d["n"]) for d in AuditEvent.objects.values_list("details", flat=True)
    }
    assert len(writers_seen) == total
    report = verify_chain()
    assert report.ok, report.summary()
    assert (report.events_checked, report.last_sequence) == (total, total)
    assert report.checkpoints_checked == AuditCheckpoint.objects.count() == WRITERS // 10


# --- Tampering (trigger disabled) --------------------------------------------------------------


def test_changed_details_are_caught_at_their_sequence(owner, unguarded_events) -> None:
    seed_events(10, owner)
    raw_sql("UPDATE audit_auditevent SET details = %s::jsonb WHERE sequence = 4", ['{"n": 999}'])
    report = verify_chain()
    assert report.problem is not None
    assert (report.problem.kind, report.problem.sequence) == ("hash_mismatch", 4)
    assert report.events_checked == 3


def test_a_row_deleted_from_the_middle_is_caught_as_a_gap(owner, unguarded_events) -> None:
    seed_events(10, owner)
    raw_sql("DELETE FROM audit_auditevent WHERE sequence = 5")
    report = verify_chain()
    assert report.problem is not None
    assert (report.problem.kind, report.problem.sequence) == ("gap", 5)
    assert report.events_checked == 4


def test_rows_deleted_after_a_checkpoint_are_caught_as_truncation(owner, unguarded_events) -> None:
    seed_events(10, owner)
    checkpoint_create()
    raw_sql("DELETE FROM audit_auditevent WHERE sequence > 8")
    report = verify_chain()
    assert report.problem is not None
    assert (report.problem.kind, report.problem.sequence) == ("truncated", 9)
    assert "#10" in report.problem.message and "#8" in report.problem.message


def test_a_rewrite_with_every_later_hash_recomputed_is_caught_by_the_checkpoint(
    owner, unguarded_events
) -> None:
    seed_events(6, owner)
    checkpoint_create()
    seed_events(4, owner)
    checkpoint_create()
    original = AuditEvent.objects.get(sequence=8).hash
    forge_from(8, {"n": "forged"})
    assert AuditEvent.objects.get(sequence=8).hash != original
    # The forged chain is self-consistent: only the signed checkpoint gives it away.
    report = verify_chain()
    assert report.problem is not None
    assert (report.problem.kind, report.problem.sequence) == ("checkpoint_mismatch", 10)
    assert "after #6 up to #10" in report.problem.message
    assert report.events_checked == 10 and report.checkpoints_checked == 2


def test_verify_command_on_an_intact_chain_exits_zero(owner) -> None:
    seed_events(5, owner)
    checkpoint_create()
    seed_events(2, owner)
    out, err = StringIO(), StringIO()
    call_command("verify_audit_chain", stdout=out, stderr=err)
    assert out.getvalue().startswith("OK")
    assert "7 events, 1 checkpoints" in out.getvalue()
    assert err.getvalue() == ""
    recorded = AuditEvent.objects.get(action=AuditAction.CHAIN_VERIFIED)
    assert recorded.outcome == AuditOutcome.SUCCESS and recorded.sequence == 8


def test_verify_command_on_a_tampered_chain_exits_one_naming_the_sequence(
    owner, unguarded_events
) -> None:
    seed_events(10, owner)
    raw_sql("UPDATE audit_auditevent SET details = %s::jsonb WHERE sequence = 6", ['{"n": 0}'])
    out, err = StringIO(), StringIO()
    with pytest.raises(SystemExit) as exit_info:
        call_command("verify_audit_chain", stdout=out, stderr=err)
    assert exit_info.value.code == 1
    assert "sequence #6" in err.getvalue() and "hash_mismatch" in err.getvalue()
    assert out.getvalue() == ""
    # The failed verification is itself recorded, with the sequence where it failed.
    recorded = AuditEvent.objects.get(action=AuditAction.CHAIN_VERIFIED)
    assert recorded.outcome == AuditOutcome.FAILED
    assert recorded.details["failed_sequence"] == 6
