"""Retention runs: policies after N days of inactivity, departments against the
organisation, legal holds, replies in flight, bounded batches, the ledger and the audit chain
left intact, and the dry run changing nothing."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from django.contrib.auth.models import Group
from django.core.management import call_command
from django.utils import timezone

from audit.catalogue import AuditAction
from audit.models import AuditEvent
from audit.services import checkpoint_create
from audit.verify import verify_chain
from conversations.models import Conversation, Message
from costs.models import CostEntry
from retention.models import ConversationRetention, RetentionPolicy
from retention.selectors import retention_forecast
from retention.services import retention_apply
from retention.tests.helpers import aged_conversation, is_erased, is_intact

pytestmark = pytest.mark.django_db

ERASE, REMOVE = RetentionPolicy.Action.ERASE, RetentionPolicy.Action.REMOVE


def org_policy(days: int, action: str = ERASE, **fields: Any) -> RetentionPolicy:
    return RetentionPolicy.objects.create(
        name=f"Organisation {action} {days}",
        scope=RetentionPolicy.Scope.ORGANISATION,
        days=days,
        action=action,
        **fields,
    )


def dept_policy(group: Group, days: int, action: str = ERASE) -> RetentionPolicy:
    return RetentionPolicy.objects.create(
        name=f"{group.name} {action} {days}",
        scope=RetentionPolicy.Scope.DEPARTMENT,
        group=group,
        days=days,
        action=action,
    )


def applied_events() -> list[dict[str, Any]]:
    return [
        e.details
        for e in AuditEvent.objects.filter(action=AuditAction.RETENTION_APPLIED).order_by(
            "sequence"
        )
    ]


def test_an_erasing_policy_erases_conversations_inactive_for_longer_than_n_days(
    owner, colleague
) -> None:
    org_policy(30)
    old = aged_conversation(owner, days=31)
    recent = aged_conversation(owner, days=29)
    others = aged_conversation(colleague, days=400, messages=3)
    last_activity = old.updated_at

    run = retention_apply()

    assert is_erased(old) and is_erased(others)
    assert is_intact(recent)
    # Retention is not activity: the erased conversation keeps its last activity time.
    assert old.updated_at == last_activity
    assert run.conversations == 2 and run.messages == 5
    assert ConversationRetention.objects.get(conversation=old).erased_at is not None
    [event] = applied_events()
    assert event["conversations_erased"] == 2 and event["messages_erased"] == 5
    assert event["days"] == 30 and event["scope"] == "organisation"
    # A second run has nothing left to do.
    assert retention_apply().conversations == 0


def test_the_owners_own_deleted_conversations_are_not_counted_again(owner) -> None:
    from conversations.services import conversation_delete

    org_policy(30)
    deleted = aged_conversation(owner, days=100)
    conversation_delete(actor=owner, public_id=deleted.public_id)
    assert retention_apply().conversations == 0


def test_a_removing_policy_hides_the_conversation_and_keeps_its_content(owner) -> None:
    org_policy(30, REMOVE)
    old = aged_conversation(owner, days=40)

    run = retention_apply()

    old.refresh_from_db()
    assert old.deleted_at is not None  # gone from the owner's lists and pages
    assert old.title == "Quarterly plans"
    assert all(m.content for m in old.messages.all())
    assert run.outcomes[-1].conversations == 1
    [event] = applied_events()
    assert event["conversations_removed"] == 1 and event["messages_removed"] == 2
    assert not Conversation.objects.filter(owner=owner, deleted_at__isnull=True).exists()


def test_a_removed_conversation_is_erased_when_an_erasing_period_passes(owner) -> None:
    org_policy(30, REMOVE)
    org_policy(365, ERASE)
    young = aged_conversation(owner, days=40)
    old = aged_conversation(owner, days=400)

    retention_apply()

    assert is_erased(old)  # erasure wins over removal
    young.refresh_from_db()
    assert young.deleted_at is not None and young.title  # removed only
    # A year later, the removed conversation is erased too.
    retention_apply(now=timezone.now() + dt.timedelta(days=365))
    assert is_erased(young)


def test_a_department_policy_covers_its_members_only(owner, colleague, outsider) -> None:
    legal = Group.objects.create(name="Legal")
    owner.groups.add(legal)
    dept_policy(legal, 10)
    member = aged_conversation(owner, days=11)
    non_member = aged_conversation(colleague, days=400)

    retention_apply()

    assert is_erased(member)
    assert is_intact(non_member)


def test_the_shorter_of_the_organisation_and_department_periods_wins(owner, colleague) -> None:
    sales = Group.objects.create(name="Sales")
    owner.groups.add(sales)
    org = org_policy(90)
    dept = dept_policy(sales, 10)
    # A department that keeps longer than the organisation does not extend anything.
    research = Group.objects.create(name="Research")
    colleague.groups.add(research)
    dept_policy(research, 365)
    members = aged_conversation(owner, days=20)
    members_old = aged_conversation(owner, days=100)
    researchers = aged_conversation(colleague, days=100)
    researchers_recent = aged_conversation(colleague, days=20)

    retention_apply()

    assert is_erased(members) and is_erased(members_old) and is_erased(researchers)
    assert is_intact(researchers_recent)
    by_policy = {e["policy"]: e for e in applied_events()}
    # Each conversation counts once, under the first (shortest) rule that covers it.
    assert by_policy[str(dept.pk)]["conversations_erased"] == 2
    assert by_policy[str(org.pk)]["conversations_erased"] == 1


def test_held_conversations_and_held_people_are_skipped_and_counted(
    owner, colleague, outsider
) -> None:
    org_policy(30)
    held = aged_conversation(owner, days=100)
    Conversation.objects.filter(pk=held.pk).update(legal_hold=True)
    type(colleague).objects.filter(pk=colleague.pk).update(legal_hold=True)
    held_persons = aged_conversation(colleague, days=100)
    free = aged_conversation(outsider, days=100)

    run = retention_apply()

    assert is_intact(held) and is_intact(held_persons)
    assert is_erased(free)
    assert run.held_skipped == 2
    [event] = applied_events()
    assert event["held_skipped"] == 2 and event["conversations_erased"] == 1


def test_a_reply_in_flight_is_never_touched(owner) -> None:
    org_policy(30)
    busy = aged_conversation(owner, days=100)
    Message.objects.create(conversation=busy, role="assistant", status="streaming", content="x")

    run = retention_apply()

    assert is_intact(busy)
    assert run.outcomes[-1].busy_skipped == 1
    assert applied_events()[0]["busy_skipped"] == 1


def test_the_ledger_and_the_audit_chain_stay_intact(owner) -> None:
    org_policy(30)
    # Created now (the trail must not start after them), inactive for 50 days.
    conversations = [
        aged_conversation(owner, days=50, ledger=True, created_too=False) for _ in range(3)
    ]
    ledger_before = list(CostEntry.objects.order_by("pk").values())

    retention_apply()

    assert all(is_erased(c) for c in conversations)
    assert list(CostEntry.objects.order_by("pk").values()) == ledger_before
    [event] = AuditEvent.objects.filter(action=AuditAction.RETENTION_APPLIED)
    # Counts, never content.
    assert "Quarterly plans" not in str(event.details)
    assert "secret text" not in str(event.details)
    assert event.actor_id is None
    checkpoint_create()
    report = verify_chain()
    assert report.ok, report.summary()


def test_batches_are_bounded_and_a_run_stops_at_its_cap(owner, settings) -> None:
    org_policy(30)
    conversations = [aged_conversation(owner, days=50 + i, messages=1) for i in range(5)]

    first = retention_apply(batch_size=2, max_conversations=3)

    assert first.conversations == 3
    assert first.outcomes[-1].capped
    # Oldest first.
    assert [is_erased(c) for c in conversations] == [False, False, True, True, True]
    second = retention_apply(batch_size=2, max_conversations=3)
    assert second.conversations == 2 and not second.outcomes[-1].capped
    assert all(is_erased(c) for c in conversations)


def test_each_batch_is_its_own_transaction(owner, django_capture_on_commit_callbacks) -> None:
    """A failure in a later batch leaves the earlier batches done (and the run resumable)."""
    from unittest import mock

    from retention import services

    org_policy(30)
    conversations = [aged_conversation(owner, days=50 + i, messages=1) for i in range(4)]
    real_act = services._act
    calls = []

    def act_then_fail(ids: list[int], **kwargs: Any) -> int:
        calls.append(ids)
        if len(calls) == 2:
            raise RuntimeError("database went away")
        return real_act(ids, **kwargs)

    with mock.patch.object(services, "_act", act_then_fail), pytest.raises(RuntimeError):
        retention_apply(batch_size=2)
    assert [is_erased(c) for c in conversations] == [False, False, True, True]
    [failed] = AuditEvent.objects.filter(action=AuditAction.RETENTION_APPLIED)
    assert failed.outcome == "failed" and failed.details["conversations_erased"] == 2
    assert retention_apply(batch_size=2).conversations == 2


def test_disabled_policies_do_nothing(owner) -> None:
    org_policy(30, enabled=False)
    old = aged_conversation(owner, days=100)
    assert retention_apply().conversations == 0
    assert is_intact(old)
    assert applied_events() == []


def test_the_dry_run_reports_what_a_run_would_do_and_changes_nothing(owner, colleague) -> None:
    org = org_policy(30)
    aged_conversation(owner, days=40, messages=2)
    oldest = aged_conversation(owner, days=90, messages=3)
    held = aged_conversation(colleague, days=60)
    Conversation.objects.filter(pk=held.pk).update(legal_hold=True)
    events_before = AuditEvent.objects.count()
    conversations_before = list(Conversation.objects.order_by("pk").values())

    [ttl, forecast] = retention_forecast()

    assert ttl.conversations == 0
    assert forecast.rule.key == str(org.pk)
    assert (forecast.conversations, forecast.messages, forecast.held_skipped) == (2, 5, 1)
    assert forecast.oldest_activity == oldest.updated_at
    assert list(Conversation.objects.order_by("pk").values()) == conversations_before
    assert AuditEvent.objects.count() == events_before
    # The run then does exactly what was forecast.
    run = retention_apply()
    assert (run.conversations, run.messages, run.held_skipped) == (2, 5, 1)


def test_the_command_dry_run_changes_nothing_and_the_command_applies(owner, capsys) -> None:
    org_policy(30)
    old = aged_conversation(owner, days=40)

    call_command("apply_retention", "--dry-run")
    out = capsys.readouterr().out
    assert "would erase 1 conversations (2 messages)" in out
    assert "Dry run: nothing was changed." in out
    assert is_intact(old)
    assert applied_events() == []

    call_command("apply_retention")
    out = capsys.readouterr().out
    assert "erased 1 conversations (2 messages)" in out
    assert is_erased(old)
    assert len(applied_events()) == 1


def test_the_api_expiry_comes_first_and_each_conversation_counts_under_one_rule(
    owner, colleague
) -> None:
    from retention.services import conversation_expiry_set

    org = org_policy(30)
    expired = aged_conversation(owner, days=40)
    conversation_expiry_set(conversation=expired, days=5)
    held_expired = aged_conversation(colleague, days=40)
    conversation_expiry_set(conversation=held_expired, days=5)
    Conversation.objects.filter(pk=held_expired.pk).update(legal_hold=True)
    not_yet = aged_conversation(owner, days=2)
    conversation_expiry_set(conversation=not_yet, days=5)
    inactive = aged_conversation(owner, days=35)

    [ttl, policy] = retention_forecast()
    assert (ttl.conversations, ttl.held_skipped) == (1, 1)
    assert (policy.conversations, policy.held_skipped) == (1, 0)

    run = retention_apply()

    assert is_erased(expired) and is_erased(inactive)
    assert is_intact(not_yet) and is_intact(held_expired)
    by_policy = {e["policy"]: e for e in applied_events()}
    assert by_policy["api_ttl"]["conversations_erased"] == 1
    assert by_policy["api_ttl"]["held_skipped"] == 1
    assert by_policy[str(org.pk)]["conversations_erased"] == 1
    assert by_policy[str(org.pk)]["held_skipped"] == 0
    assert run.held_skipped == 1
