"""/.well-known/security.txt tells researchers where to report a vulnerability (RFC 9116)."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from django.test import Client
from django.utils import timezone

pytestmark = pytest.mark.django_db


def test_security_txt_names_the_configured_contact_without_signing_in(settings) -> None:
    settings.SECURITY_CONTACT = "mailto:security@example.com"
    settings.SECURITY_POLICY_URL = "https://example.com/security-policy"
    response = Client().get("/.well-known/security.txt")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")
    fields = dict(line.split(": ", 1) for line in response.content.decode().splitlines() if line)
    assert fields["Contact"] == "mailto:security@example.com"
    assert fields["Policy"] == "https://example.com/security-policy"
    assert fields["Canonical"] == "http://testserver/.well-known/security.txt"
    expires = datetime.fromisoformat(fields["Expires"].replace("Z", "+00:00"))
    assert timezone.now() + timedelta(days=300) < expires < timezone.now() + timedelta(days=366)


def test_without_a_contact_there_is_no_security_txt(settings) -> None:
    settings.SECURITY_CONTACT = ""
    assert Client().get("/.well-known/security.txt").status_code == 404
