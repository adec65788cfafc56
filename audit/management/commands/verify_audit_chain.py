"""manage.py verify_audit_chain — check the audit trail is complete and unaltered.

A full run (the default, or `--full`) walks every event from #1; `--incremental` walks only
the events after the last successful verification's signed marker (docs/audit.md). Exit
status 0 when the chain verifies, 1 when it does not (the first broken sequence number and
the kind of problem are printed), 2 when S3 anchors were asked for and could not be read.
"""

from __future__ import annotations

import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from audit.anchors import AnchorError
from audit.services import audit_chain_verify


class Command(BaseCommand):
    help = "Verify every hash, sequence number and checkpoint signature of the audit trail."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--anchors",
            action="store_true",
            help="Also compare the chain with the checkpoints anchored in S3 (Object Lock).",
        )
        mode = parser.add_mutually_exclusive_group()
        mode.add_argument(
            "--full",
            action="store_false",
            dest="incremental",
            help="Walk every event from the first (the default).",
        )
        mode.add_argument(
            "--incremental",
            action="store_true",
            dest="incremental",
            help="Walk only the events after the last successful verification (its signed "
            "marker); a full run when there is none.",
        )
        parser.set_defaults(incremental=False)

    def handle(
        self, *args: Any, anchors: bool = False, incremental: bool = False, **options: Any
    ) -> None:
        try:
            report = audit_chain_verify(anchors=anchors, incremental=incremental)
        except AnchorError as exc:
            self.stderr.write(f"The S3 anchors could not be read ({exc}); nothing was verified.")
            sys.exit(2)
        if report.ok:
            self.stdout.write(self.style.SUCCESS(report.summary()))
            return
        self.stderr.write(self.style.ERROR(report.summary()))
        sys.exit(1)
