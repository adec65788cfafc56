"""The three roles, as groups with permissions. Created by a data migration (0003_roles).

* **Staff** — everyone who chats. No console access.
* **Compliance officer** — reads the audit trail, transcripts (each opening audited),
  people, API keys, models, prices, budgets and spend; exports and verifies the audit trail;
  places and releases legal holds; erases a person on a privacy request (accounts/erasure.py).
  Changes nothing else.
* **Administrator** — manages people, groups, the model catalogue, prices, budgets and the
  guardrail policy (compliance officers read it); issues and revokes API keys; reads
  spend; unlocks locked-out accounts; reads the audit trail. Cannot read transcripts, export
  the audit trail or alter it (nobody can alter it).

Console access is the `accounts.access_console` permission, not the `is_staff` flag.
Superusers keep every permission except those the audit trail refuses to everyone.
"""

from __future__ import annotations

from typing import Any

STAFF = "Staff"
COMPLIANCE_OFFICER = "Compliance officer"
ADMINISTRATOR = "Administrator"

ROLES: dict[str, tuple[str, ...]] = {
    STAFF: (),
    COMPLIANCE_OFFICER: (
        "accounts.access_console",
        "accounts.view_user",
        "accounts.manage_legal_hold",
        "accounts.erase_person",
        "accounts.view_apikey",
        "auth.view_group",
        "conversations.view_conversation",
        "conversations.view_message",
        "conversations.manage_legal_hold",
        "providers.view_aimodel",
        "audit.view_auditevent",
        "audit.export_auditevent",
        "audit.verify_auditevent",
        "audit.view_auditcheckpoint",
        "audit.view_auditanchor",
        "admin.view_logentry",
        "costs.view_budget",
        "costs.view_budgetwindow",
        "costs.view_costentry",
        "costs.view_modelprice",
        "guardrails.view_guardrailpolicy",
        "retention.view_retentionpolicy",
    ),
    ADMINISTRATOR: (
        "accounts.access_console",
        "accounts.view_user",
        "accounts.add_user",
        "accounts.change_user",
        "accounts.view_apikey",
        "accounts.add_apikey",
        "accounts.change_apikey",
        "auth.view_group",
        "auth.add_group",
        "auth.change_group",
        "auth.delete_group",
        "providers.view_aimodel",
        "providers.add_aimodel",
        "providers.change_aimodel",
        "providers.delete_aimodel",
        "audit.view_auditevent",
        "audit.view_auditcheckpoint",
        "admin.view_logentry",
        "axes.view_accessattempt",
        "axes.delete_accessattempt",
        "axes.view_accessfailurelog",
        "axes.view_accesslog",
        "costs.view_budget",
        "costs.add_budget",
        "costs.change_budget",
        "costs.delete_budget",
        "costs.view_budgetwindow",
        "costs.view_costentry",
        "costs.view_modelprice",
        "costs.add_modelprice",
        "costs.change_modelprice",
        "guardrails.view_guardrailpolicy",
        "guardrails.change_guardrailpolicy",
        "retention.view_retentionpolicy",
        "retention.add_retentionpolicy",
        "retention.change_retentionpolicy",
        "retention.delete_retentionpolicy",
    ),
}


def roles_sync(apps: Any) -> None:
    """Create the role groups and give each exactly its permissions (idempotent).

    `apps` is a migration's app registry or `django.apps.apps`. Permissions of apps not
    migrated yet are skipped: each app that adds role permissions re-runs this in a data
    migration of its own (a test checks every listed permission exists in the end).
    """
    from django.contrib.auth.management import create_permissions

    # Permissions are normally created after migrations run; the roles need them now.
    for app_config in apps.get_app_configs():
        original = getattr(app_config, "models_module", None)
        app_config.models_module = original or True
        create_permissions(app_config, apps=apps, verbosity=0)
        app_config.models_module = original

    from audit.governed import governed_writes

    group_model = apps.get_model("auth", "Group")
    permission_model = apps.get_model("auth", "Permission")
    # Run by data migrations: the role definitions are the code above and its history.
    with governed_writes(reason="roles_sync"):
        _roles_sync(group_model, permission_model)


def _roles_sync(group_model: Any, permission_model: Any) -> None:
    for name, codes in ROLES.items():
        group, _ = group_model.objects.get_or_create(name=name)
        permissions = [
            permission
            for app_label, codename in (code.split(".") for code in codes)
            for permission in permission_model.objects.filter(
                content_type__app_label=app_label, codename=codename
            )
        ]
        group.permissions.set(permissions)
