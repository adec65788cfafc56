"""The dry-run report: what a retention run would do now, per rule, changing nothing."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from django.db.models import Min
from django.utils import timezone

from conversations.models import Conversation, Message
from retention import rules as retention_rules
from retention.models import ConversationRetention
from retention.rules import Rule


def conversation_expiry(*, conversation: Conversation) -> dt.datetime | None:
    """When the conversation's own expiry (the API's `retention_days`) erases it, or None."""
    return (
        ConversationRetention.objects.filter(conversation=conversation)
        .values_list("expires_at", flat=True)
        .first()
    )


@dataclass(frozen=True)
class RuleForecast:
    rule: Rule
    conversations: int  # would be erased or removed now
    messages: int  # in those conversations
    held_skipped: int  # due, but the conversation or its owner is under legal hold
    busy_skipped: int  # due, but a reply is being written
    oldest_activity: dt.datetime | None  # the oldest last activity among those affected
    oldest_expiry: dt.datetime | None  # API expiry only: the earliest expiry passed


def retention_forecast(*, now: dt.datetime | None = None) -> list[RuleForecast]:
    """Per rule, in the order a run applies them, what a run started now would do (before
    RETENTION_MAX_PER_RUN: a large backlog takes several runs)."""
    now = now or timezone.now()
    rules = retention_rules.rules_active()
    forecasts = []
    for index, rule in enumerate(rules):
        targeted = retention_rules.targeted(rules, index, now)
        todo = retention_rules.actionable(targeted)
        oldest = todo.aggregate(activity=Min("updated_at"), expiry=Min("retention__expires_at"))
        forecasts.append(
            RuleForecast(
                rule=rule,
                conversations=todo.count(),
                messages=Message.objects.filter(conversation__in=todo.values("pk")).count(),
                held_skipped=targeted.filter(retention_rules.HELD).count(),
                busy_skipped=targeted.exclude(retention_rules.HELD)
                .filter(retention_rules.in_flight())
                .count(),
                oldest_activity=oldest["activity"],
                oldest_expiry=oldest["expiry"] if rule.scope == retention_rules.API_TTL else None,
            )
        )
    return forecasts
