"""The one place that knows how background work runs.

With a broker configured (TASK_DISPATCH="celery") a task is enqueued for Celery workers,
routed by CELERY_TASK_ROUTES (replies go to the `llm` queue). In the embedded default
(TASK_DISPATCH="thread") the same task runs on a bounded pool of background threads of the
server process. Callers dispatch on transaction commit and never know which mode is active.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from celery import Task
from django.conf import settings
from django.db import connections

logger = logging.getLogger(__name__)

_executor: ThreadPoolExecutor | None = None
_executor_lock = threading.Lock()


def dispatch(task: Task, *args: Any) -> None:
    """Run `task(*args)` in the background, on a worker or on a thread of this process."""
    if settings.TASK_DISPATCH == "celery":
        task.apply_async(args=args)
        return
    _thread_executor().submit(_run_in_thread, task, args)


def _thread_executor() -> ThreadPoolExecutor:
    global _executor
    with _executor_lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(
                max_workers=settings.THREAD_DISPATCH_WORKERS, thread_name_prefix="dispatch"
            )
        return _executor


def backlog() -> int:
    """Tasks submitted to this process's dispatcher and not yet started (embedded default)."""
    with _executor_lock:
        executor = _executor
    return executor._work_queue.qsize() if executor is not None else 0


def _run_in_thread(task: Task, args: tuple[Any, ...]) -> None:
    try:
        task(*args)
    except Exception as exc:
        logger.error("background task %s failed: %s", task.name, type(exc).__name__)
    finally:
        # Each pool thread has its own database connections; don't leave them open.
        connections.close_all()
