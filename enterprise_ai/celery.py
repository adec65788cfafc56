"""The Celery application of the production path (`make worker`).

Configuration comes from Django settings prefixed with CELERY_. Reply generation is routed
to the dedicated `llm` queue so that slow model calls never hold up other work.

Workers run the `threads` pool (docs/performance.md): a reply is a network stream that
waits far more than it computes, so one process carries hundreds of them.
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery
from celery.signals import beat_init, worker_ready

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "enterprise_ai.settings")

app = Celery("enterprise_ai")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@worker_ready.connect
@beat_init.connect
def _sweep_stuck_replies(**_: Any) -> None:
    """Workers and beat sweep stuck replies in-process (as web processes do): a reply whose
    worker died is failed even when no worker, or no beat, is left."""
    from conversations import inflight

    inflight.start_sweeping()
