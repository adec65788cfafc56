"""Which conversations each retention rule covers, as queries (shared by the run and the
dry-run report, so the report counts exactly what a run would do).

A rule is an enabled RetentionPolicy or the API's per-conversation expiry ("api_ttl"). Rules
are taken in a fixed order — the API expiry, then erasing policies, then removing ones, each
by shortest period first — and a conversation belongs to the first rule that covers it: so
every covering rule applies, the shortest period wins, and erasure wins over removal. Held
conversations (the conversation or its owner under legal hold) and conversations with a
reply in flight are counted under that first rule and skipped.

Nothing here reads or compares transcript columns (title, content, tool events, options):
they may be encrypted. Only timestamps, flags and ids are filtered.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from functools import reduce
from operator import or_

from django.contrib.auth import get_user_model
from django.db.models import Exists, OuterRef, Q, QuerySet

from conversations.models import Conversation, Message
from retention.models import RetentionPolicy

API_TTL = "api_ttl"

# The conversation or its owner is under legal hold (audit/legal_hold.py): never touched.
HELD = Q(legal_hold=True) | Q(owner__legal_hold=True)


@dataclass(frozen=True)
class Rule:
    key: str  # the policy's id, or "api_ttl"
    name: str
    scope: str  # "organisation", "department" or "api_ttl"
    action: str  # RetentionPolicy.Action
    days: int | None  # None for the API expiry (each conversation has its own)
    group_id: int | None = None
    department: str = ""


def rules_active() -> list[Rule]:
    """Every rule a run applies, in the order it applies them."""
    policies = RetentionPolicy.objects.filter(enabled=True).select_related("group")
    erase, remove = RetentionPolicy.Action.ERASE, RetentionPolicy.Action.REMOVE
    ordered = sorted(
        policies,
        key=lambda p: (p.action != erase, p.days, p.scope != "organisation", p.pk),
    )
    rules = [
        Rule(key=API_TTL, name="API conversation expiry", scope=API_TTL, action=erase, days=None)
    ]
    for policy in ordered:
        rules.append(
            Rule(
                key=str(policy.pk),
                name=policy.name,
                scope=policy.scope,
                action=erase if policy.action == erase else remove,
                days=policy.days,
                group_id=policy.group_id,
                department=policy.group.name if policy.group is not None else "",
            )
        )
    return rules


def _members(group_id: int) -> QuerySet:
    through = get_user_model().groups.through
    return through.objects.filter(group_id=group_id).values("user_id")


def covers(rule: Rule, now: dt.datetime) -> Q:
    """Conversations the rule is due for, whatever their state."""
    if rule.scope == API_TTL:
        return Q(retention__expires_at__lte=now)
    due = Q(updated_at__lt=now - dt.timedelta(days=rule.days or 0))
    if rule.group_id is not None:
        due &= Q(owner_id__in=_members(rule.group_id))
    return due


def still_to_do(action: str) -> Q:
    """Conversations the action still has work on: not yet erased (by retention or by their
    owner, whose deletion erases too) — removed ones can still be erased later — or, for
    removal, still in their owner's view."""
    if action == RetentionPolicy.Action.REMOVE:
        return Q(deleted_at__isnull=True)
    return Q(deleted_at__isnull=True) | Q(
        retention__removed_at__isnull=False, retention__erased_at__isnull=True
    )


def in_flight() -> Exists:
    """A reply is being written in the conversation: retention leaves it alone."""
    return Exists(Message.objects.filter(conversation=OuterRef("pk"), status__in=Message.IN_FLIGHT))


def targeted(rules: list[Rule], index: int, now: dt.datetime) -> QuerySet[Conversation]:
    """Conversations that belong to rules[index]: due under it and still to do, and not
    already belonging to an earlier rule (held and busy ones included)."""
    rule = rules[index]
    mine = covers(rule, now) & still_to_do(rule.action)
    queryset = Conversation.objects.filter(mine)
    earlier = [covers(r, now) & still_to_do(r.action) for r in rules[:index]]
    if earlier:
        queryset = queryset.exclude(reduce(or_, earlier))
    return queryset


def actionable(queryset: QuerySet[Conversation]) -> QuerySet[Conversation]:
    return queryset.exclude(HELD).filter(~in_flight())
