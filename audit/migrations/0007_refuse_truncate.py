"""PostgreSQL refuses TRUNCATE on the audit tables, whoever asks.

The row triggers of migration 0002 do not fire on TRUNCATE, which empties a table without
touching its rows one by one; a statement-level trigger does, for every table a TRUNCATE
empties (those reached through CASCADE included). The documented role setup also revokes the
TRUNCATE privilege from the application's role (docs/audit.md, "Database roles"). Other
databases have no TRUNCATE statement to refuse.
"""

from django.db import migrations

TABLES = ("audit_auditevent", "audit_auditcheckpoint", "audit_auditanchor")

FUNCTION = """
CREATE OR REPLACE FUNCTION audit_refuse_truncate() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'audit records are append-only: TRUNCATE on % refused', TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END;
$$ LANGUAGE plpgsql;
"""


def create_triggers(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    schema_editor.execute(FUNCTION, params=None)  # the % sign is PL/pgSQL, not a placeholder
    for table in TABLES:
        schema_editor.execute(
            f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
            "FOR EACH STATEMENT EXECUTE FUNCTION audit_refuse_truncate();"
        )


def drop_triggers(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    for table in TABLES:
        schema_editor.execute(f"DROP TRIGGER IF EXISTS {table}_no_truncate ON {table};")
    schema_editor.execute("DROP FUNCTION IF EXISTS audit_refuse_truncate();")


class Migration(migrations.Migration):
    dependencies = [("audit", "0006_conversation_actions")]

    operations = [migrations.RunPython(create_triggers, drop_triggers, elidable=False)]
