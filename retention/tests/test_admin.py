"""Retention in the console: administrators manage the policies (each change audited),
compliance officers read them and the dry-run report, nobody else opens either."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import Group, Permission
from django.test import Client

from audit.catalogue import AuditAction, TargetType
from audit.models import AuditEvent
from conversations.models import Conversation
from retention.models import RetentionPolicy
from retention.tests.helpers import aged_conversation, is_intact

pytestmark = pytest.mark.django_db

POLICIES = "/admin/retention/retentionpolicy/"
REPORT = f"{POLICIES}report/"


def client_for(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def policy_form(**overrides: Any) -> dict[str, Any]:
    data = {
        "name": "Two years",
        "enabled": "on",
        "scope": "organisation",
        "group": "",
        "days": "730",
        "action": "erase",
    }
    data.update(overrides)
    return data


def test_an_administrator_adds_changes_and_deletes_a_policy_and_each_is_audited(
    administrator,
) -> None:
    client = client_for(administrator)
    response = client.post(f"{POLICIES}add/", policy_form())
    assert response.status_code == 302, response.content.decode()[:2000]
    policy = RetentionPolicy.objects.get()
    added = AuditEvent.objects.get(action=AuditAction.ADMIN_ADD)
    assert (added.target_type, added.target_id) == (TargetType.RETENTION_POLICY, str(policy.pk))
    assert added.actor_id == administrator.pk

    response = client.post(f"{POLICIES}{policy.pk}/change/", policy_form(days="365"))
    assert response.status_code == 302
    changed = AuditEvent.objects.get(action=AuditAction.ADMIN_CHANGE)
    assert changed.details["changed_fields"] == ["Days"]

    response = client.post(f"{POLICIES}{policy.pk}/delete/", {"post": "yes"})
    assert response.status_code == 302
    assert not RetentionPolicy.objects.exists()
    deleted = AuditEvent.objects.get(action=AuditAction.ADMIN_DELETE)
    assert deleted.target_id == str(policy.pk)


def test_a_department_policy_needs_a_department_that_is_not_a_role(administrator) -> None:
    client = client_for(administrator)
    response = client.post(f"{POLICIES}add/", policy_form(scope="department"))
    assert response.status_code == 200
    assert "A department policy needs a department." in response.content.decode()
    role = Group.objects.get(name="Staff")
    response = client.post(f"{POLICIES}add/", policy_form(scope="department", group=role.pk))
    assert response.status_code == 200
    legal = Group.objects.create(name="Legal")
    response = client.post(f"{POLICIES}add/", policy_form(scope="organisation", group=legal.pk))
    assert "names no department" in response.content.decode()
    response = client.post(f"{POLICIES}add/", policy_form(days="0"))
    assert response.status_code == 200
    assert not RetentionPolicy.objects.exists()
    response = client.post(f"{POLICIES}add/", policy_form(scope="department", group=legal.pk))
    assert response.status_code == 302
    assert RetentionPolicy.objects.get().group == legal


def test_a_compliance_officer_reads_policies_and_the_report_but_changes_nothing(
    compliance_officer,
) -> None:
    policy = RetentionPolicy.objects.create(name="Year", scope="organisation", days=365)
    client = client_for(compliance_officer)
    assert client.get(POLICIES).status_code == 200
    assert client.get(REPORT).status_code == 200
    assert client.post(f"{POLICIES}add/", policy_form()).status_code == 403
    response = client.post(f"{POLICIES}{policy.pk}/change/", policy_form(days="1"))
    assert response.status_code == 403
    policy.refresh_from_db()
    assert policy.days == 365


def test_the_report_shows_per_policy_counts_and_changes_nothing(administrator, owner) -> None:
    policy = RetentionPolicy.objects.create(name="Ninety days", scope="organisation", days=90)
    old = aged_conversation(owner, days=120, messages=3)
    held = aged_conversation(owner, days=100)
    Conversation.objects.filter(pk=held.pk).update(legal_hold=True)

    response = client_for(administrator).get(REPORT)

    assert response.status_code == 200
    page = response.content.decode()
    assert "Ninety days" in page
    [forecast] = [f for f in response.context["forecasts"] if f.rule.key == str(policy.pk)]
    assert (forecast.conversations, forecast.messages, forecast.held_skipped) == (1, 3, 1)
    assert forecast.oldest_activity == old.updated_at
    assert f'data-rule="{policy.pk}"' in page
    assert old.updated_at.strftime("%Y-%m-%d") in page
    assert "secret text" not in page and "Quarterly plans" not in page
    assert is_intact(old)
    assert not AuditEvent.objects.filter(action=AuditAction.RETENTION_APPLIED).exists()
    # The change list links to it.
    assert REPORT in client_for(administrator).get(POLICIES).content.decode()


def test_staff_and_console_users_without_the_permission_cannot_open_the_report(
    staff_member, colleague
) -> None:
    response = client_for(staff_member).get(REPORT, follow=True)
    assert response.status_code == 403
    colleague.user_permissions.add(
        Permission.objects.get(content_type__app_label="accounts", codename="access_console")
    )
    assert client_for(colleague).get(REPORT).status_code == 403
    assert client_for(colleague).get(POLICIES).status_code == 403
