"""Lockout after repeated failures (django-axes): the message, the policy, unlocking."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from axes.models import AccessAttempt
from django.core.exceptions import ImproperlyConfigured, PermissionDenied
from django.test import Client
from django.urls import reverse

from accounts.services import lockout_clear
from audit.catalogue import AuditAction
from audit.models import AuditEvent
from conftest import PASSWORD
from enterprise_ai.settings import _axes_lockout_parameters

pytestmark = pytest.mark.django_db


def fresh_ip() -> str:
    # Each test its own documentation address: the per-IP login rate limit never interferes.
    return f"2001:db8::{uuid.uuid4().hex[:4]}"


def lock_out(username: str, ip: str, limit: int) -> Client:
    client = Client(REMOTE_ADDR=ip)
    for _ in range(limit):
        response = client.post(reverse("login"), {"username": username, "password": "wrong"})
    assert response.status_code == 429
    return client


def signed_in(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_locked_out_page_says_when_to_try_again(owner, settings) -> None:
    settings.AXES_COOLOFF_TIME = 0.25  # hours: 15 minutes
    client = lock_out("alice", fresh_ip(), settings.AXES_FAILURE_LIMIT)
    response = client.post(reverse("login"), {"username": "alice", "password": PASSWORD})
    assert response.status_code == 429
    text = response.content.decode()
    assert "Too many failed sign-in attempts" in text
    assert "for 15 minutes" in text
    assert "You can try again at" in text
    assert "ask an administrator" in text
    assert "_auth_user_id" not in client.session


def test_lockout_is_per_username_and_address(owner, settings) -> None:
    ip = fresh_ip()
    lock_out("alice", ip, settings.AXES_FAILURE_LIMIT)
    # The same person from another address, and another person from the same address, are
    # not locked out: a stranger cannot lock a colleague out from elsewhere.
    elsewhere = Client(REMOTE_ADDR=fresh_ip())
    response = elsewhere.post(reverse("login"), {"username": "alice", "password": PASSWORD})
    assert response.status_code == 302


def test_lockout_parameters_are_read_from_the_environment_format() -> None:
    assert _axes_lockout_parameters("username+ip_address") == [["username", "ip_address"]]
    assert _axes_lockout_parameters("username+ip_address, ip_address") == [
        ["username", "ip_address"],
        "ip_address",
    ]
    with pytest.raises(ImproperlyConfigured):
        _axes_lockout_parameters("username+password")
    with pytest.raises(ImproperlyConfigured):
        _axes_lockout_parameters("")


def test_administrator_unlocks_from_the_console_and_it_is_audited(
    owner, administrator, settings
) -> None:
    ip = fresh_ip()
    locked = lock_out("alice", ip, settings.AXES_FAILURE_LIMIT)
    console = signed_in(administrator)
    page = console.get("/admin/accounts/user/")
    assert "clear_lockout" in page.content.decode()

    response = console.post(
        "/admin/accounts/user/", {"action": "clear_lockout", "_selected_action": [owner.pk]}
    )
    assert response.status_code == 302
    assert not AccessAttempt.objects.filter(username="alice").exists()
    response = locked.post(reverse("login"), {"username": "alice", "password": PASSWORD})
    assert response.status_code == 302 and response["Location"] == "/"

    event = AuditEvent.objects.get(action=AuditAction.LOCKOUT_CLEARED)
    assert event.actor_id == administrator.pk
    assert event.target_id == str(owner.public_id)
    assert event.details == {"attempt_records": 1}


@pytest.mark.parametrize("who", ["compliance_officer", "staff_member"])
def test_only_administrators_can_unlock(owner, who: str, request, settings) -> None:
    person = request.getfixturevalue(who)
    lock_out("alice", fresh_ip(), settings.AXES_FAILURE_LIMIT)
    client = signed_in(person)
    page = client.get("/admin/accounts/user/")
    assert "clear_lockout" not in page.content.decode()
    client.post(
        "/admin/accounts/user/", {"action": "clear_lockout", "_selected_action": [owner.pk]}
    )
    assert AccessAttempt.objects.filter(username="alice").exists()
    with pytest.raises(PermissionDenied):
        lockout_clear(user=owner, actor=person)
    assert not AuditEvent.objects.filter(action=AuditAction.LOCKOUT_CLEARED).exists()


def test_administrators_can_also_delete_attempts_in_axes_admin_audited(
    owner, administrator, settings
) -> None:
    lock_out("alice", fresh_ip(), settings.AXES_FAILURE_LIMIT)
    attempt = AccessAttempt.objects.get(username="alice")
    console = signed_in(administrator)
    response = console.post(f"/admin/axes/accessattempt/{attempt.pk}/delete/", {"post": "yes"})
    assert response.status_code == 302
    assert not AccessAttempt.objects.filter(pk=attempt.pk).exists()
    assert AuditEvent.objects.filter(action=AuditAction.ADMIN_DELETE).exists()
