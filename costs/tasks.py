"""Scheduled cost work: releasing reservations that crashed calls still hold (Celery beat)."""

from __future__ import annotations

from celery import shared_task

from costs.services import reservations_release_expired


@shared_task(name="costs.tasks.release_expired_reservations", ignore_result=True)
def release_expired_reservations() -> int:
    """Release held reservations past their expiry. Returns how many were released."""
    return reservations_release_expired()
