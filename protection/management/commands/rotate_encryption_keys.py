"""Re-wrap every data key, and every person's audit key (audit/personal.py), under the current
master key (docs/data-protection.md, "Key rotation").

    manage.py rotate_encryption_keys              # re-wrap data keys (idempotent)
    manage.py rotate_encryption_keys --reencrypt  # also move stored text to fresh data keys

Exit status 0 when everything is under the current master key, 1 when some data key could
not be re-wrapped or some row could not be opened (named by id and reason, never a key).
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from audit.personal import subject_keys_rewrap
from protection.aead import ProtectionError
from protection.services import DEFAULT_BATCH, data_keys_rewrap, transcripts_reencrypt


class Command(BaseCommand):
    help = "Re-wrap data keys under the current master key; --reencrypt moves rows to new keys."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--reencrypt",
            action="store_true",
            help="Also retire the active data keys and seal every stored value again.",
        )
        parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH)

    def handle(self, *args: Any, **options: Any) -> None:
        batch_size = max(1, int(options["batch_size"]))
        try:
            report = data_keys_rewrap(batch_size=batch_size)
        except ProtectionError as exc:
            raise CommandError(f"{exc} [{exc.code}]") from None
        self.stdout.write(
            f"Master key {report.master_key}: {report.rewrapped} data keys re-wrapped, "
            f"{report.already_current} already under it, {len(report.failed)} failed."
        )
        for key_id in report.failed:
            self.stderr.write(f"  could not re-wrap {key_id} (see the log for the reason)")
        # The people's audit keys are wrapped by the same master key: re-wrapped with the data
        # keys, so that retiring the old master key leaves no sealed audit field unreadable.
        try:
            people = subject_keys_rewrap(batch_size=batch_size)
        except ProtectionError as exc:
            raise CommandError(f"{exc} [{exc.code}]") from None
        self.stdout.write(
            f"{people.rewrapped} people's audit keys re-wrapped, {len(people.failed)} failed."
        )
        for user_id in people.failed:
            self.stderr.write(f"  could not re-wrap the audit key of user #{user_id}")
        unreadable = 0
        if options["reencrypt"]:
            try:
                moved = transcripts_reencrypt(
                    batch_size=batch_size, progress=lambda line: self.stdout.write(line)
                )
            except ProtectionError as exc:
                raise CommandError(f"{exc} [{exc.code}]") from None
            unreadable = moved.unreadable
            self.stdout.write(
                f"{moved.retired} data keys retired; {moved.rows} rows sealed again under "
                f"new data keys, {moved.unreadable} values unreadable and left as they were."
            )
        if report.failed or people.failed or unreadable:
            raise SystemExit(1)
