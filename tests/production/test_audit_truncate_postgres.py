"""TRUNCATE on the audit tables is refused on PostgreSQL (migration audit/0007).

Run by `make test-production`. The row triggers of audit/0002 never see a TRUNCATE; the
statement-level trigger of audit/0007 refuses it for every audit table, named directly or
reached through CASCADE, whoever asks — here the tests' own role, which owns the tables.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from django.core.management import call_command
from django.db import DatabaseError, connection, transaction
from django.utils import timezone

from audit.catalogue import AuditAction
from audit.models import AuditAnchor, AuditCheckpoint, AuditEvent
from audit.services import audit_record, checkpoint_create
from audit.testing import raw_sql

pytestmark = [pytest.mark.production, pytest.mark.django_db(transaction=True)]

TABLES = ("audit_auditevent", "audit_auditcheckpoint", "audit_auditanchor")
MIGRATION = "0007_refuse_truncate"
PREVIOUS = "0006_conversation_actions"


@pytest.fixture(autouse=True)
def _no_s3_anchor(settings: Any) -> None:
    """These tests are about the database: checkpoints stay in it."""
    settings.AUDIT_ANCHOR_S3_BUCKET = ""


@pytest.fixture
def audit_rows() -> Iterator[dict[str, int]]:
    """A row in each audit table; yields the row counts."""
    audit_record(action=AuditAction.LOGIN, actor=None)
    checkpoint = checkpoint_create()
    now = timezone.now()
    AuditAnchor(
        checkpoint=checkpoint,
        anchored_at=now,
        bucket="audit-anchors",
        key="audit-checkpoints/1.json",
        retain_until=now + timedelta(days=1),
    ).save()
    yield counts()


def counts() -> dict[str, int]:
    return {
        "audit_auditevent": AuditEvent.objects.count(),
        "audit_auditcheckpoint": AuditCheckpoint.objects.count(),
        "audit_auditanchor": AuditAnchor.objects.count(),
    }


def truncate_triggers() -> dict[str, str]:
    """The TRUNCATE triggers on the audit tables: table -> pg_trigger.tgenabled."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT c.relname, t.tgenabled FROM pg_trigger t "
            "JOIN pg_class c ON c.oid = t.tgrelid "
            "WHERE t.tgname = c.relname || '_no_truncate' AND c.relname = ANY(%s)",
            [list(TABLES)],
        )
        rows = cursor.fetchall()
    return {
        name: (state.decode() if isinstance(state, bytes) else str(state)) for name, state in rows
    }


# Each table, with and without CASCADE. The checkpoints cannot be truncated alone without
# CASCADE (the anchors refer to them: PostgreSQL refuses that before any trigger), so the plain
# statement names both tables.
STATEMENTS = {
    "TRUNCATE audit_auditevent": "audit_auditevent",
    "TRUNCATE audit_auditevent CASCADE": "audit_auditevent",
    "TRUNCATE audit_auditcheckpoint, audit_auditanchor": "audit_auditcheckpoint",
    "TRUNCATE audit_auditcheckpoint CASCADE": "audit_auditcheckpoint",
    "TRUNCATE audit_auditanchor": "audit_auditanchor",
    "TRUNCATE audit_auditanchor CASCADE": "audit_auditanchor",
}
REPORTED = "TRUNCATE audit_auditevent, audit_auditcheckpoint, audit_auditanchor CASCADE"
STATEMENTS[REPORTED] = "audit_auditevent"  # as issue 15 reported it


class Rollback(Exception):
    """Leaves a transaction by rolling it back."""


@pytest.mark.parametrize(("sql", "table"), list(STATEMENTS.items()), ids=list(STATEMENTS))
def test_truncate_of_an_audit_table_is_refused_and_the_rows_stay(
    audit_rows: dict[str, int], sql: str, table: str
) -> None:
    assert all(audit_rows.values())

    with pytest.raises(DatabaseError) as refused:
        raw_sql(sql)

    assert isinstance(refused.value.__cause__, psycopg.errors.InsufficientPrivilege)
    assert f"audit records are append-only: TRUNCATE on {table} refused" in str(refused.value)
    assert counts() == audit_rows


def test_the_checkpoints_alone_cannot_be_truncated_either(audit_rows: dict[str, int]) -> None:
    with pytest.raises(DatabaseError):
        raw_sql("TRUNCATE audit_auditcheckpoint")
    assert counts() == audit_rows


def test_a_table_reached_only_through_cascade_refuses_too(audit_rows: dict[str, int]) -> None:
    """With the checkpoints' own trigger off (as their owner could), the cascade to the
    anchors is still refused by the anchors' trigger."""
    with pytest.raises(Rollback), transaction.atomic():
        raw_sql(
            "ALTER TABLE audit_auditcheckpoint DISABLE TRIGGER audit_auditcheckpoint_no_truncate"
        )
        with pytest.raises(DatabaseError) as refused, transaction.atomic():
            raw_sql("TRUNCATE audit_auditcheckpoint CASCADE")
        raise Rollback

    assert "TRUNCATE on audit_auditanchor refused" in str(refused.value)
    assert truncate_triggers() == dict.fromkeys(TABLES, "O")
    assert counts() == audit_rows


def test_every_audit_table_has_its_truncate_trigger_enabled() -> None:
    assert truncate_triggers() == dict.fromkeys(TABLES, "O")


def test_the_migration_reverses_and_applies_cleanly() -> None:
    try:
        call_command("migrate", "audit", PREVIOUS, verbosity=0)
        assert truncate_triggers() == {}
        with connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM pg_proc WHERE proname = 'audit_refuse_truncate'")
            assert cursor.fetchone() == (0,)
    finally:
        call_command("migrate", "audit", verbosity=0)  # back to the latest, past MIGRATION too
    assert truncate_triggers() == dict.fromkeys(TABLES, "O")
