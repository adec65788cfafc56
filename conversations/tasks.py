"""Celery entry points of the conversations app. Thin: take ids, call a service."""

from __future__ import annotations

from celery import shared_task

from conversations.generation import reply_generate


@shared_task(name="conversations.tasks.generate_reply", ignore_result=True)
def generate_reply(reply_id: int) -> None:
    """Generate one assistant reply. Idempotent: a redelivered task does nothing more."""
    reply_generate(reply_id=reply_id)
