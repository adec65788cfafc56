"""Scheduled retention (Celery beat; the embedded scheduler of `manage.py serve` runs the same
schedule in-process)."""

from __future__ import annotations

from typing import Any

from celery import shared_task

from retention.services import retention_apply


@shared_task(name="retention.tasks.apply_retention", ignore_result=True)
def apply_retention() -> dict[str, Any]:
    """One retention run (bounded by RETENTION_MAX_PER_RUN). Returns its counts."""
    run = retention_apply()
    return {
        "run": run.run_id,
        "conversations": run.conversations,
        "messages": run.messages,
        "held_skipped": run.held_skipped,
    }
