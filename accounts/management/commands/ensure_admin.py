"""Create the local administrator on first run (used by `make run`).

Does nothing when a superuser already exists. The password comes from ADMIN_PASSWORD (or
ADMIN_PASSWORD_FILE); otherwise one is generated. A generated password is printed here in a
box, or, with --show-at-serve (`make run`), kept in LOCAL_DATA_DIR (mode 0600) for
`manage.py serve` to print last, once the server listens, until the administrator changes it
(accounts/first_run.py). It is never logged.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandParser

from accounts import first_run
from enterprise_ai.env import Env


class Command(BaseCommand):
    help = "Create a local administrator if there is no superuser yet."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--show-at-serve",
            action="store_true",
            help="Keep a generated password for `manage.py serve` to print once it listens "
            "(make run), instead of printing it now.",
        )

    def handle(self, *args: Any, show_at_serve: bool = False, **options: Any) -> None:
        user_model = get_user_model()
        if user_model.objects.filter(is_superuser=True).exists():
            self.stdout.write("An administrator already exists; nothing to do.")
            return
        env = Env()
        username = env.str("ADMIN_USERNAME", "admin")
        password = env.str("ADMIN_PASSWORD")
        generated = not password
        if generated:
            password = first_run.generate_password()
        user_model.objects.create_superuser(
            username=username, email=env.str("ADMIN_EMAIL", ""), password=password
        )
        if not generated:
            self.stdout.write(self.style.SUCCESS(f"Created the administrator {username!r}."))
        elif show_at_serve:
            first_run.credentials_keep(username=username, password=password)
            self.stdout.write(
                self.style.SUCCESS(
                    f"Created the local administrator {username!r}: its password is shown "
                    "when the server starts."
                )
            )
        else:
            credentials = first_run.Credentials(username=username, password=password)
            self.stdout.write(self.style.SUCCESS(first_run.credentials_box(credentials)), ending="")
