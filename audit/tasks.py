"""Scheduled audit work (Celery beat, or the embedded scheduler of `manage.py serve`):
signing a checkpoint of the chain's head, and sweeping pending events into the chain."""

from __future__ import annotations

from celery import shared_task

from audit import services
from audit.services import checkpoint_create

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
