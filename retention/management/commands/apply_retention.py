"""manage.py apply_retention [--dry-run] — run retention now, or show what it would do."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from retention.selectors import retention_forecast
from retention.services import retention_apply


def _rule_label(rule: Any) -> str:
    days = "per-conversation expiry" if rule.days is None else f"{rule.days} days"
    where = f" ({rule.department})" if rule.department else ""
    return f"{rule.name}{where} [{rule.scope}, {rule.action}, {days}]"


_DONE = {"erase": "erased", "remove": "removed"}


class Command(BaseCommand):
    help = "Apply the retention policies now (bounded by RETENTION_MAX_PER_RUN), or --dry-run."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--dry-run", action="store_true", help="Report what would be done; change nothing."
        )

    def handle(self, *args: Any, dry_run: bool, **options: Any) -> None:
        if dry_run:
            for forecast in retention_forecast():
                oldest = forecast.oldest_activity.isoformat() if forecast.oldest_activity else "-"
                self.stdout.write(
                    f"{_rule_label(forecast.rule)}: would {forecast.rule.action} "
                    f"{forecast.conversations} conversations ({forecast.messages} messages), "
                    f"held skipped {forecast.held_skipped}, busy skipped "
                    f"{forecast.busy_skipped}, oldest last activity {oldest}"
                )
            self.stdout.write("Dry run: nothing was changed.")
            return
        run = retention_apply()
        for outcome in run.outcomes:
            self.stdout.write(
                f"{_rule_label(outcome.rule)}: {_DONE[outcome.rule.action]} "
                f"{outcome.conversations} "
                f"conversations ({outcome.messages} messages), held skipped "
                f"{outcome.held_skipped}, busy skipped {outcome.busy_skipped}"
                + (" — stopped at RETENTION_MAX_PER_RUN" if outcome.capped else "")
            )
        self.stdout.write(
            f"Run {run.run_id}: {run.conversations} conversations, {run.messages} messages."
        )
