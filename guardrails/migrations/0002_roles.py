"""Give the roles their permissions on the guardrail policy (accounts/roles.py)."""

from django.db import migrations

from accounts.roles import roles_sync


def sync_roles(apps, schema_editor):
    roles_sync(apps)


class Migration(migrations.Migration):
    dependencies = [
        ("accounts", "0003_roles"),
        ("guardrails", "0001_policy"),
    ]

    operations = [migrations.RunPython(sync_roles, migrations.RunPython.noop)]
