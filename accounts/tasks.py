"""Scheduled account work: deleting sessions past their stored expiry (Celery beat)."""

from __future__ import annotations

from celery import shared_task

from accounts.session_store import SessionStore


@shared_task(name="accounts.tasks.clear_expired_sessions", ignore_result=True)
def clear_expired_sessions() -> None:
    """Delete expired session rows (what `manage.py clearsessions` does), so the session
    table holds only sessions that could still be used."""
    SessionStore.clear_expired()
