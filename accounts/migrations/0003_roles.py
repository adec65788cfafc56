"""Create the Staff, Compliance officer and Administrator groups (accounts/roles.py)."""

from django.db import migrations

from accounts.roles import roles_sync


def create_roles(apps, schema_editor):
    roles_sync(apps)


class Migration(migrations.Migration):
    dependencies = [
        ("accounts", "0002_legal_hold_console_permissions"),
        ("admin", "0003_logentry_add_action_flag_choices"),
        ("audit", "0002_append_only_triggers"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("axes", "0010_accessattemptexpiration"),
        ("conversations", "0003_legal_hold_request_id"),
        ("providers", "0002_seed_demo_model"),
    ]

    # Reversing leaves the groups: people may already belong to them.
    operations = [migrations.RunPython(create_roles, migrations.RunPython.noop)]
