"""Compliance officers may erase a person on a privacy request (accounts/roles.py)."""

from django.db import migrations

from accounts.roles import roles_sync


def sync_roles(apps, schema_editor):
    roles_sync(apps)


class Migration(migrations.Migration):
    dependencies = [
        ("accounts", "0007_erasure"),
        # roles_sync gives each role exactly the permissions that exist: every app with role
        # permissions must be migrated first.
        ("admin", "0003_logentry_add_action_flag_choices"),
        ("audit", "0012_subject_keys_erasure"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("axes", "0010_accessattemptexpiration"),
        ("conversations", "0010_encrypt_transcripts"),
        ("costs", "0004_api_key_budgets"),
        ("guardrails", "0002_roles"),
        ("providers", "0002_seed_demo_model"),
    ]

    operations = [migrations.RunPython(sync_roles, migrations.RunPython.noop)]
