"""Retention runs, and the API's per-conversation expiry.

A run (`retention_apply`) takes each rule in turn (retention/rules.py) and works through the
conversations that belong to it in bounded batches: each batch is its own transaction, locks
its conversations with SELECT … FOR UPDATE SKIP LOCKED (so concurrent runs — two beat
schedulers, a manual run during a scheduled one — share the work and never do it twice), and
re-checks for a reply in flight under the lock (a new message needs the same lock, so none
can start meanwhile). A run stops after RETENTION_MAX_PER_RUN conversations; the next run
carries on. Each rule's outcome is one audit event per run with counts, never content.

What a run does to a conversation:
* erase — as the owner's own deletion (conversations.services.conversation_delete): the title,
  every message's text, tool calls, notices, errors and options are erased and the
  conversation leaves every list, page and API answer. The rows stay, without content, so the
  cost ledger (costs.CostEntry) and the audit trail keep what they refer to.
* remove — the conversation leaves its owner's lists, pages and API answers; its content
  stays for the compliance console until an erasing rule (or erasure) takes it.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import DateTimeField, Value
from django.db.models.functions import Coalesce
from django.utils import timezone

from audit.catalogue import AuditAction, AuditOutcome, TargetType
from audit.governed import governed_writes
from audit.services import audit_record
from conversations.models import Conversation, Message
from conversations.search import forget_conversations
from retention import rules as retention_rules
from retention.models import ConversationRetention, RetentionPolicy
from retention.rules import Rule

logger = logging.getLogger(__name__)


class RetentionError(Exception):
    """A retention request refused: `code` is the machine code, `message` says why."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class RuleOutcome:
    rule: Rule
    conversations: int = 0
    messages: int = 0
    held_skipped: int = 0
    busy_skipped: int = 0
    capped: bool = False

    def audit_details(self, run_id: str) -> dict[str, Any]:
        verb = "erased" if self.rule.action == RetentionPolicy.Action.ERASE else "removed"
        return {
            "run": run_id,
            "policy": self.rule.key,
            "policy_name": self.rule.name[:100],
            "scope": self.rule.scope,
            "department": self.rule.department,
            "days": self.rule.days,
            "action": self.rule.action,
            f"conversations_{verb}": self.conversations,
            f"messages_{verb}": self.messages,
            "held_skipped": self.held_skipped,
            "busy_skipped": self.busy_skipped,
            "capped": self.capped,
        }


@dataclass
class RunOutcome:
    run_id: str
    outcomes: list[RuleOutcome] = field(default_factory=list)

    @property
    def conversations(self) -> int:
        return sum(o.conversations for o in self.outcomes)

    @property
    def messages(self) -> int:
        return sum(o.messages for o in self.outcomes)

    @property
    def held_skipped(self) -> int:
        return sum(o.held_skipped for o in self.outcomes)


def retention_apply(
    *,
    now: dt.datetime | None = None,
    batch_size: int | None = None,
    max_conversations: int | None = None,
) -> RunOutcome:
    """Apply every enabled retention rule once; return what was done per rule.

    Each batch commits on its own; each rule's audit event (`retention.applied`, with the
    counts) is written after its batches. Raises only database errors: the batches already
    committed stay done, the rule's event records them with outcome `failed`, and the next
    run carries on.
    """
    now = now or timezone.now()
    batch_size = batch_size or settings.RETENTION_BATCH_SIZE
    budget = settings.RETENTION_MAX_PER_RUN if max_conversations is None else max_conversations
    run = RunOutcome(run_id=uuid.uuid4().hex[:16])
    rules = retention_rules.rules_active()
    for index, rule in enumerate(rules):
        outcome = RuleOutcome(rule=rule)
        run.outcomes.append(outcome)
        left = budget - run.conversations
        try:
            _apply_rule(rules, index, outcome, now=now, batch_size=batch_size, budget=left)
        except Exception:
            # The batches committed so far stay done: record them, then let the error out.
            _record(outcome, run.run_id, failed=True)
            raise
        # The API expiry is a rule of its own only when it had something to do.
        if rule.key == retention_rules.API_TTL and not (
            outcome.conversations or outcome.held_skipped or outcome.busy_skipped
        ):
            continue
        _record(outcome, run.run_id, failed=False)
    return run


@transaction.atomic
def _record(outcome: RuleOutcome, run_id: str, *, failed: bool) -> None:
    audit_record(
        action=AuditAction.RETENTION_APPLIED,
        actor=None,
        target=(TargetType.RETENTION_POLICY, outcome.rule.key),
        outcome=AuditOutcome.FAILED if failed else AuditOutcome.SUCCESS,
        details=outcome.audit_details(run_id),
    )


def _apply_rule(
    rules: list[Rule],
    index: int,
    outcome: RuleOutcome,
    *,
    now: dt.datetime,
    batch_size: int,
    budget: int,
) -> None:
    """Work through the rule's conversations in batches, counting into `outcome`."""
    rule = rules[index]
    targeted = retention_rules.targeted(rules, index, now)
    outcome.held_skipped = targeted.filter(retention_rules.HELD).count()
    outcome.busy_skipped = (
        targeted.exclude(retention_rules.HELD).filter(retention_rules.in_flight()).count()
    )
    todo = retention_rules.actionable(targeted)
    skipped: set[int] = set()
    while outcome.conversations < budget:
        size = min(batch_size, budget - outcome.conversations)
        with transaction.atomic():
            batch = todo.exclude(pk__in=skipped) if skipped else todo
            ids = list(
                batch.select_for_update(skip_locked=True, of=("self",))
                .order_by("updated_at", "pk")
                .values_list("pk", flat=True)[:size]
            )
            if not ids:
                return
            # Under the lock no new message can start; one that started just before is seen.
            busy = set(
                Message.objects.filter(
                    conversation_id__in=ids, status__in=Message.IN_FLIGHT
                ).values_list("conversation_id", flat=True)
            )
            if busy:
                skipped |= busy
                outcome.busy_skipped += len(busy)
                ids = [pk for pk in ids if pk not in busy]
            outcome.messages += _act(ids, action=rule.action, now=now, key=rule.key)
            outcome.conversations += len(ids)
        if len(ids) + len(busy) < size:
            return
    outcome.capped = todo.exclude(pk__in=skipped).exists()


@governed_writes(reason="retention: the run records retention.applied with its counts")
def _act(ids: list[int], *, action: str, now: dt.datetime, key: str) -> int:
    """Erase or remove the (locked) conversations; return the messages erased or removed.
    Queryset updates: retention never moves a conversation's `updated_at`."""
    if not ids:
        return 0
    removed_at = Coalesce("deleted_at", Value(now, output_field=DateTimeField()))
    if action == RetentionPolicy.Action.ERASE:
        messages = Message.objects.filter(conversation_id__in=ids).update(
            content="", tool_events=[], notice="", error="", options={}
        )
        Conversation.objects.filter(pk__in=ids).update(
            title="", provider_state={}, deleted_at=removed_at
        )
        marks = {"erased_at": now}
    else:
        messages = Message.objects.filter(conversation_id__in=ids).count()
        Conversation.objects.filter(pk__in=ids).update(deleted_at=removed_at)
        marks = {"removed_at": now}
    # Erased or hidden from the owner: either way gone from their search (conversations.search).
    forget_conversations(ids)
    ConversationRetention.objects.bulk_create(
        [ConversationRetention(conversation_id=pk, applied_by=key, **marks) for pk in ids],
        update_conflicts=True,
        unique_fields=["conversation"],
        update_fields=[*marks, "applied_by"],
    )
    return messages


# --- The API's per-conversation expiry ---------------------------------------------------------


def retention_days_max(*, owner: Any) -> int:
    """The longest expiry an API caller may ask for: RETENTION_API_MAX_DAYS, or less when a
    retention policy covering the owner (the organisation's, or a department of theirs) is
    shorter — an expiry only ever shortens what the policies keep."""
    longest = int(settings.RETENTION_API_MAX_DAYS)
    policies = RetentionPolicy.objects.filter(enabled=True).filter(
        scope=RetentionPolicy.Scope.ORGANISATION
    ) | RetentionPolicy.objects.filter(
        enabled=True, scope=RetentionPolicy.Scope.DEPARTMENT, group__in=owner.groups.all()
    )
    shortest = min((p.days for p in policies), default=None)
    return longest if shortest is None else min(longest, shortest)


def retention_days_check(*, owner: Any, days: object) -> int:
    """Validate a requested expiry in days. Raises RetentionError: `retention_days_invalid`
    (not a whole number from 1 to RETENTION_API_MAX_DAYS), `retention_days_too_long`
    (longer than a retention policy covering the owner keeps conversations)."""
    longest = int(settings.RETENTION_API_MAX_DAYS)
    if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= longest:
        raise RetentionError(
            "retention_days_invalid",
            f"retention_days must be a whole number of days from 1 to {longest}.",
        )
    allowed = retention_days_max(owner=owner)
    if days > allowed:
        raise RetentionError(
            "retention_days_too_long",
            f"retention_days may be at most {allowed}: a retention policy covering you keeps "
            f"conversations for {allowed} days, and an expiry may only shorten that.",
        )
    return days


@transaction.atomic
def conversation_expiry_set(*, conversation: Conversation, days: int) -> ConversationRetention:
    """Give a new conversation its expiry: erased `days` after its creation by the next
    retention run (whatever its activity, unless held). `days` must have passed
    `retention_days_check`."""
    expires_at = conversation.created_at + dt.timedelta(days=days)
    record, _ = ConversationRetention.objects.update_or_create(
        conversation=conversation, defaults={"expires_at": expires_at, "ttl_days": days}
    )
    return record
