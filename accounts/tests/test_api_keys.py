"""API keys: created hashed and shown once, checked with typed refusals, revoked at once,
managed by their owner on "My API keys" and by administrators in the console, audited."""

from __future__ import annotations

import json
from datetime import timedelta
from io import StringIO
from typing import Any

import pytest
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from accounts.api_keys import (
    ApiKeyRefused,
    api_key_authenticate,
    api_key_create,
    api_key_revoke,
)
from accounts.models import ApiKey
from audit.catalogue import AuditAction, AuditOutcome
from audit.models import AuditEvent
from conftest import PASSWORD

pytestmark = pytest.mark.django_db


def _client(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def _create(owner: Any, **kwargs: Any) -> tuple[ApiKey, str]:
    values: dict[str, Any] = {"name": "script", "scopes": ["chat"], "actor": owner}
    values.update(kwargs)
    return api_key_create(owner=owner, **values)


def _secret(raw: str) -> str:
    return raw.split("_", 2)[2]


def _assert_secret_nowhere(raw: str) -> None:
    """Neither the key nor its secret part is in any API key or audit row."""
    secret = _secret(raw)
    with connection.cursor() as cursor:
        for table in (ApiKey._meta.db_table, AuditEvent._meta.db_table):
            cursor.execute(f"SELECT * FROM {table}")  # noqa: S608 - fixed table names
            text = json.dumps(cursor.fetchall(), default=str)
            assert secret not in text, table
            assert raw not in text, table


def _refused(raw: str, *, scope: str = "chat", ip: str = "10.0.0.1") -> ApiKeyRefused:
    with pytest.raises(ApiKeyRefused) as caught:
        api_key_authenticate(raw=raw, ip=ip, scope=scope)
    return caught.value


def _last_refusal() -> AuditEvent:
    event = AuditEvent.objects.filter(action=AuditAction.API_KEY_REFUSED).latest("sequence")
    assert event.outcome == AuditOutcome.DENIED
    return event


# --- Creating ---------------------------------------------------------------------------------


def test_the_key_is_shown_once_and_stored_only_as_a_hash(owner) -> None:
    key, raw = _create(owner, scopes=["chat", "models:read"])
    assert raw.startswith(f"{key.prefix}_") and key.prefix.startswith("eai_")
    assert len(key.prefix) == 12 and len(_secret(raw)) >= 40
    assert key.secret_hash and _secret(raw) not in key.secret_hash
    _assert_secret_nowhere(raw)
    event = AuditEvent.objects.get(action=AuditAction.API_KEY_CREATED)
    assert event.actor_id == owner.pk and event.details["prefix"] == key.prefix
    assert event.details["scopes"] == ["chat", "models:read"]


def test_two_keys_have_different_prefixes_and_secrets(owner) -> None:
    (first, raw1), (second, raw2) = _create(owner), _create(owner)
    assert first.prefix != second.prefix and _secret(raw1) != _secret(raw2)


@pytest.mark.parametrize("scopes", [[], ["chat", "admin"]])
def test_unknown_or_no_scopes_are_refused(owner, scopes: list[str]) -> None:
    with pytest.raises(ValidationError):
        _create(owner, scopes=scopes)
    assert not ApiKey.objects.exists()


def test_model_clean_requires_scopes(owner) -> None:
    key, _ = _create(owner)
    key.scopes = []
    with pytest.raises(ValidationError):
        key.full_clean()


def test_staff_cannot_create_keys_for_someone_else(owner, colleague) -> None:
    with pytest.raises(PermissionDenied):
        api_key_create(owner=colleague, name="x", scopes=["chat"], actor=owner)


# --- Authenticating ---------------------------------------------------------------------------


def test_the_right_key_and_scope_authenticate_as_the_owner(owner) -> None:
    key, raw = _create(owner, scopes=["chat", "models:read"])
    found = api_key_authenticate(raw=raw, ip="10.0.0.1", scope="models:read")
    assert found.pk == key.pk and found.owner == owner
    key.refresh_from_db()
    assert key.last_used_at is not None and key.last_used_ip == "10.0.0.1"


def test_a_wrong_secret_with_a_valid_prefix_is_an_invalid_key(owner) -> None:
    key, raw = _create(owner)
    forged = f"{key.prefix}_{'A' * 40}"
    assert _refused(forged).code == "invalid_key"
    event = _last_refusal()
    assert event.details["code"] == "invalid_key" and event.details["prefix"] == key.prefix
    assert "A" * 40 not in json.dumps(event.details)
    _assert_secret_nowhere(raw)


@pytest.mark.parametrize(
    "raw", ["", "Bearer nonsense", "eai_short", "eai_abcdefgh", "sk-0123456789abcdef0123456789"]
)
def test_malformed_keys_are_invalid_and_audited_without_them(raw: str) -> None:
    assert _refused(raw).code == "invalid_key"
    event = _last_refusal()
    assert event.details["malformed"] is True
    if len(raw) > 12:
        assert raw not in json.dumps(event.details)


def test_revoking_takes_effect_at_once(owner) -> None:
    key, raw = _create(owner)
    api_key_authenticate(raw=raw, ip=None, scope="chat")
    api_key_revoke(key=key, actor=owner)
    assert _refused(raw).code == "revoked_key"
    event = _last_refusal()
    assert event.details == {"code": "revoked_key", "prefix": key.prefix}
    assert event.actor_id == owner.pk
    assert AuditEvent.objects.filter(action=AuditAction.API_KEY_REVOKED).count() == 1
    _assert_secret_nowhere(raw)


def test_an_expired_key_is_refused_and_its_expiry_recorded_once(owner) -> None:
    key, raw = _create(owner, expires_at=timezone.now() + timedelta(hours=1))
    ApiKey.objects.filter(pk=key.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert _refused(raw).code == "expired_key"
    assert _refused(raw).code == "expired_key"
    assert AuditEvent.objects.filter(action=AuditAction.API_KEY_EXPIRED).count() == 1
    refusals = AuditEvent.objects.filter(action=AuditAction.API_KEY_REFUSED)
    assert [e.details["code"] for e in refusals] == ["expired_key", "expired_key"]
    _assert_secret_nowhere(raw)


def test_a_key_of_a_deactivated_owner_is_refused(owner) -> None:
    _, raw = _create(owner)
    owner.is_active = False
    owner.save(update_fields=["is_active"])
    assert _refused(raw).code == "inactive_owner"
    assert _last_refusal().details["code"] == "inactive_owner"


def test_a_key_without_the_scope_is_refused(owner) -> None:
    _, raw = _create(owner, scopes=["models:read"])
    assert _refused(raw, scope="chat").code == "scope_missing"
    assert _last_refusal().details == {
        "code": "scope_missing",
        "prefix": raw[:12],
        "scope": "chat",
    }


def test_refusals_are_sampled_like_other_denials(owner, settings) -> None:
    settings.AUDIT_DENIALS_PER_MINUTE = 2
    for _ in range(5):
        _refused("eai_zzzzzzzz_" + "B" * 40)
    assert AuditEvent.objects.filter(action=AuditAction.API_KEY_REFUSED).count() == 3


def test_last_used_is_written_at_most_once_a_minute(owner, django_assert_num_queries) -> None:
    key, raw = _create(owner)
    api_key_authenticate(raw=raw, ip="10.0.0.1", scope="chat")
    key.refresh_from_db()
    first = key.last_used_at
    assert first is not None
    with django_assert_num_queries(1):  # the look-up only, no write
        api_key_authenticate(raw=raw, ip="10.0.0.2", scope="chat")
    key.refresh_from_db()
    assert key.last_used_at == first and key.last_used_ip == "10.0.0.1"

    ApiKey.objects.filter(pk=key.pk).update(last_used_at=first - timedelta(minutes=2))
    api_key_authenticate(raw=raw, ip="10.0.0.2", scope="chat")
    key.refresh_from_db()
    assert key.last_used_at is not None and key.last_used_at > first
    assert key.last_used_ip == "10.0.0.2"


# --- Revoking ---------------------------------------------------------------------------------


def test_only_the_owner_or_an_administrator_revokes(owner, colleague, administrator) -> None:
    key, raw = _create(owner)
    with pytest.raises(PermissionDenied):
        api_key_revoke(key=key, actor=colleague)
    api_key_revoke(key=key, actor=administrator)
    key.refresh_from_db()
    assert key.revoked_by == administrator
    assert _refused(raw).code == "revoked_key"


# --- My API keys ------------------------------------------------------------------------------


def test_the_page_creates_a_key_and_shows_it_once(owner) -> None:
    client = _client(owner)
    response = client.post(
        reverse("api_keys"), {"name": "reports", "scopes": ["chat"], "expires": "30d"}
    )
    assert response.status_code == 200
    assert response["Cache-Control"] == "no-store"
    key = ApiKey.objects.get(owner=owner)
    raw = response.context["created_key"]
    assert raw.startswith(key.prefix) and raw in response.content.decode()
    assert key.expires_at is not None and key.expires_at > timezone.now() + timedelta(days=29)
    assert api_key_authenticate(raw=raw, ip=None, scope="chat").pk == key.pk
    again = client.get(reverse("api_keys")).content.decode()
    assert key.prefix in again and raw not in again


def test_the_page_lists_only_ones_own_keys(owner, colleague) -> None:
    mine, _ = _create(owner, name="mine")
    theirs, _ = _create(colleague, name="theirs")
    page = _client(owner).get(reverse("api_keys")).content.decode()
    assert mine.prefix in page and theirs.prefix not in page


def test_the_page_refuses_a_form_without_scopes(owner) -> None:
    response = _client(owner).post(reverse("api_keys"), {"name": "x", "expires": "never"})
    assert response.status_code == 400 and not ApiKey.objects.exists()


def test_staff_revoke_their_own_key_on_the_page(owner) -> None:
    key, raw = _create(owner)
    client = _client(owner)
    response = client.post(reverse("api_key_revoke", args=[key.public_id]))
    assert response.status_code == 302
    assert _refused(raw).code == "revoked_key"


def test_revoking_a_colleagues_key_is_a_404_and_audited(owner, colleague) -> None:
    key, _ = _create(colleague)
    response = _client(owner).post(reverse("api_key_revoke", args=[key.public_id]))
    assert response.status_code == 404
    key.refresh_from_db()
    assert key.revoked_at is None
    event = _last_refusal()
    assert event.actor_id == owner.pk and event.details["code"] == "not_owner"


def test_revoking_needs_a_post(owner) -> None:
    key, _ = _create(owner)
    assert _client(owner).get(reverse("api_key_revoke", args=[key.public_id])).status_code == 405


def test_the_page_needs_a_session_and_ignores_api_keys(client: Client, owner) -> None:
    _, raw = _create(owner)
    response = client.get(reverse("api_keys"), HTTP_AUTHORIZATION=f"Bearer {raw}")
    assert response.status_code == 302 and reverse("login") in response["Location"]


# --- The console ------------------------------------------------------------------------------


def test_an_administrator_revokes_anyones_key_in_the_console(administrator, owner) -> None:
    key, raw = _create(owner)
    response = _client(administrator).post(
        reverse("admin:accounts_apikey_changelist"),
        {"action": "revoke_selected", "_selected_action": [key.pk]},
    )
    assert response.status_code == 302
    key.refresh_from_db()
    assert key.revoked_by == administrator
    assert _refused(raw).code == "revoked_key"


def test_an_administrator_creates_a_key_in_the_console_and_sees_it_once(
    administrator, owner
) -> None:
    client = _client(administrator)
    response = client.post(
        reverse("admin:accounts_apikey_add"),
        {"owner": owner.pk, "name": "nightly", "scopes": ["chat", "usage:read"],
         "budget_limit": "5.00", "budget_period": "daily"},
    )  # fmt: skip
    assert response.status_code == 200, response.content.decode()[:2000]
    key = ApiKey.objects.get(owner=owner)
    # The key's own budget is a costs.Budget of scope "api_key", managed with the others.
    budget = key.budgets.get()
    assert (budget.scope, budget.period, budget.limit_amount) == ("api_key", "daily", 5)
    raw = response.context["raw"]
    assert raw in response.content.decode() and key.created_by == administrator
    assert api_key_authenticate(raw=raw, ip=None, scope="usage:read").pk == key.pk
    assert AuditEvent.objects.filter(action=AuditAction.API_KEY_CREATED).count() == 1
    listing = client.get(reverse("admin:accounts_apikey_changelist")).content.decode()
    assert key.prefix in listing and key.secret_hash not in listing
    change = client.get(reverse("admin:accounts_apikey_change", args=[key.pk])).content.decode()
    assert key.secret_hash not in change


def test_compliance_officers_read_keys_but_do_not_revoke(compliance_officer, owner) -> None:
    key, _ = _create(owner)
    client = _client(compliance_officer)
    assert client.get(reverse("admin:accounts_apikey_changelist")).status_code == 200
    client.post(
        reverse("admin:accounts_apikey_changelist"),
        {"action": "revoke_selected", "_selected_action": [key.pk]},
    )
    key.refresh_from_db()
    assert key.revoked_at is None
    assert client.get(reverse("admin:accounts_apikey_add")).status_code == 403


def test_staff_have_no_console_access_to_keys(owner) -> None:
    response = _client(owner).get(reverse("admin:accounts_apikey_changelist"))
    assert response.status_code in (302, 403)


# --- The command ------------------------------------------------------------------------------


def test_the_command_prints_a_working_key_on_its_last_line(owner) -> None:
    out = StringIO()
    call_command(
        "api_key_create", user="alice", name="ci", scopes="chat,models:read", expires="2099-01-31",
        stdout=out,
    )  # fmt: skip
    raw = out.getvalue().strip().splitlines()[-1]
    key = api_key_authenticate(raw=raw, ip=None, scope="models:read")
    assert key.owner == owner and key.expires_at is not None and key.expires_at.year == 2099
    event = AuditEvent.objects.get(action=AuditAction.API_KEY_CREATED)
    assert event.actor_id is None and event.details["via"] == "command"
    _assert_secret_nowhere(raw)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"user": "nobody"}, "No user named"),
        ({"user": "alice", "scopes": "chat,root"}, "Unknown scope"),
        ({"user": "alice", "expires": "tomorrow"}, "is not an expiry"),
        ({"user": "alice", "expires": "2001-01-01"}, "in the future"),
    ],
)
def test_the_command_explains_bad_input(owner, options: dict[str, str], message: str) -> None:
    with pytest.raises(CommandError, match=message):
        call_command("api_key_create", name="ci", stdout=StringIO(), **options)
    assert not ApiKey.objects.exists()


# --- Service accounts -------------------------------------------------------------------------


def test_a_service_account_cannot_sign_in_but_its_keys_work(owner) -> None:
    owner.is_service_account = True
    owner.save(update_fields=["is_service_account"])
    client = Client()
    response = client.post(reverse("login"), {"username": "alice", "password": PASSWORD})
    assert response.status_code == 200
    assert "service account" in response.content.decode()
    assert "_auth_user_id" not in client.session
    _, raw = _create(owner, actor=None)
    assert api_key_authenticate(raw=raw, ip=None, scope="chat").owner == owner


# --- Rotating SECRET_KEY ----------------------------------------------------------------------


def test_a_rotated_secret_key_keeps_keys_working_through_its_fallback(owner, settings) -> None:
    key, raw = _create(owner, scopes=["chat"])
    old_hash = key.secret_hash
    previous = settings.SECRET_KEY
    settings.SECRET_KEY = "a-new-secret-key-for-the-rotation-test-0123456789"

    settings.SECRET_KEY_FALLBACKS = []
    with pytest.raises(ApiKeyRefused):  # without the fallback the key no longer matches
        api_key_authenticate(raw=raw, ip=None, scope="chat")

    settings.SECRET_KEY_FALLBACKS = [previous]
    assert api_key_authenticate(raw=raw, ip=None, scope="chat").pk == key.pk
    key.refresh_from_db()
    assert key.secret_hash != old_hash  # re-hashed under the new key on this use...

    settings.SECRET_KEY_FALLBACKS = []  # ...so the fallback can go
    assert api_key_authenticate(raw=raw, ip=None, scope="chat").pk == key.pk
