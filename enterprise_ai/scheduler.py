"""Periodic tasks for the embedded default, where there is no Celery beat.

On the production path Celery beat runs CELERY_BEAT_SCHEDULE (`make beat`). In the embedded
default `manage.py serve` starts this scheduler instead: one daemon thread that runs the same
schedule's tasks in-process, each in its own database connection.
"""

from __future__ import annotations

import importlib
import logging
import threading
import time
from typing import Any

from django.conf import settings
from django.db import connections

logger = logging.getLogger(__name__)


def _task(name: str) -> Any:
    module, _, attribute = name.rpartition(".")
    return getattr(importlib.import_module(module), attribute)


def _run(name: str) -> None:
    try:
        _task(name)()
    except Exception as exc:
        logger.error("scheduled task %s failed: %s", name, type(exc).__name__)
    finally:
        connections.close_all()


def run_forever(stop: threading.Event, *, tick: float = 1.0) -> None:
    """Run every entry of CELERY_BEAT_SCHEDULE at its interval until `stop` is set."""
    schedule: dict[str, Any] = settings.CELERY_BEAT_SCHEDULE
    now = time.monotonic()
    due = {entry["task"]: now + float(entry["schedule"]) for entry in schedule.values()}
    while not stop.wait(tick):
        now = time.monotonic()
        for name, at in due.items():
            if now >= at:
                _run(name)
                due[name] = now + float(
                    next(e["schedule"] for e in schedule.values() if e["task"] == name)
                )


def start() -> threading.Event:
    """Start the scheduler thread; set the returned event to stop it."""
    stop = threading.Event()
    threading.Thread(target=run_forever, args=(stop,), name="scheduler", daemon=True).start()
    return stop
