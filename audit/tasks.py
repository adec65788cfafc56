"""Scheduled audit work (Celery beat, or `manage.py serve`'s embedded scheduler): signing a
checkpoint of the chain's head, sweeping pending events into the chain, and verifying the
chain — incremental often, full daily."""

from __future__ import annotations

from celery import shared_task

from audit import services
from audit.services import audit_chain_verify, checkpoint_create

SWEEP_MAX_BATCHES = 100  # of services.CHAIN_BATCH_SIZE events each


@shared_task(name="audit.tasks.audit_checkpoint", ignore_result=True)
def audit_checkpoint() -> int:
    """Sign the chain's head (also when nothing happened). Returns the checkpoint's id."""
    return int(checkpoint_create().pk)


@shared_task(name="audit.tasks.audit_chain_pending", ignore_result=True)
def audit_chain_pending() -> int:
    """The sweep: chain pending events nobody chained after their commit (normally none,
    unless a process died between its commit and its chainer). Returns how many.

    Bounded (SWEEP_MAX_BATCHES), so that under a flood it never holds the embedded
    scheduler's one thread for long; the next run goes on."""
    return services.audit_chain_pending(max_batches=SWEEP_MAX_BATCHES)


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
