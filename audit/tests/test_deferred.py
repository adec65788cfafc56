"""The deferred write path: pending events and the chainer that links them into the chain.

PostgreSQL's default (AUDIT_WRITE_PATH=auto); here on SQLite with AUDIT_WRITE_PATH=deferred,
where the single writer stands in for the chain lock. Concurrent writers, rollbacks and
killed processes on PostgreSQL are in tests/production/test_audit_deferred_postgres.py.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.conf import settings as django_settings
from django.db import transaction
from django.utils import timezone

from audit import chain, personal, services
from audit.catalogue import AuditAction
from audit.models import AppendOnlyError, AuditEvent, PendingAuditEvent
from audit.services import audit_chain_pending, audit_record, checkpoint_create
from audit.tasks import audit_chain_pending as sweep_task
from audit.testing import seed_events
from audit.verify import verify_chain

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _deferred(settings: Any) -> None:
    settings.AUDIT_WRITE_PATH = "deferred"


def chained() -> list[tuple[int, int]]:
    """(sequence, details["n"]) of every chained event, in chain order."""
    return [
        (sequence, details["n"])
        for sequence, details in AuditEvent.objects.order_by("sequence").values_list(
            "sequence", "details"
        )
    ]


def record(n: int, actor: Any = None) -> AuditEvent:
    return audit_record(action=AuditAction.MESSAGE_SENT, actor=actor, details={"n": n})


def test_an_event_waits_pending_until_its_transaction_commits_then_is_chained(
    owner, django_capture_on_commit_callbacks
) -> None:
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        event = audit_record(action=AuditAction.LOGIN, actor=owner, target=owner)
    assert event.sequence is None and event.hash == ""
    pending = PendingAuditEvent.objects.get(pk=event.pending_id)
    assert (pending.action, pending.actor_id) == (AuditAction.LOGIN, owner.pk)
    assert AuditEvent.objects.count() == 0

    assert len(callbacks) == 1
    callbacks[0]()  # what happens right after the commit
    stored = AuditEvent.objects.get()
    assert stored.sequence == 1 and stored.prev_hash == chain.GENESIS_HASH
    assert stored.action == AuditAction.LOGIN
    assert personal.reveal(stored).actor_email == "alice@example.com"  # sealed when chained
    assert (stored.target_type, stored.target_id) == ("user", str(owner.public_id))
    assert stored.occurred_at == event.occurred_at  # the time it was recorded, not chained
    assert not PendingAuditEvent.objects.exists()
    assert verify_chain().ok


def test_the_returned_unchained_event_cannot_be_saved(owner) -> None:
    event = record(1, owner)
    with pytest.raises(AppendOnlyError):
        event.save()
    assert PendingAuditEvent.objects.count() == 1


def test_events_of_a_rolled_back_transaction_are_neither_pending_nor_chained(
    django_capture_on_commit_callbacks,
) -> None:
    with (
        django_capture_on_commit_callbacks(execute=True) as callbacks,
        pytest.raises(RuntimeError),
        transaction.atomic(),
    ):
        record(1)
        raise RuntimeError("the change failed")
    assert callbacks == []
    assert audit_chain_pending() == 0
    assert not PendingAuditEvent.objects.exists()
    assert AuditEvent.objects.count() == 0


def test_one_chainer_callback_per_transaction_however_many_events(
    django_capture_on_commit_callbacks,
) -> None:
    with django_capture_on_commit_callbacks(execute=True) as callbacks, transaction.atomic():
        for n in range(5):
            record(n)
    assert len(callbacks) == 1
    assert chained() == [(s, s - 1) for s in range(1, 6)]


def test_the_chainer_links_pending_rows_in_id_order_across_batches(monkeypatch) -> None:
    monkeypatch.setattr(services, "CHAIN_BATCH_SIZE", 3)
    for n in range(8):  # the test's own transaction never commits: no callback runs
        record(n)
    assert audit_chain_pending() == 8
    assert chained() == [(n + 1, n) for n in range(8)]
    assert not PendingAuditEvent.objects.exists()
    report = verify_chain()
    assert report.ok, report.summary()
    assert (report.events_checked, report.last_sequence) == (8, 8)


def test_pending_rows_continue_the_chain_after_directly_chained_events() -> None:
    seed_events(4)  # audit_record_batch: chained directly, under the lock
    for n in range(100, 103):
        record(n)
    assert audit_chain_pending() == 3
    assert [n for _, n in chained()] == [0, 1, 2, 3, 100, 101, 102]
    assert verify_chain().ok


def test_max_batches_bounds_one_chainer_run(monkeypatch) -> None:
    monkeypatch.setattr(services, "CHAIN_BATCH_SIZE", 2)
    for n in range(5):
        record(n)
    assert audit_chain_pending(max_batches=2) == 4
    assert PendingAuditEvent.objects.count() == 1
    assert audit_chain_pending() == 1
    assert [n for _, n in chained()] == [0, 1, 2, 3, 4]


def test_a_checkpoint_chains_pending_events_first_and_covers_them() -> None:
    for n in range(3):
        record(n)
    checkpoint = checkpoint_create()
    assert checkpoint.sequence == 3
    assert checkpoint.head_hash == AuditEvent.objects.get(sequence=3).hash
    assert not PendingAuditEvent.objects.exists()
    report = verify_chain()
    assert report.ok and report.checkpoints_checked == 1


def test_the_sweep_task_chains_what_was_left_pending() -> None:
    for n in range(3):
        record(n)
    assert sweep_task.apply().get() == 3
    assert [n for _, n in chained()] == [0, 1, 2]


def test_beat_and_the_embedded_scheduler_run_the_sweep() -> None:
    entry = django_settings.CELERY_BEAT_SCHEDULE["audit-chain-pending"]
    assert entry["task"] == sweep_task.name
    assert entry["schedule"] == django_settings.AUDIT_CHAIN_SWEEP_SECONDS


def test_pending_rows_refuse_update_and_delete_in_python() -> None:
    record(1)
    row = PendingAuditEvent.objects.get()
    for attempt in (
        lambda: PendingAuditEvent.objects.update(action="auth.logout"),
        lambda: PendingAuditEvent.objects.all().delete(),
        lambda: PendingAuditEvent.objects.bulk_update([row], ["action"]),
    ):
        with pytest.raises(AppendOnlyError):
            attempt()
    assert PendingAuditEvent.objects.get().action == AuditAction.MESSAGE_SENT


def test_an_event_left_unchained_too_long_fails_verification_as_unchained(owner) -> None:
    event = record(1, owner)
    grace = timedelta(seconds=2 * django_settings.AUDIT_CHECKPOINT_INTERVAL_SECONDS)
    assert verify_chain(now=event.occurred_at + timedelta(seconds=1)).ok  # a moment later
    report = verify_chain(now=event.occurred_at + grace + timedelta(seconds=1))
    assert report.problem is not None and report.problem.kind == "unchained"
    assert f"pending row {event.pending_id}" in report.problem.message  # type: ignore[attr-defined]


def test_a_pending_first_event_is_not_an_empty_trail(owner) -> None:
    owner.last_login = timezone.now()
    owner.save(update_fields=["last_login"])
    record(1, owner)  # recorded, not chained yet
    report = verify_chain()
    assert report.ok, report.summary()
    assert audit_chain_pending() == 1
    assert verify_chain().ok
