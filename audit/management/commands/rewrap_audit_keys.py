"""`manage.py rewrap_audit_keys [--batch-size 200]`: after a master key rotation, re-wrap the
people's audit keys (audit/personal.py) under the current master key, so the old master key
can be retired. Run it with `rotate_encryption_keys` (docs/data-protection.md). Exits 1 and
names the people whose key could not be re-wrapped.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from audit.personal import subject_keys_rewrap


class Command(BaseCommand):
    help = "Re-wrap the people's audit keys under the current master key."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--batch-size", type=int, default=200)

    def handle(self, *args: Any, **options: Any) -> None:
        report = subject_keys_rewrap(batch_size=max(1, int(options["batch_size"])))
        self.stdout.write(f"{report.rewrapped} audit keys re-wrapped.")
        if report.failed:
            raise CommandError(
                "key_unavailable: could not re-wrap the audit keys of users "
                + ", ".join(f"#{pk}" for pk in report.failed)
            )
