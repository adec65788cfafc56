"""First run: the generated administrator password kept for `serve` to print last, in a box,
while it is unchanged; and `manage.py reset_admin_password`."""

from __future__ import annotations

import io
import stat
from io import StringIO

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import CommandError

from accounts import first_run
from accounts.management.commands.serve import Command as ServeCommand
from audit.models import AuditEvent

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def local_dir(tmp_path, settings, monkeypatch):
    settings.LOCAL_DIR = tmp_path
    monkeypatch.delenv("ADMIN_PASSWORD", raising=False)
    monkeypatch.delenv("ADMIN_USERNAME", raising=False)
    return tmp_path


def boxed_password(text: str) -> str:
    assert "╔" in text and "╝" in text, text
    return text.split("password   ")[1].split()[0]


def test_make_run_keeps_the_generated_password_for_serve_owner_only(local_dir) -> None:
    out = StringIO()
    call_command("ensure_admin", "--show-at-serve", stdout=out)
    assert "shown when the server starts" in out.getvalue()
    path = local_dir / first_run.CREDENTIALS_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    pending = first_run.credentials_pending()
    assert pending is not None and pending.username == "admin"
    admin = get_user_model().objects.get(username="admin")
    assert admin.check_password(pending.password)
    assert pending.password not in out.getvalue()  # not among the migration lines


def test_serve_announces_the_box_until_the_password_is_changed(local_dir) -> None:
    call_command("ensure_admin", "--show-at-serve", stdout=StringIO())
    out = io.StringIO()
    serve = ServeCommand(stdout=out)
    serve.announce("127.0.0.1", "8000")
    text = out.getvalue()
    password = boxed_password(text)
    assert "http://127.0.0.1:8000/" in text
    assert text.rstrip().endswith("(Ctrl+C to stop)")

    admin = get_user_model().objects.get(username="admin")
    admin.set_password("chosen-by-the-person-42")
    admin.save()
    again = io.StringIO()
    ServeCommand(stdout=again).announce("127.0.0.1", "8000")
    assert password not in again.getvalue() and "╔" not in again.getvalue()
    assert "Serving on http://127.0.0.1:8000/" in again.getvalue()
    assert not (local_dir / first_run.CREDENTIALS_FILE).exists()


def test_a_password_from_the_environment_is_never_written_or_printed(local_dir, monkeypatch):
    monkeypatch.setenv("ADMIN_PASSWORD", "from-the-environment-123")
    out = StringIO()
    call_command("ensure_admin", "--show-at-serve", stdout=out)
    assert "from-the-environment-123" not in out.getvalue()
    assert not (local_dir / first_run.CREDENTIALS_FILE).exists()


def test_without_serve_the_generated_password_is_printed_in_a_box_once(local_dir) -> None:
    out = StringIO()
    call_command("ensure_admin", stdout=out)
    password = boxed_password(out.getvalue())
    assert get_user_model().objects.get(username="admin").check_password(password)
    assert not (local_dir / first_run.CREDENTIALS_FILE).exists()


# --- reset_admin_password ---------------------------------------------------------------------


@pytest.fixture
def admin(db):
    return get_user_model().objects.create_superuser(username="admin", password="old-pw-123456")


def test_reset_generates_prints_boxed_audits_and_keeps_it_for_make_run(admin, local_dir) -> None:
    out = StringIO()
    call_command("reset_admin_password", stdout=out)
    password = boxed_password(out.getvalue())
    admin.refresh_from_db()
    assert admin.check_password(password) and not admin.check_password("old-pw-123456")
    event = AuditEvent.objects.get(action="auth.admin_password_reset")
    assert event.target_id == str(admin.public_id)
    assert event.details["generated"] is True and event.details["via"] == "command"
    assert password not in str(event.details)
    assert AuditEvent.objects.filter(action="auth.password_changed").exists()
    pending = first_run.credentials_pending()
    assert pending is not None and pending.password == password


def test_reset_reads_the_password_from_a_file_or_stdin_and_never_prints_it(
    admin, tmp_path, monkeypatch
) -> None:
    secret = tmp_path / "pw"
    secret.write_text("a-Long-chosen-passphrase-7\n")
    out = StringIO()
    call_command("reset_admin_password", "--password-file", str(secret), stdout=out)
    assert "a-Long-chosen-passphrase-7" not in out.getvalue()
    admin.refresh_from_db()
    assert admin.check_password("a-Long-chosen-passphrase-7")
    assert first_run.credentials_pending() is None

    monkeypatch.setattr("sys.stdin", io.StringIO("another-Long-passphrase-8\n"))
    call_command("reset_admin_password", "--password-file", "-", stdout=StringIO())
    admin.refresh_from_db()
    assert admin.check_password("another-Long-passphrase-8")


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--username", "nobody"], "no account named 'nobody'"),
        (["--username", "bob"], "not an administrator"),
    ],
)
def test_reset_refuses_unknown_and_non_admin_accounts(admin, arguments, message) -> None:
    get_user_model().objects.create_user(username="bob", password="x-pw-1")
    with pytest.raises(CommandError, match=message):
        call_command("reset_admin_password", *arguments, stdout=StringIO())


def test_reset_refuses_a_weak_password(admin, tmp_path) -> None:
    weak = tmp_path / "pw"
    weak.write_text("123\n")
    with pytest.raises(CommandError, match="refused"):
        call_command("reset_admin_password", "--password-file", str(weak), stdout=StringIO())
    admin.refresh_from_db()
    assert admin.check_password("old-pw-123456")


def test_reset_on_the_production_path_needs_force(admin, settings, local_dir) -> None:
    settings.EMBEDDED = False
    with pytest.raises(CommandError, match="--force"):
        call_command("reset_admin_password", stdout=StringIO())
    out = StringIO()
    call_command("reset_admin_password", "--force", stdout=out)
    admin.refresh_from_db()
    assert admin.check_password(boxed_password(out.getvalue()))
    assert not (local_dir / first_run.CREDENTIALS_FILE).exists()  # nothing kept on disk
    assert AuditEvent.objects.get(action="auth.admin_password_reset").details["forced"] is True
