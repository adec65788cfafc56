"""`auth.lockout` stores what `auth.login_failed` stores: the account's user name when the
typed name is an account's, else a keyed fingerprint and the length — never what was typed."""

from __future__ import annotations

import pytest
from django.test import Client
from django.urls import reverse

from audit import personal
from audit.catalogue import AuditAction, AuditOutcome
from audit.models import AuditEvent
from audit.receivers import username_fingerprint

TYPED_PASSWORD = "Tr0ub4dor&3-my-real-password"


def lock_out(typed: str, attempts: int) -> AuditEvent:
    client = Client()
    for _ in range(attempts):
        client.post(reverse("login"), {"username": typed, "password": "wrong password"})
    return AuditEvent.objects.get(action=AuditAction.LOCKOUT)


@pytest.mark.django_db
def test_a_lockout_of_a_password_typed_as_the_username_stores_no_trace_of_it(
    owner, settings
) -> None:
    event = lock_out(TYPED_PASSWORD, settings.AXES_FAILURE_LIMIT)

    every_column = repr(AuditEvent.objects.filter(pk=event.pk).values().get())
    assert TYPED_PASSWORD.lower() not in every_column.lower()
    assert event.outcome == AuditOutcome.DENIED and event.actor is None
    assert event.details == {
        "known_user": False,
        "username_fingerprint": username_fingerprint(TYPED_PASSWORD),
        "username_length": len(TYPED_PASSWORD),
    }
    assert event.target_id == ""
    # The same fingerprint as the failures that led to it, so they can be correlated.
    failures = AuditEvent.objects.filter(action=AuditAction.LOGIN_FAILED)
    assert {f.details["username_fingerprint"] for f in failures} == {
        event.details["username_fingerprint"]
    }


@pytest.mark.django_db
@pytest.mark.parametrize("typed", ["alice", "ALICE", "alice@example.com"])
def test_a_lockout_of_an_account_names_the_account(owner, settings, typed: str) -> None:
    event = lock_out(typed, settings.AXES_FAILURE_LIMIT)

    # The account's user name is sealed under the account's audit key (audit/personal.py).
    assert "username" not in event.details
    assert personal.reveal(event).details == {"username": "alice", "known_user": True}
    assert event.target_id == str(owner.public_id)
