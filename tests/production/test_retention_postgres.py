"""Retention on PostgreSQL: two runs at once (two beat schedulers, or a manual run during a
scheduled one) share the work through SELECT … FOR UPDATE SKIP LOCKED — every conversation
erased exactly once, no error, counts that add up, a chain that verifies — and a conversation
locked by someone else (a message being sent) is left for the next run, not waited for."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from django.db import connection, connections, transaction

from audit.catalogue import AuditAction
from audit.models import AuditEvent
from audit.services import audit_chain_flush, checkpoint_create
from audit.verify import verify_chain
from conversations.models import Conversation
from costs.models import CostEntry
from retention.models import ConversationRetention, RetentionPolicy
from retention.services import retention_apply
from retention.tasks import apply_retention
from retention.tests.helpers import aged_conversation, is_erased, is_intact

pytestmark = [pytest.mark.production, pytest.mark.django_db(transaction=True)]


def test_two_concurrent_runs_erase_each_conversation_once(owner, colleague, settings) -> None:
    assert connection.vendor == "postgresql"
    settings.RETENTION_BATCH_SIZE = 3
    RetentionPolicy.objects.create(name="Month", scope="organisation", days=30)
    conversations = [
        aged_conversation(
            owner if i % 2 else colleague, days=40 + i, ledger=True, created_too=False
        )
        for i in range(40)
    ]
    held = aged_conversation(owner, days=100, created_too=False)
    Conversation.objects.filter(pk=held.pk).update(legal_hold=True)
    ledger_before = CostEntry.objects.count()

    start = threading.Barrier(2)
    results: list[dict[str, Any]] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            start.wait(timeout=10)
            # The Celery task's own function, as a worker runs it.
            results.append(apply_retention.run())
        except BaseException as exc:
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert not errors, errors
    assert len(results) == 2
    # No double work: the two runs' counts add up to exactly the conversations due.
    assert sum(r["conversations"] for r in results) == 40
    assert sum(r["messages"] for r in results) == 80
    assert all(is_erased(c) for c in conversations)
    assert is_intact(held)
    assert ConversationRetention.objects.filter(erased_at__isnull=False).count() == 40
    audit_chain_flush()  # the runs' events, chained just after their commits
    events = list(AuditEvent.objects.filter(action=AuditAction.RETENTION_APPLIED))
    assert len(events) == 2  # one per run for the one policy
    assert sum(e.details["conversations_erased"] for e in events) == 40
    assert CostEntry.objects.count() == ledger_before
    checkpoint_create()
    report = verify_chain()
    assert report.ok, report.summary()


def test_a_conversation_locked_elsewhere_is_skipped_not_waited_for(owner) -> None:
    RetentionPolicy.objects.create(name="Month", scope="organisation", days=30)
    locked = aged_conversation(owner, days=40, created_too=False)
    free = aged_conversation(owner, days=41, created_too=False)
    holding, release = threading.Event(), threading.Event()

    def hold_lock() -> None:
        try:
            with transaction.atomic():
                # What message_send does to an existing conversation.
                list(Conversation.objects.select_for_update().filter(pk=locked.pk))
                holding.set()
                release.wait(timeout=30)
        finally:
            connections.close_all()

    thread = threading.Thread(target=hold_lock)
    thread.start()
    try:
        assert holding.wait(timeout=10)
        started = time.monotonic()
        run = retention_apply()
        assert time.monotonic() - started < 10
    finally:
        release.set()
        thread.join(timeout=10)
    assert run.conversations == 1
    assert is_erased(free) and is_intact(locked)
    # The next run takes it.
    assert retention_apply().conversations == 1
    assert is_erased(locked)
