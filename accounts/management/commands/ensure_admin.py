"""Create the local administrator on first run (used by `make run`).

Does nothing when a superuser already exists. The password comes from ADMIN_PASSWORD (or
ADMIN_PASSWORD_FILE); otherwise one is generated and printed once, here, never logged.
"""

from __future__ import annotations

import secrets
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand

from enterprise_ai.env import Env


class Command(BaseCommand):
    help = "Create a local administrator if there is no superuser yet."

    def handle(self, *args: Any, **options: Any) -> None:
        user_model = get_user_model()
        if user_model.objects.filter(is_superuser=True).exists():
            self.stdout.write("An administrator already exists; nothing to do.")
            return
        env = Env()
        username = env.str("ADMIN_USERNAME", "admin")
        password = env.str("ADMIN_PASSWORD")
        generated = not password
        if generated:
            password = secrets.token_urlsafe(15)
        user_model.objects.create_superuser(
            username=username, email=env.str("ADMIN_EMAIL", ""), password=password
        )
        if generated:
            self.stdout.write(
                self.style.SUCCESS(
                    "\n  Created the local administrator. This password is shown only once:\n"
                    f"    username: {username}\n    password: {password}\n"
                )
            )
        else:
            self.stdout.write(self.style.SUCCESS(f"Created the administrator {username!r}."))
