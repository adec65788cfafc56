from __future__ import annotations

from io import StringIO

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def local_dir(tmp_path, settings):
    settings.LOCAL_DIR = tmp_path


def test_creates_an_administrator_once_and_prints_its_generated_password(monkeypatch) -> None:
    monkeypatch.delenv("ADMIN_PASSWORD", raising=False)
    out = StringIO()
    call_command("ensure_admin", stdout=out)
    password = out.getvalue().split("password   ")[1].split()[0]
    admin = get_user_model().objects.get(username="admin")
    assert admin.is_superuser and admin.check_password(password)

    again = StringIO()
    call_command("ensure_admin", stdout=again)
    assert "already exists" in again.getvalue()
    assert password not in again.getvalue()
    assert get_user_model().objects.count() == 1


def test_uses_the_password_from_the_environment_without_printing_it(monkeypatch) -> None:
    monkeypatch.setenv("ADMIN_USERNAME", "root-admin")
    monkeypatch.setenv("ADMIN_PASSWORD", "from-the-environment-123")
    out = StringIO()
    call_command("ensure_admin", stdout=out)
    assert "from-the-environment-123" not in out.getvalue()
    admin = get_user_model().objects.get(username="root-admin")
    assert admin.check_password("from-the-environment-123")
