"""Checkpoints on schedule: the Celery task, beat's schedule and the embedded scheduler."""

from __future__ import annotations

import threading
import time

import pytest
from django.conf import settings

from audit.models import AuditCheckpoint
from audit.tasks import audit_checkpoint
from enterprise_ai import scheduler


@pytest.mark.django_db
def test_the_checkpoint_task_signs_the_head() -> None:
    checkpoint_id = audit_checkpoint.apply().get()
    assert AuditCheckpoint.objects.get(pk=checkpoint_id).sequence == 0


def test_beat_schedules_the_checkpoint_at_the_configured_interval() -> None:
    entry = settings.CELERY_BEAT_SCHEDULE["audit-checkpoint"]
    assert entry["task"] == audit_checkpoint.name
    assert entry["schedule"] == settings.AUDIT_CHECKPOINT_INTERVAL_SECONDS


@pytest.mark.django_db(transaction=True)
def test_the_embedded_scheduler_runs_the_same_schedule(settings) -> None:
    settings.CELERY_BEAT_SCHEDULE = {
        "audit-checkpoint": {"task": "audit.tasks.audit_checkpoint", "schedule": 0.3}
    }
    stop = threading.Event()
    thread = threading.Thread(target=scheduler.run_forever, args=(stop,), kwargs={"tick": 0.05})
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while AuditCheckpoint.objects.count() < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        stop.set()
        thread.join(timeout=5)
    assert not thread.is_alive()
    assert AuditCheckpoint.objects.count() >= 2
