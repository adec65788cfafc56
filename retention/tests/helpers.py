"""Conversations of a given age for retention tests (timestamps set, never slept for)."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

from django.utils import timezone

from conversations.models import Conversation, Message
from costs.models import CostEntry


def aged_conversation(
    owner: Any,
    *,
    days: float,
    title: str = "Quarterly plans",
    messages: int = 2,
    ledger: bool = False,
    source: str = Conversation.Source.WEB,
    created_too: bool = True,
) -> Conversation:
    """A conversation whose last activity was `days` ago, with `messages` messages (user and
    assistant in turn, with text, tool calls and options) and, with `ledger`, a cost row."""
    conversation = Conversation.objects.create(
        owner=owner, title=title, model="demo", source=source, provider_state={"id": "x"}
    )
    reply = None
    for index in range(messages):
        role = "user" if index % 2 == 0 else "assistant"
        reply = Message.objects.create(
            conversation=conversation,
            role=role,
            status="complete",
            content=f"secret text {index} of {title}",
            tool_events=[{"id": "t1", "name": "search", "arguments": "{}", "result": "r"}]
            if role == "assistant"
            else [],
            options={"temperature": 0.2} if role == "assistant" else {},
            notice="a notice" if role == "assistant" else "",
        )
    if ledger and reply is not None:
        CostEntry.objects.create(
            idempotency_key=f"{reply.public_id}:0",
            created_at=timezone.now(),
            user=owner,
            conversation=conversation,
            message=reply,
            call_index=0,
            model="demo",
            provider="demo",
            input_tokens=10,
            output_tokens=5,
            cost=Decimal("0.010000"),
            currency="USD",
            outcome="complete",
        )
    age(conversation, days=days, created_too=created_too)
    return conversation


def age(conversation: Conversation, *, days: float, created_too: bool = True) -> None:
    """Move the conversation's last activity (and creation) `days` into the past."""
    when = timezone.now() - dt.timedelta(days=days)
    moved = {"updated_at": when, **({"created_at": when} if created_too else {})}
    Conversation.objects.filter(pk=conversation.pk).update(**moved)
    conversation.refresh_from_db()


def is_erased(conversation: Conversation) -> bool:
    conversation.refresh_from_db()
    messages = list(conversation.messages.all())
    return (
        conversation.title == ""
        and conversation.deleted_at is not None
        and conversation.provider_state == {}
        and all(
            m.content == "" and m.tool_events == [] and m.options == {} and m.notice == ""
            for m in messages
        )
    )


def is_intact(conversation: Conversation) -> bool:
    conversation.refresh_from_db()
    return (
        conversation.title != ""
        and conversation.deleted_at is None
        and all(m.content for m in conversation.messages.all())
    )
