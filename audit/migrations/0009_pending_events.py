"""Pending audit events (audit.PendingAuditEvent) and, on PostgreSQL, their guard.

One statement-level trigger refuses UPDATE and TRUNCATE on the pending table, and DELETE
unless the deleting session holds the chain's advisory lock (key 0x6175646974, "audit":
pg_locks shows it as classid 97, objid 1969514868, objsubid 1): only the chainer, which
copies the rows into the chain in the same transaction, removes them. See docs/audit.md.
"""

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models


FUNCTION = """
CREATE OR REPLACE FUNCTION audit_pending_guard() RETURNS trigger AS $$
BEGIN
    IF TG_OP = 'DELETE' AND EXISTS (
        SELECT 1 FROM pg_locks
        WHERE locktype = 'advisory' AND pid = pg_backend_pid() AND granted
          AND classid = 97 AND objid = 1969514868 AND objsubid = 1
    ) THEN
        RETURN NULL;
    END IF;
    RAISE EXCEPTION 'pending audit events are append-only: % on % refused (only the '
        'chainer, holding the chain lock, deletes them)', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END;
$$ LANGUAGE plpgsql;
"""


def create_trigger(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    schema_editor.execute(FUNCTION, params=None)  # the % signs are PL/pgSQL, not placeholders
    schema_editor.execute(
        "CREATE TRIGGER audit_pendingauditevent_guard "
        "BEFORE UPDATE OR DELETE OR TRUNCATE ON audit_pendingauditevent "
        "FOR EACH STATEMENT EXECUTE FUNCTION audit_pending_guard();"
    )


def drop_trigger(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    schema_editor.execute(
        "DROP TRIGGER IF EXISTS audit_pendingauditevent_guard ON audit_pendingauditevent;"
    )
    schema_editor.execute("DROP FUNCTION IF EXISTS audit_pending_guard();")


class Migration(migrations.Migration):
    dependencies = [
        ("audit", "0008_event_key_id"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.CreateModel(
            name="PendingAuditEvent",
            fields=[
                ("id", models.BigAutoField(primary_key=True, serialize=False)),
                ("occurred_at", models.DateTimeField()),
                ("ip", models.GenericIPAddressField(blank=True, null=True)),
                ("user_agent", models.CharField(blank=True, max_length=512)),
                ("session_hash", models.CharField(blank=True, max_length=64)),
                ("request_id", models.CharField(blank=True, max_length=64)),
                ("action", models.CharField(max_length=64)),
                ("target_type", models.CharField(blank=True, max_length=32)),
                ("target_id", models.CharField(blank=True, max_length=64)),
                ("outcome", models.CharField(max_length=16)),
                ("details", models.JSONField(blank=True, default=dict)),
                (
                    "actor",
                    models.ForeignKey(
                        blank=True,
                        db_index=False,
                        null=True,
                        on_delete=django.db.models.deletion.PROTECT,
                        related_name="+",
                        to=settings.AUTH_USER_MODEL,
                    ),
                ),
            ],
            options={
                "ordering": ["id"],
            },
        ),
        migrations.RunPython(create_trigger, drop_trigger, elidable=False),
    ]
