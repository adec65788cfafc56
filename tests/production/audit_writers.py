"""Processes that write audit events the way the product does, for
tests/production/test_audit_deferred_postgres.py (spawned: each has its own interpreter,
Django and database connection, like the web and worker processes)."""

from __future__ import annotations

import os
import signal
import traceback
from typing import Any


class _RolledBack(Exception):
    """Raised inside a transaction to roll it back, as a failed change would."""


def _setup(database_url: str) -> None:
    os.environ["DATABASE_URL"] = database_url
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "enterprise_ai.settings")
    import django

    django.setup()


def write_events(
    queue: Any, database_url: str, writer: int, transactions: int, barrier: Any
) -> None:
    """Record 1 to 3 events per transaction; every fourth transaction rolls back.

    Puts {"committed": [...], "rolled_back": [...]} of (writer, transaction, index) keys.
    """
    try:
        _setup(database_url)
        from django.db import connection, transaction

        from audit.catalogue import AuditAction
        from audit.services import audit_record

        committed: list[tuple[int, int, int]] = []
        rolled_back: list[tuple[int, int, int]] = []
        connection.ensure_connection()
        barrier.wait(timeout=60)
        for t in range(transactions):
            keys = [(writer, t, k) for k in range(1 + t % 3)]
            try:
                with transaction.atomic():
                    for key in keys:
                        audit_record(
                            action=AuditAction.MESSAGE_SENT,
                            actor=None,
                            details={"writer": key[0], "t": key[1], "k": key[2]},
                        )
                    if t % 4 == 3:
                        raise _RolledBack
            except _RolledBack:
                rolled_back += keys
            else:
                committed += keys
        connection.close()
        queue.put({"committed": committed, "rolled_back": rolled_back})
    except BaseException:
        queue.put({"error": traceback.format_exc()})


def commit_then_die(database_url: str, marker: str) -> None:
    """Record one event and commit, then SIGKILL this process before its chainer runs (the
    kill is the transaction's first on-commit callback; the chainer is the second)."""
    _setup(database_url)
    from django.db import transaction

    from audit.catalogue import AuditAction
    from audit.services import audit_record

    with transaction.atomic():
        transaction.on_commit(lambda: os.kill(os.getpid(), signal.SIGKILL))
        audit_record(action=AuditAction.LOGIN, actor=None, details={"marker": marker})


def chain_pending(database_url: str) -> None:
    """Run the chainer (the sweep's entry point) in this process."""
    _setup(database_url)
    from audit.services import audit_chain_pending

    audit_chain_pending()
