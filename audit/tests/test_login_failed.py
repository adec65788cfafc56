"""`auth.login_failed` names an account only when the typed name is one; anything else (a
password typed into the user name field, say) is kept as a keyed fingerprint, never as typed."""

from __future__ import annotations

import pytest
from django.test import Client
from django.urls import reverse

from audit import personal
from audit.catalogue import AuditAction
from audit.models import AuditEvent
from audit.receivers import username_fingerprint

TYPED_PASSWORD = "Tr0ub4dor&3-my-real-password"


def failed_events() -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(action=AuditAction.LOGIN_FAILED).order_by("sequence"))


def fail_sign_in(username: str) -> AuditEvent:
    before = len(failed_events())
    Client().post(reverse("login"), {"username": username, "password": "wrong password"})
    found = failed_events()
    assert len(found) == before + 1
    return found[-1]


def every_field(event: AuditEvent) -> str:
    return repr(AuditEvent.objects.filter(pk=event.pk).values().get())


@pytest.mark.django_db
def test_a_password_typed_as_the_username_is_not_stored_anywhere_in_the_event(owner) -> None:
    event = fail_sign_in(TYPED_PASSWORD)

    assert TYPED_PASSWORD not in every_field(event)
    assert TYPED_PASSWORD.lower() not in every_field(event).lower()
    assert "username" not in event.details
    assert event.details == {
        "known_user": False,
        "username_fingerprint": username_fingerprint(TYPED_PASSWORD),
        "username_length": len(TYPED_PASSWORD),
    }
    assert event.target_id == "" and event.actor is None


@pytest.mark.django_db
@pytest.mark.parametrize("typed", ["alice", "ALICE", "alice@example.com", "Alice@Example.COM"])
def test_an_existing_accounts_failed_sign_in_names_them(owner, typed: str) -> None:
    event = fail_sign_in(typed)

    assert "username" not in event.details  # sealed under the account's key
    assert personal.reveal(event).details == {"username": "alice", "known_user": True}
    assert event.target_id == str(owner.public_id)


@pytest.mark.django_db
def test_the_fingerprint_is_stable_for_one_name_and_differs_between_names(owner) -> None:
    first, again, other = (fail_sign_in(name) for name in ("mallory", "mallory", "mallory2"))

    fingerprint = first.details["username_fingerprint"]
    assert len(fingerprint) == 16 and int(fingerprint, 16) >= 0
    assert again.details["username_fingerprint"] == fingerprint
    assert other.details["username_fingerprint"] != fingerprint
    assert (first.details["username_length"], other.details["username_length"]) == (7, 8)


def test_the_fingerprint_is_keyed_by_the_secret_key(settings) -> None:
    before = username_fingerprint("mallory")
    settings.SECRET_KEY = "another-secret-key-for-this-test-only-0123456789-abcdefgh"
    assert username_fingerprint("mallory") != before


@pytest.mark.django_db
def test_the_lockout_still_follows_failures_of_an_unknown_name(settings) -> None:
    client = Client()
    for _ in range(settings.AXES_FAILURE_LIMIT):
        client.post(reverse("login"), {"username": "nobody", "password": "wrong"})
    assert len(failed_events()) == settings.AXES_FAILURE_LIMIT
    assert AuditEvent.objects.filter(action=AuditAction.LOCKOUT).count() == 1
