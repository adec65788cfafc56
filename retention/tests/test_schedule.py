"""Retention on schedule: the Celery task, beat's entry and the embedded scheduler of
`manage.py serve`."""

from __future__ import annotations

import threading
import time

import pytest
from django.conf import settings

from enterprise_ai import scheduler
from retention.models import RetentionPolicy
from retention.tasks import apply_retention
from retention.tests.helpers import aged_conversation, is_erased


def test_beat_runs_retention_at_the_configured_interval() -> None:
    entry = settings.CELERY_BEAT_SCHEDULE["retention-apply"]
    assert entry["task"] == apply_retention.name
    assert entry["schedule"] == settings.RETENTION_INTERVAL_SECONDS


@pytest.mark.django_db
def test_the_task_applies_the_policies(owner) -> None:
    RetentionPolicy.objects.create(name="Month", scope="organisation", days=30)
    old = aged_conversation(owner, days=31)
    result = apply_retention.apply().get()
    assert result["conversations"] == 1 and result["messages"] == 2
    assert is_erased(old)


@pytest.mark.django_db(transaction=True)
def test_the_embedded_scheduler_runs_retention(settings, owner) -> None:
    RetentionPolicy.objects.create(name="Month", scope="organisation", days=30)
    old = aged_conversation(owner, days=31)
    settings.CELERY_BEAT_SCHEDULE = {
        "retention-apply": {"task": "retention.tasks.apply_retention", "schedule": 0.2}
    }
    stop = threading.Event()
    thread = threading.Thread(target=scheduler.run_forever, args=(stop,), kwargs={"tick": 0.05})
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not is_erased(old) and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        stop.set()
        thread.join(timeout=5)
    assert is_erased(old)
