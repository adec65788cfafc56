"""manage.py reset_admin_password — a new password for a local administrator.

    manage.py reset_admin_password [--username U]             # generates one, prints it boxed
    manage.py reset_admin_password --password-file FILE        # or "-" for standard input

On the embedded default a generated password is also kept for `make run` to show again
(LOCAL_DATA_DIR, 0600) until it is changed. On the production path it is refused unless
--force: there, administrators are managed in the console, and a password printed on a
server's terminal may end up in its logs. Audited (accounts/first_run.py).
"""

from __future__ import annotations

import sys
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from accounts import first_run
from enterprise_ai.env import Env


class Command(BaseCommand):
    help = "Set a new password for a local administrator (generated unless given)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--username", default=None, help="The administrator (default: ADMIN_USERNAME or admin)."
        )
        parser.add_argument(
            "--password-file",
            default=None,
            help='Read the new password from this file\'s first line ("-": standard input).',
        )
        parser.add_argument("--force", action="store_true", help="Allow it on the production path.")

    def handle(
        self,
        *args: Any,
        username: str | None,
        password_file: str | None,
        force: bool,
        **options: Any,
    ) -> None:
        if not settings.EMBEDDED and not force:
            raise CommandError(
                "This is the production path: manage administrators in the console (/admin/). "
                "To reset from the command line anyway, add --force (the password is then "
                "printed here: keep this terminal out of the logs)."
            )
        username = username or Env().str("ADMIN_USERNAME", "admin")
        password = None
        if password_file is not None:
            try:
                if password_file == "-":  # noqa: S105  (standard input, not a password)
                    raw = sys.stdin.readline()
                else:
                    with open(password_file, encoding="utf-8") as handle:
                        raw = handle.readline()
            except OSError as exc:
                raise CommandError(f"Cannot read {password_file}: {exc.strerror}.") from None
            password = raw.rstrip("\r\n")
            if not password:
                raise CommandError("The password file is empty.")
        try:
            user, new_password, generated = first_run.admin_password_reset(
                username=username, password=password, forced=force
            )
        except first_run.ResetRefused as exc:
            raise CommandError(str(exc)) from None
        if not generated:
            first_run.credentials_forget()
            self.stdout.write(self.style.SUCCESS(f"The password of {username!r} is changed."))
            return
        credentials = first_run.Credentials(username=user.get_username(), password=new_password)
        if settings.EMBEDDED:
            first_run.credentials_keep(username=credentials.username, password=new_password)
        self.stdout.write(self.style.SUCCESS(first_run.credentials_box(credentials)), ending="")
