"""Scheduled audit work: signing a checkpoint of the chain's head (Celery beat)."""

from __future__ import annotations

from celery import shared_task

from audit.services import checkpoint_create


@shared_task(name="audit.tasks.audit_checkpoint", ignore_result=True)
def audit_checkpoint() -> int:
    """Sign the chain's head (also when nothing happened). Returns the checkpoint's id."""
    return int(checkpoint_create().pk)
