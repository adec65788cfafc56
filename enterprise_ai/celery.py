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
from celery.signals import (
    beat_init,
    worker_init,
    worker_process_init,
    worker_ready,
    worker_shutdown,
    worker_shutting_down,
)

from observability import logcontext  # noqa: F401 - tasks carry and log the request id

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "enterprise_ai.settings")

app = Celery("enterprise_ai")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@worker_init.connect
def _refuse_a_privileged_role_in_the_worker(**_: Any) -> None:
    _role_check("the Celery worker")


@beat_init.connect
def _refuse_a_privileged_role_in_beat(**_: Any) -> None:
    _role_check("Celery beat")


def _role_check(process: str) -> None:
    """Never run as a database role that could rewrite the audit trail (docs/audit.md).

    Celery logs and swallows exceptions raised by signal handlers; SystemExit ends the
    process, before it takes a task or schedules one, with the reason on stderr.
    """
    import sys

    import django

    django.setup()
    from enterprise_ai import db_role

    try:
        db_role.role_check(process=process)
    except db_role.PrivilegedRoleError as exc:
        # The real stderr: beat has redirected sys.stderr to its logger by now.
        print(f"ERROR: {exc}", file=sys.__stderr__ or sys.stderr, flush=True)
        raise SystemExit(2) from None


@worker_ready.connect
def _sweep_from_the_worker(sender: Any = None, **_: Any) -> None:
    """Workers sweep stuck replies in-process (as web processes and beat do): a reply whose
    worker died is failed even when no other worker, or no beat, is left.

    With the prefork pool the pool processes sweep instead: the parent must not open
    database connections that the processes it forks later would inherit.
    """
    pool = getattr(sender, "pool", None)
    if type(pool).__module__.endswith(".prefork"):
        return
    from conversations import inflight

    inflight.start_sweeping()


@worker_process_init.connect
@beat_init.connect
def _sweep_from_this_process(**_: Any) -> None:
    """A prefork pool process, and beat, sweep stuck replies too."""
    from conversations import inflight

    inflight.start_sweeping()


@worker_ready.connect
def _announce_the_worker(sender: Any = None, **_: Any) -> None:
    """The worker's heartbeat in Redis, which /readyz and `eai_workers_alive` count
    (observability/heartbeat.py). Runs in the main process with every pool: with prefork
    the parent, which outlives its pool processes and runs no task."""
    from observability import heartbeat

    heartbeat.start(hostname=sender.hostname)


@worker_shutting_down.connect
@worker_shutdown.connect
def _withdraw_the_worker(**_: Any) -> None:
    """A worker taking no more tasks stops counting as alive at once, not after the TTL."""
    from observability import heartbeat

    heartbeat.stop()
