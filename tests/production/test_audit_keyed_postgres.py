"""The keyed audit chain and incremental verification on PostgreSQL (issue 15, item 4).

The verifier reads PostgreSQL differently from SQLite — the server formats the timestamps,
and the next page is fetched on a second thread while one is hashed — so every attack of
audit/tests/test_keyed_chain.py that touches those paths is repeated here, with the
append-only trigger disabled for the tampering (as the table's owner could) and restored
afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from django.db import connection

from audit import verify
from audit.models import AuditEvent
from audit.services import audit_chain_verify
from audit.testing import delete_and_relink, forge_from, insert_unkeyed, raw_sql, seed_events
from audit.verify import verify_chain

pytestmark = [pytest.mark.production, pytest.mark.django_db(transaction=True)]


@pytest.fixture(autouse=True)
def _no_s3_anchor(settings: Any) -> None:
    settings.AUDIT_ANCHOR_S3_BUCKET = ""


@pytest.fixture
def unguarded_events() -> Iterator[None]:
    raw_sql("ALTER TABLE audit_auditevent DISABLE TRIGGER audit_auditevent_append_only")
    try:
        yield
    finally:
        raw_sql("ALTER TABLE audit_auditevent ENABLE TRIGGER audit_auditevent_append_only")


@pytest.fixture
def small_pages(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pages of 7, so the walk crosses many page boundaries (and prefetches)."""
    monkeypatch.setattr(verify, "PAGE_SIZE", 7)


def kind_at(report: Any) -> tuple[str, int]:
    assert report.problem is not None, report.summary()
    return report.problem.kind, report.problem.sequence


def test_an_intact_keyed_chain_verifies_across_pages(owner, small_pages) -> None:
    assert connection.vendor == "postgresql"
    seed_events(50, owner)
    report = verify_chain()
    assert report.ok, report.summary()
    assert report.events_checked == 50 and report.last_sequence == 50
    assert AuditEvent.objects.filter(key_id="").count() == 0


def test_tampering_without_the_key_is_caught_at_the_event(
    owner, unguarded_events, small_pages
) -> None:
    seed_events(30, owner)
    forge_from(12, {"n": "forged"}, key="plain")
    report = verify_chain()
    assert kind_at(report) == ("hash_mismatch", 12) and report.events_checked == 11


def test_an_unkeyed_insertion_is_caught_as_a_downgrade(owner, unguarded_events) -> None:
    seed_events(20, owner)
    insert_unkeyed(9, details={"inserted": True})
    assert kind_at(verify_chain()) == ("downgrade", 10)


def test_a_relinked_deletion_is_caught_at_the_event(owner, unguarded_events) -> None:
    seed_events(20, owner)
    delete_and_relink(8)
    assert kind_at(verify_chain()) == ("hash_mismatch", 8)


def test_incremental_runs_start_from_the_signed_marker(owner, unguarded_events) -> None:
    seed_events(40, owner)
    assert audit_chain_verify().ok
    seed_events(10, owner)
    report = audit_chain_verify(incremental=True)
    assert report.ok and (report.mode, report.from_sequence) == ("incremental", 40)
    assert report.events_checked == 11
    forge_from(45, {"n": "forged"}, key="plain")
    assert kind_at(verify_chain(incremental=True)) == ("hash_mismatch", 45)
