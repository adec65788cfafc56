"""Completeness: the verifier fails on a stale or missing checkpoint and on a trail emptied
after use, and stays quiet on a fresh install and on an idle, healthy system (issue 15).

Each attack from the issue is reproduced with raw SQL, as someone with database access would
(SQLite has no append-only trigger, so no preparation is needed). Time moves by signing in the
past (a patched clock) or by verifying at a later `now`, never by sleeping.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from io import StringIO
from typing import Any
from unittest import mock

import pytest
from django.core.management import call_command
from django.test import Client
from django.utils import timezone

from audit.catalogue import AuditAction, AuditOutcome
from audit.models import AuditCheckpoint, AuditEvent
from audit.services import audit_chain_verify, checkpoint_create
from audit.testing import raw_sql, seed_events
from audit.verify import verify_chain
from conversations.models import Conversation

pytestmark = pytest.mark.django_db


@pytest.fixture
def interval(settings) -> timedelta:
    settings.AUDIT_CHECKPOINT_INTERVAL_SECONDS = 300
    return timedelta(seconds=300)


@contextmanager
def clock(at: datetime) -> Iterator[None]:
    """Everything written inside happens at `at` (events, checkpoints, sign-ins)."""
    with mock.patch("django.utils.timezone.now", return_value=at):
        yield


def truncate_audit_tables() -> None:
    """What `TRUNCATE audit_auditevent, audit_auditcheckpoint, audit_auditanchor` does."""
    for table in ("audit_auditanchor", "audit_auditcheckpoint", "audit_auditevent"):
        raw_sql(f"DELETE FROM {table}")  # noqa: S608 (fixed table names)


def sign_in(user: Any) -> None:
    Client().force_login(user)  # sets last_login and records auth.login


# --- No false alarms --------------------------------------------------------------------------


def test_a_fresh_install_verifies(interval, owner) -> None:
    # An account made by createsuperuser, never signed in: no event was ever expected.
    assert verify_chain().ok
    assert verify_chain(now=timezone.now() + 100 * interval).ok


def test_a_fresh_install_with_the_scheduler_running_verifies(interval) -> None:
    start = timezone.now()
    for n in range(3):
        with clock(start + n * interval):
            checkpoint_create()
    report = verify_chain(now=start + 3 * interval)
    assert report.ok, report.summary()


def test_an_idle_healthy_system_verifies_long_after_its_last_event(interval, owner) -> None:
    start = timezone.now() - 50 * interval
    with clock(start):
        sign_in(owner)
        seed_events(5, owner)
    # Nothing happens for hours; the scheduler keeps signing the same head.
    for n in range(1, 50):
        with clock(start + n * interval):
            checkpoint_create()
    report = verify_chain(now=start + 50 * interval)
    assert report.ok, report.summary()
    assert AuditCheckpoint.objects.values("sequence").distinct().count() == 1


def test_events_newer_than_the_last_checkpoint_are_allowed_for_two_intervals(
    interval, owner
) -> None:
    seed_events(3, owner)
    checkpoint_create()
    seed_events(3, owner)
    assert verify_chain(now=timezone.now() + interval + interval / 2).ok


# --- Stale: the newest events deleted with the newest checkpoint ------------------------------


def test_deleting_the_newest_events_and_checkpoint_leaves_a_stale_checkpoint(
    interval, owner
) -> None:
    start = timezone.now() - 3 * interval
    with clock(start):
        seed_events(10, owner)
        kept = checkpoint_create()
    with clock(start + interval):
        seed_events(5, owner)
        checkpoint_create()
    raw_sql("DELETE FROM audit_auditevent WHERE sequence > 10")
    raw_sql("DELETE FROM audit_auditcheckpoint WHERE id <> %s", [kept.pk])

    report = verify_chain()
    assert report.problem is not None
    assert (report.problem.kind, report.problem.sequence) == ("checkpoint_stale", 11)
    assert "newest checkpoint (at #10)" in report.problem.message
    assert "600 s" in report.problem.message
    # The chain itself is consistent: the walk got to the end before the completeness check.
    assert (report.events_checked, report.checkpoints_checked) == (10, 1)


def test_a_stopped_checkpoint_schedule_is_stale_too(interval) -> None:
    with clock(timezone.now() - 2 * interval - timedelta(seconds=1)):
        checkpoint_create()
    report = verify_chain()
    assert report.problem is not None and report.problem.kind == "checkpoint_stale"
    assert "not running" in report.problem.message


# --- Missing: every checkpoint deleted ------------------------------------------------------


def test_deleting_every_checkpoint_is_caught_as_missing(interval, owner) -> None:
    start = timezone.now() - 4 * interval
    with clock(start):
        seed_events(8, owner)
    for n in range(1, 4):
        with clock(start + n * interval):
            checkpoint_create()
            seed_events(2, owner)
    assert verify_chain().ok
    raw_sql("DELETE FROM audit_auditcheckpoint")

    report = verify_chain()
    assert report.problem is not None
    assert (report.problem.kind, report.problem.sequence) == ("checkpoint_missing", 1)
    assert "no checkpoint exists" in report.problem.message


def test_events_a_recent_checkpoint_does_not_cover_are_missing(interval, owner) -> None:
    # A fresh checkpoint that does not cover events older than two intervals: those events
    # were inserted afterwards, behind the application's back.
    checkpoint_create()
    with clock(timezone.now() - 3 * interval):
        seed_events(2, owner)
    report = verify_chain()
    assert report.problem is not None
    assert (report.problem.kind, report.problem.sequence) == ("checkpoint_missing", 1)


# --- Empty where events were expected -------------------------------------------------------


def test_a_truncated_trail_after_use_is_caught_as_empty(interval, owner) -> None:
    sign_in(owner)
    seed_events(20, owner)
    checkpoint_create()
    truncate_audit_tables()
    assert AuditEvent.objects.count() == AuditCheckpoint.objects.count() == 0

    report = verify_chain()
    assert report.problem is not None
    assert (report.problem.kind, report.problem.sequence) == ("empty_trail", 0)
    assert "someone signed in" in report.problem.message
    assert "0 events, 0 checkpoints" in report.summary()


def test_conversations_without_events_are_an_empty_trail(interval, owner) -> None:
    Conversation.objects.create(owner=owner)
    report = verify_chain()
    assert report.problem is not None and report.problem.kind == "empty_trail"
    assert "a conversation was created" in report.problem.message


def test_a_trail_restarted_after_truncation_is_still_caught(interval, owner) -> None:
    start = timezone.now() - 10 * interval
    with clock(start):
        sign_in(owner)
        seed_events(20, owner)
        checkpoint_create()
    truncate_audit_tables()
    # The scheduler and the product carry on: a new chain starts from #1.
    with clock(start + 9 * interval):
        checkpoint_create()
        seed_events(2)
        checkpoint_create()

    report = verify_chain()
    assert report.problem is not None
    assert (report.problem.kind, report.problem.sequence) == ("empty_trail", 1)
    assert "the events before it were deleted" in report.problem.message


# --- How the result is exposed --------------------------------------------------------------


def test_the_command_exits_one_and_names_the_reason(interval, owner) -> None:
    sign_in(owner)
    truncate_audit_tables()
    out, err = StringIO(), StringIO()
    with pytest.raises(SystemExit) as exit_info:
        call_command("verify_audit_chain", stdout=out, stderr=err)
    assert exit_info.value.code == 1
    assert "empty_trail" in err.getvalue() and "emptied" in err.getvalue()
    assert out.getvalue() == ""
    # Recorded like any failed verification, which feeds the console and the metric.
    recorded = AuditEvent.objects.get(action=AuditAction.CHAIN_VERIFIED)
    assert recorded.outcome == AuditOutcome.FAILED
    assert recorded.details["failure"] == "empty_trail"


def test_a_stale_checkpoint_is_recorded_as_a_failed_verification(interval, owner) -> None:
    with clock(timezone.now() - 3 * interval):
        seed_events(4, owner)
        checkpoint_create()
    report = audit_chain_verify()
    assert not report.ok
    recorded = AuditEvent.objects.get(action=AuditAction.CHAIN_VERIFIED)
    assert recorded.details["failure"] == "checkpoint_stale"
    assert recorded.details["failed_sequence"] == 5
