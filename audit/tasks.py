"""Scheduled audit work (Celery beat, or `manage.py serve`'s embedded scheduler): signing a
checkpoint of the chain's head, and verifying the chain — incremental often, full daily."""

from __future__ import annotations

from celery import shared_task

from audit.services import audit_chain_verify, checkpoint_create


@shared_task(name="audit.tasks.audit_checkpoint", ignore_result=True)
def audit_checkpoint() -> int:
    """Sign the chain's head (also when nothing happened). Returns the checkpoint's id."""
    return int(checkpoint_create().pk)


@shared_task(name="audit.tasks.audit_verify_incremental", ignore_result=True)
def audit_verify_incremental() -> bool:
    """Verify the events after the last verified point (AUDIT_VERIFY_INTERVAL_SECONDS).
    The result is recorded as an audit.chain_verified event. Returns whether it verified."""
    return bool(audit_chain_verify(incremental=True).ok)


@shared_task(name="audit.tasks.audit_verify_full", ignore_result=True)
def audit_verify_full() -> bool:
    """Verify the whole chain from event #1 (AUDIT_VERIFY_FULL_INTERVAL_SECONDS). The result
    is recorded as an audit.chain_verified event. Returns whether it verified."""
    return bool(audit_chain_verify().ok)
