"""Verification on schedule, and its result as metrics and as the console banner."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from django.conf import settings
from django.test import Client
from django.utils import timezone

from audit.catalogue import AuditAction, AuditOutcome
from audit.models import AuditEvent
from audit.selectors import verification_status
from audit.services import audit_chain_verify, audit_record
from audit.tasks import audit_verify_full, audit_verify_incremental
from audit.testing import raw_sql, seed_events
from observability.testing import parse_samples, sample_value

pytestmark = pytest.mark.django_db

BANNER = 'id="audit-verification-banner"'


def scrape() -> Any:
    response = Client().get("/metrics")
    assert response.status_code == 200
    return parse_samples(response.content.decode())


def console(user: Any, path: str = "/admin/") -> str:
    client = Client()
    client.force_login(user)
    response = client.get(path)
    assert response.status_code == 200
    return response.content.decode()


def age_verifications(by: dt.timedelta) -> None:
    raw_sql(
        "UPDATE audit_auditevent SET occurred_at = %s WHERE action = %s",
        [timezone.now() - by, AuditAction.CHAIN_VERIFIED],
    )


# --- Schedule --------------------------------------------------------------------------------


def test_beat_schedules_incremental_and_full_runs_at_their_intervals() -> None:
    incremental = settings.CELERY_BEAT_SCHEDULE["audit-verify-incremental"]
    full = settings.CELERY_BEAT_SCHEDULE["audit-verify-full"]
    assert incremental["task"] == audit_verify_incremental.name
    assert incremental["schedule"] == settings.AUDIT_VERIFY_INTERVAL_SECONDS == 900
    assert full["task"] == audit_verify_full.name
    assert full["schedule"] == settings.AUDIT_VERIFY_FULL_INTERVAL_SECONDS == 86_400


def test_the_tasks_verify_and_record_the_mode(owner) -> None:
    seed_events(5, owner)
    assert audit_verify_full.apply().get() is True
    seed_events(2, owner)
    assert audit_verify_incremental.apply().get() is True
    modes = list(
        AuditEvent.objects.filter(action=AuditAction.CHAIN_VERIFIED)
        .order_by("sequence")
        .values_list("details__mode", "details__from_sequence")
    )
    assert modes == [("full", 0), ("incremental", 5)]


# --- Metrics ---------------------------------------------------------------------------------


def test_the_metrics_come_from_the_recorded_verification(owner) -> None:
    seed_events(4, owner)
    samples = scrape()
    assert ("eai_audit_last_verification_success", frozenset()) not in samples
    assert sample_value(samples, "eai_audit_verification_overdue") == 0  # events are new
    report = audit_chain_verify()
    samples = scrape()
    assert sample_value(samples, "eai_audit_last_verification_success") == 1
    assert sample_value(samples, "eai_audit_last_verification_head_sequence") == 4
    assert sample_value(samples, "eai_audit_last_verification_duration_seconds") == (
        pytest.approx(report.duration_seconds, abs=0.001)
    )
    assert sample_value(samples, "eai_audit_last_full_verification_timestamp_seconds") == (
        pytest.approx(timezone.now().timestamp(), abs=60)
    )
    # Whichever process verified: a failure recorded by another process (here written
    # straight to the trail, as a worker would) is what the next scrape reports.
    audit_record(
        action=AuditAction.CHAIN_VERIFIED,
        actor=None,
        outcome=AuditOutcome.FAILED,
        details={"ok": False, "mode": "incremental", "head_sequence": 3, "failure": "gap"},
    )
    samples = scrape()
    assert sample_value(samples, "eai_audit_last_verification_success") == 0
    assert sample_value(samples, "eai_audit_last_verification_head_sequence") == 3


def test_an_old_verification_is_reported_overdue(owner) -> None:
    seed_events(2, owner)
    audit_chain_verify()
    assert sample_value(scrape(), "eai_audit_verification_overdue") == 0
    age_verifications(dt.timedelta(seconds=2 * settings.AUDIT_VERIFY_INTERVAL_SECONDS + 60))
    assert sample_value(scrape(), "eai_audit_verification_overdue") == 1


def test_a_missing_full_run_is_overdue_even_with_recent_incremental_runs(owner, settings) -> None:
    settings.AUDIT_VERIFY_INTERVAL_SECONDS = 10**6
    settings.AUDIT_VERIFY_FULL_INTERVAL_SECONDS = 600
    seed_events(2, owner)
    audit_chain_verify()
    audit_chain_verify(incremental=True)
    later = timezone.now() + dt.timedelta(hours=1)
    status = verification_status(now=later)
    assert status.ok and status.mode == "incremental" and status.last_full_at is not None
    assert status.overdue  # the full run is two intervals old, the incremental one is not
    settings.AUDIT_VERIFY_FULL_INTERVAL_SECONDS = 3600
    assert not verification_status(now=later).overdue


# --- Banner ----------------------------------------------------------------------------------


def test_no_banner_while_the_chain_verifies_on_time(compliance_officer, owner) -> None:
    seed_events(3, owner)
    audit_chain_verify()
    assert BANNER not in console(compliance_officer)


def test_a_failed_verification_is_on_every_console_page(compliance_officer, owner) -> None:
    seed_events(6, owner)
    raw_sql("UPDATE audit_auditevent SET details = %s WHERE sequence = 4", ['{"n": 9}'])
    audit_chain_verify()
    for path in ["/admin/", "/admin/audit/auditevent/", "/admin/audit/auditevent/verify/"]:
        page = console(compliance_officer, path)
        assert BANNER in page, path
        assert "hash_mismatch" in page and "#4" in page and "FAILED" in page


def test_an_overdue_verification_is_on_the_console(compliance_officer, owner) -> None:
    seed_events(3, owner)
    audit_chain_verify()
    age_verifications(dt.timedelta(hours=2))
    page = console(compliance_officer)
    assert BANNER in page and "overdue" in page


def test_a_trail_never_verified_is_on_the_console(compliance_officer, owner) -> None:
    seed_events(3, owner)
    raw_sql(
        "UPDATE audit_auditevent SET occurred_at = %s", [timezone.now() - dt.timedelta(hours=1)]
    )
    page = console(compliance_officer)
    assert BANNER in page and "never been verified" in page


def test_people_without_the_console_see_no_banner_and_cost_no_query(
    owner, django_assert_num_queries
) -> None:
    from audit.context_processors import audit_verification

    seed_events(3, owner)
    raw_sql(
        "UPDATE audit_auditevent SET occurred_at = %s", [timezone.now() - dt.timedelta(hours=1)]
    )

    class Request:
        user = owner

    with django_assert_num_queries(0):
        context = audit_verification(Request())  # type: ignore[arg-type]
    assert not context["audit_verification_alert"]
