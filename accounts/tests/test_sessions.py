"""Idle timeout and absolute lifetime over HTTP (accounts/middleware.py), and the session index."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.conf import settings
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from accounts import sessions
from accounts.models import User, UserSession
from accounts.tasks import clear_expired_sessions
from audit.catalogue import AuditAction
from audit.models import AuditEvent
from conftest import PASSWORD

pytestmark = pytest.mark.django_db


def signed_in(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def set_session_times(client: Client, *, login_ago: int, seen_ago: int) -> None:
    session = client.session
    now = sessions.now_seconds()
    session[sessions.LOGIN_AT_KEY] = now - login_ago
    session[sessions.SEEN_AT_KEY] = now - seen_ago
    session.save()


@pytest.mark.parametrize(
    ("login_ago", "seen_ago", "reason"),
    [
        (8 * 3600, 5, sessions.ABSOLUTE_LIFETIME),
        (3600, 30 * 60, sessions.IDLE_TIMEOUT),
    ],
)
def test_an_expired_session_is_signed_out_and_sent_to_login_with_a_message(
    owner, login_ago: int, seen_ago: int, reason: str
) -> None:
    client = signed_in(owner)
    key = client.session.session_key
    set_session_times(client, login_ago=login_ago, seen_ago=seen_ago)

    response = client.get("/?q=1")
    assert response.status_code == 302
    assert response["Location"] == f"{reverse('login')}?next=/%3Fq%3D1"
    assert not UserSession.objects.filter(session_key=key).exists()
    page = client.get(response["Location"])
    assert "Your session has expired. Please sign in again." in page.content.decode()
    assert client.get("/").status_code == 302  # still signed out

    event = AuditEvent.objects.get(action=AuditAction.SESSION_EXPIRED)
    assert event.actor_id == owner.pk and event.details["reason"] == reason
    assert not AuditEvent.objects.filter(action=AuditAction.LOGOUT).exists()


def test_a_json_request_on_an_expired_session_gets_401(owner) -> None:
    client = signed_in(owner)
    set_session_times(client, login_ago=60, seen_ago=settings.SESSION_IDLE_TIMEOUT_SECONDS)
    response = client.get("/", headers={"accept": "application/json"})
    assert response.status_code == 401
    assert response.json()["error"] == "session_expired"


def test_limits_follow_the_settings(owner, settings) -> None:
    settings.SESSION_IDLE_TIMEOUT_SECONDS = 120
    client = signed_in(owner)
    set_session_times(client, login_ago=200, seen_ago=100)
    assert client.get("/").status_code == 200
    set_session_times(client, login_ago=200, seen_ago=121)
    assert client.get("/").status_code == 302


def test_activity_is_written_at_most_once_a_minute(owner) -> None:
    client = signed_in(owner)
    set_session_times(client, login_ago=600, seen_ago=10)
    with CaptureQueriesContext(connection) as queries:
        assert client.get("/").status_code == 200
    writes = [q for q in queries if q["sql"].startswith("UPDATE") and "session" in q["sql"]]
    assert writes == []
    assert client.session[sessions.SEEN_AT_KEY] <= sessions.now_seconds() - 10

    set_session_times(client, login_ago=600, seen_ago=25 * 60)
    assert client.get("/").status_code == 200
    assert sessions.now_seconds() - client.session[sessions.SEEN_AT_KEY] < 5
    assert client.get("/").status_code == 200  # and the session lives on


def test_sessions_are_indexed_by_user_and_survive_key_cycling(owner) -> None:
    first = signed_in(owner).session
    first.cycle_key()  # what update_session_auth_hash and sign-in do
    second = signed_in(owner).session
    keys = set(UserSession.objects.filter(user_id=owner.pk).values_list("session_key", flat=True))
    assert keys == {first.session_key, second.session_key}


def test_cookie_age_matches_the_absolute_lifetime() -> None:
    assert settings.SESSION_COOKIE_AGE == settings.SESSION_ABSOLUTE_LIFETIME_SECONDS
    assert settings.SESSION_IDLE_TIMEOUT_SECONDS <= settings.SESSION_ABSOLUTE_LIFETIME_SECONDS
    assert settings.SESSION_ENGINE == "accounts.session_store"


def test_a_new_password_on_save_ends_sessions_but_a_first_one_and_other_edits_do_not(
    owner,
) -> None:
    client = signed_in(owner)
    user = User.objects.get(pk=owner.pk)
    user.first_name = "Alice"
    user.save()
    assert client.get("/").status_code == 200
    user.set_password("another long passphrase")
    user.save()
    assert client.get("/").status_code == 302
    event = AuditEvent.objects.get(action=AuditAction.SESSIONS_ENDED)
    assert event.details == {"reason": sessions.PASSWORD_CHANGED, "sessions": 1}


def test_the_per_frame_session_check_costs_two_queries(
    owner, django_assert_max_num_queries
) -> None:
    client = signed_in(owner)
    key = client.session.session_key or ""
    with django_assert_max_num_queries(2):
        check = sessions.socket_session_check(session_key=key, user_id=owner.pk, touch=True)
    assert check.problem is None and check.seconds_left is not None
    assert 0 < check.seconds_left <= settings.SESSION_IDLE_TIMEOUT_SECONDS


def test_signing_in_gives_a_new_session_key(owner) -> None:
    client = Client()
    client.get("/accounts/login/")  # an anonymous session exists before signing in
    client.session.save()
    before = client.session.session_key
    response = client.post("/accounts/login/", {"username": "alice", "password": PASSWORD})
    assert response.status_code == 302
    after = client.cookies[settings.SESSION_COOKIE_NAME].value
    assert before and after != before
    assert not UserSession.objects.filter(session_key=before).exists()
    assert UserSession.objects.get(session_key=after).user_id == owner.pk


def test_expired_sessions_are_cleared_on_schedule(owner, colleague) -> None:
    stale, live = signed_in(owner).session.session_key, signed_in(colleague).session.session_key
    UserSession.objects.filter(session_key=stale).update(
        expire_date=timezone.now() - timedelta(seconds=1)
    )
    entry = settings.CELERY_BEAT_SCHEDULE["accounts-clear-expired-sessions"]
    assert entry["task"] == clear_expired_sessions.name
    clear_expired_sessions()
    assert list(UserSession.objects.values_list("session_key", flat=True)) == [live]
