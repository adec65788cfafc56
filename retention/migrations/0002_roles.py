"""Give the roles their permissions on retention policies (accounts/roles.py)."""

from django.db import migrations

from accounts.roles import roles_sync


def sync_roles(apps, schema_editor):
    roles_sync(apps)


class Migration(migrations.Migration):
    dependencies = [
        ("accounts", "0003_roles"),
        ("retention", "0001_policies"),
    ]

    operations = [migrations.RunPython(sync_roles, migrations.RunPython.noop)]
