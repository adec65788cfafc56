"""(Re)build the blind search index of the chat's conversations (conversations.search).

Run once after upgrading to the release that added search (migration conversations.0012);
safe to run again at any time: it rewrites every live message's and title's tokens and drops
those of deleted conversations. A master-key rotation does not need it.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from conversations import search


class Command(BaseCommand):
    help = "Index every stored message and title for the chat's search (idempotent, batched)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--batch-size", type=int, default=500)

    def handle(self, *args: Any, **options: Any) -> None:
        batch_size = max(1, min(int(options["batch_size"]), 5000))
        progress = self.stdout.write if int(options["verbosity"]) > 1 else None
        report = search.rebuild(batch_size=batch_size, progress=progress)
        self.stdout.write(
            f"Indexed {report.messages} messages and {report.titles} titles; "
            f"dropped {report.removed} entries of deleted conversations."
        )
