"""The local administrator's first-run credentials, shown last by `make run`, and the
command-line reset of a local administrator's password (README, "First run").

`ensure_admin --show-at-serve` keeps a password it generated in LOCAL_DATA_DIR/
first-run-admin.json (mode 0600, like the other local secrets there), and `manage.py serve`
prints it in a box once the server listens — the last thing on the terminal. It is shown
only while it is still the account's password: once the person changes it (or the account
goes) the file is deleted and nothing is printed again. A password someone chose (from
ADMIN_PASSWORD or typed in) is never written anywhere.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.password_validation import validate_password
from django.db import transaction

from audit.catalogue import AuditAction, TargetType
from audit.services import audit_record

CREDENTIALS_FILE = "first-run-admin.json"


def generate_password() -> str:
    return secrets.token_urlsafe(15)


def credentials_path() -> Path:
    return Path(settings.LOCAL_DIR) / CREDENTIALS_FILE


def credentials_keep(*, username: str, password: str) -> Path:
    """Write the generated credentials for `serve` to show, readable by the owner only."""
    path = credentials_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        json.dump({"username": username, "password": password}, handle)
    return path


def credentials_forget() -> None:
    with contextlib.suppress(FileNotFoundError):
        credentials_path().unlink()


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str


def credentials_pending() -> Credentials | None:
    """The generated credentials if they still sign in; otherwise None (and the file, if
    any, is deleted: the password was changed, or the account is gone)."""
    path = credentials_path()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        found = Credentials(username=str(data["username"]), password=str(data["password"]))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        credentials_forget()
        return None
    user = get_user_model().objects.filter(username=found.username, is_active=True).first()
    if user is None or not user.check_password(found.password):
        credentials_forget()
        return None
    return found


def box(lines: list[str]) -> str:
    """`lines` framed in a box, so the eye finds them among a terminal's log lines."""
    width = max(len(line) for line in lines)
    rule = "═" * (width + 4)
    body = "\n".join(f"║  {line.ljust(width)}  ║" for line in lines)
    return f"\n╔{rule}╗\n{body}\n╚{rule}╝\n"


def credentials_box(credentials: Credentials, *, url: str = "") -> str:
    lines = ["Enterprise AI — local administrator", ""]
    if url:
        lines += [f"Open       {url}", ""]
    lines += [
        f"username   {credentials.username}",
        f"password   {credentials.password}",
        "",
        "Change it after signing in (your name at the bottom of the sidebar);",
        "this box is shown until you do. Lost it? manage.py reset_admin_password",
    ]
    return box(lines)


class ResetRefused(Exception):
    """The reset is refused; the message says why."""


def admin_password_reset(
    *, username: str, password: str | None, forced: bool = False
) -> tuple[Any, str, bool]:
    """Give the local administrator `username` a new password: `password`, or a generated
    one. Returns (user, password, generated). The change is audited (`auth.password_changed`
    by the account, and `auth.admin_password_reset` with how it was done), ends the
    account's sessions, and clears its sign-in lockout.

    Raises ResetRefused: no such account, not an administrator, or a password the
    validators refuse (AUTH_PASSWORD_VALIDATORS).
    """
    from axes.models import AccessAttempt

    user_model = get_user_model()
    user = user_model.objects.filter(username=username).first()
    if user is None:
        admins = list(
            user_model.objects.filter(is_superuser=True, is_active=True)
            .order_by("username")
            .values_list("username", flat=True)[:10]
        )
        named = ", ".join(admins) if admins else "none"
        raise ResetRefused(f"There is no account named {username!r}. Administrators: {named}.")
    if not user.is_superuser:
        raise ResetRefused(
            f"{username!r} is not an administrator: people reset their own password, or an "
            "administrator sets it in the console."
        )
    generated = password is None
    new_password = generate_password() if password is None else password
    if not generated:
        try:
            validate_password(new_password, user)
        except Exception as exc:
            messages = getattr(exc, "messages", [str(exc)])
            raise ResetRefused("The password is refused: " + " ".join(messages)) from None
    with transaction.atomic():
        user.set_password(new_password)
        if not user.is_active:
            user.is_active = True
        user.save()
        cleared, _ = AccessAttempt.objects.filter(username__iexact=username).delete()
        audit_record(
            action=AuditAction.ADMIN_PASSWORD_RESET,
            actor=None,
            target=(TargetType.USER, user.public_id),
            details={
                "via": "command",
                "generated": generated,
                "forced": forced,
                "lockout_records_cleared": cleared,
            },
        )
    return user, new_password, generated
