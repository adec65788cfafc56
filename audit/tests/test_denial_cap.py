"""Denied events are capped per person (or address) and minute: refusals are what an attacker
can cause at will, and the trail is append-only."""

from __future__ import annotations

import pytest
from channels.db import database_sync_to_async as sync_to_async

from audit.catalogue import AuditAction, AuditOutcome
from audit.models import AuditEvent
from audit.services import audit_record
from audit.verify import verify_chain
from tests.support import communicator, early_in_a_minute


@pytest.mark.django_db
def test_denials_past_the_cap_are_summarised_once_and_the_chain_still_verifies(
    owner, colleague, settings
) -> None:
    settings.AUDIT_DENIALS_PER_MINUTE = 3
    early_in_a_minute()
    for _ in range(10):
        audit_record(action=AuditAction.MODEL_REFUSED, actor=owner, outcome=AuditOutcome.DENIED)
    refused = list(AuditEvent.objects.filter(action=AuditAction.MODEL_REFUSED).order_by("pk"))
    assert len(refused) == 4
    assert "further_denials_unrecorded_for_seconds" not in refused[2].details
    assert 1 <= refused[3].details["further_denials_unrecorded_for_seconds"] <= 60

    # Per person and per action: others' denials, other actions and successes are recorded.
    audit_record(action=AuditAction.MODEL_REFUSED, actor=colleague, outcome=AuditOutcome.DENIED)
    audit_record(
        action=AuditAction.CONVERSATION_ACCESS_DENIED, actor=owner, outcome=AuditOutcome.DENIED
    )
    for _ in range(10):
        audit_record(action=AuditAction.LOGIN, actor=owner)
    assert AuditEvent.objects.filter(actor=colleague).count() == 1
    assert AuditEvent.objects.filter(action=AuditAction.CONVERSATION_ACCESS_DENIED).count() == 1
    assert AuditEvent.objects.filter(action=AuditAction.LOGIN).count() == 10
    assert verify_chain().ok


@pytest.mark.django_db
def test_zero_records_every_denial(owner, settings) -> None:
    settings.AUDIT_DENIALS_PER_MINUTE = 0
    for _ in range(100):
        audit_record(action=AuditAction.MODEL_REFUSED, actor=owner, outcome=AuditOutcome.DENIED)
    assert AuditEvent.objects.filter(action=AuditAction.MODEL_REFUSED).count() == 100


@pytest.mark.django_db(transaction=True)
async def test_anonymous_handshakes_cannot_fill_the_trail(settings) -> None:
    settings.AUDIT_DENIALS_PER_MINUTE = 5
    early_in_a_minute()
    for _ in range(30):
        ok, _code = await communicator(cookie=None).connect()
        assert not ok
    refused = await sync_to_async(list)(
        AuditEvent.objects.filter(action=AuditAction.WS_REFUSED)
        .order_by("sequence")
        .values_list("details", flat=True)
    )
    # Five, then one saying the rest of the minute is not recorded.
    assert len(refused) == 6
    assert "further_denials_unrecorded_for_seconds" in refused[-1]
