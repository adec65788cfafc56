"""The login form's per-address rate limit: 429 with Retry-After, audited once per window."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

from audit.catalogue import AuditAction, AuditOutcome
from audit.models import AuditEvent
from conftest import PASSWORD
from tests.support import early_in_a_minute

pytestmark = pytest.mark.django_db


@pytest.fixture
def limit(settings: Any) -> int:
    settings.LOGIN_RATE_LIMIT_PER_MINUTE = 3
    settings.AXES_FAILURE_LIMIT = 100  # the rate limit, not axes, is under test
    early_in_a_minute()  # all of a test's attempts in one window
    return 3


WRONG_PASSWORD = "wrong"


def attempt(
    client: Client, username: str = "alice", password: str = WRONG_PASSWORD, **extra: Any
) -> Any:
    return client.post(reverse("login"), {"username": username, "password": password}, **extra)


def rate_limit_events() -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(action=AuditAction.LOGIN_RATE_LIMITED))


def test_posts_over_the_limit_get_429_with_retry_after(client: Client, owner: Any, limit: int):
    for _ in range(limit):
        assert attempt(client).status_code == 200
    refused = attempt(client)
    assert refused.status_code == 429
    assert 1 <= int(refused["Retry-After"]) <= 60
    body = refused.content.decode()
    assert "too many sign-in attempts from your network address" in body
    assert f"wait\n    {refused['Retry-After']} second" in body


def test_the_right_password_is_not_even_checked_over_the_limit(
    client: Client, owner: Any, limit: int
) -> None:
    for _ in range(limit):
        attempt(client, username="someone-else")
    response = attempt(client, password=PASSWORD)
    assert response.status_code == 429
    assert "_auth_user_id" not in client.session


def test_the_refusal_is_audited_once_per_address_and_window(
    client: Client, owner: Any, limit: int
) -> None:
    for _ in range(limit + 10):
        attempt(client)
    events = rate_limit_events()
    assert len(events) == 1
    event = events[0]
    assert event.outcome == AuditOutcome.DENIED
    assert event.actor is None
    assert event.ip == "127.0.0.1"
    assert event.details == {"limit": limit, "window_seconds": 60}


def test_each_address_has_its_own_count(client: Client, owner: Any, limit: int) -> None:
    for _ in range(limit + 1):
        attempt(client, REMOTE_ADDR="198.51.100.1")
    assert attempt(client, REMOTE_ADDR="198.51.100.1").status_code == 429
    assert attempt(client, REMOTE_ADDR="198.51.100.2").status_code == 200


def test_a_forged_forwarded_for_does_not_escape_the_limit(
    client: Client, owner: Any, limit: int, settings: Any
) -> None:
    settings.TRUSTED_PROXY_COUNT = 0
    for n in range(limit):
        attempt(client, REMOTE_ADDR="198.51.100.1", HTTP_X_FORWARDED_FOR=f"10.9.9.{n}")
    refused = attempt(client, REMOTE_ADDR="198.51.100.1", HTTP_X_FORWARDED_FOR="10.9.9.99")
    assert refused.status_code == 429
    assert rate_limit_events()[0].ip == "198.51.100.1"


def test_behind_a_trusted_proxy_clients_are_told_apart(
    client: Client, owner: Any, limit: int, settings: Any
) -> None:
    settings.TRUSTED_PROXY_COUNT = 1
    for _ in range(limit + 1):
        attempt(client, REMOTE_ADDR="10.0.0.2", HTTP_X_FORWARDED_FOR="203.0.113.1")
    assert rate_limit_events()[0].ip == "203.0.113.1"
    other = attempt(client, REMOTE_ADDR="10.0.0.2", HTTP_X_FORWARDED_FOR="203.0.113.2")
    assert other.status_code == 200


def test_showing_the_login_page_is_not_counted(client: Client, limit: int) -> None:
    for _ in range(limit * 3):
        assert client.get(reverse("login")).status_code == 200


def test_a_new_window_allows_signing_in_again(
    client: Client, owner: Any, limit: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    from enterprise_ai import ratelimit

    now = [1_800_000.0]
    real_hit = ratelimit.hit
    monkeypatch.setattr(
        ratelimit, "hit", lambda key, **kw: real_hit(key, clock=lambda: now[0], **kw)
    )
    for _ in range(limit):
        attempt(client)
    assert attempt(client, password=PASSWORD).status_code == 429
    now[0] += 60
    assert attempt(client, password=PASSWORD).status_code == 302
