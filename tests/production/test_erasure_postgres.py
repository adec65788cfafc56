"""Erasure on PostgreSQL: after a privacy request no table holds any trace of the person,
and the audit chain — append-only under its triggers — still verifies.

Run by `make test-production`. The scan reads every column of every table the database
lists (introspection), text, JSON (jsonb) and binary (bytea) alike.
"""

from __future__ import annotations

from typing import Any

import pytest

from accounts.erasure import person_erase
from audit import personal
from audit.catalogue import AuditAction
from audit.models import AuditEvent
from audit.services import audit_chain_pending, checkpoint_create
from audit.verify import verify_chain
from tests.erasure_support import person_with_traces, traces

pytestmark = [pytest.mark.production, pytest.mark.django_db]


@pytest.fixture(autouse=True)
def _no_s3_anchor(settings: Any) -> None:
    settings.AUDIT_ANCHOR_S3_BUCKET = ""
    personal.forget()


def test_erasure_on_postgres_leaves_no_trace_and_a_verifying_chain(
    administrator, compliance_officer
) -> None:
    traced = person_with_traces(administrator=administrator, officer=compliance_officer)
    checkpoint_create()
    before = list(AuditEvent.objects.order_by("sequence").values_list("sequence", "hash"))

    result = person_erase(actor=compliance_officer, person=traced.person, reason="DSR-PG-1")
    # PostgreSQL's deferred write path links events into the chain after the commit; the test's
    # transaction never commits, so link them here.
    audit_chain_pending()

    assert not result.already and result.counts["audit_key_destroyed"] == 1
    assert traces(traced.needles) == []
    # The trail was appended to, never rewritten: every earlier event is as it was.
    after = list(AuditEvent.objects.order_by("sequence").values_list("sequence", "hash"))
    assert after[: len(before)] == before and len(after) == len(before) + 1
    assert after[-1][0] == AuditEvent.objects.get(action=AuditAction.PERSON_ERASED).sequence
    checkpoint_create()
    report = verify_chain()
    assert report.ok, report.problem
    login = AuditEvent.objects.filter(actor=traced.person, action=AuditAction.LOGIN).first()
    assert login is not None and personal.reveal(login).actor_email == personal.ERASED
