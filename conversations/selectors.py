"""Reads of conversations and messages. Every read is scoped to the requesting user."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from uuid import UUID

from django.conf import settings
from django.db.models import Q, QuerySet, Sum

from accounts.models import User
from audit.catalogue import AuditAction, AuditOutcome, TargetType
from audit.services import audit_record
from conversations import streams, versions
from conversations.errors import not_found
from conversations.models import Conversation, Message
from conversations.rendering import render_markdown


@dataclass(frozen=True)
class ConversationPage:
    """One page of a user's conversations, and the cursor of the next (older) page."""

    conversations: list[Conversation]
    next_before: UUID | None


def conversation_list(
    *,
    user: User,
    before: UUID | None = None,
    limit: int | None = None,
    sources: tuple[str, ...] = (Conversation.Source.WEB,),
) -> ConversationPage:
    """The user's conversations started from `sources` (the chat's own by default: calls
    through the API never clutter the chat list), most recently active first, at most one
    page of them.

    `before` is the public id of the last conversation of the previous page (a keyset
    cursor: pages stay correct while conversations move to the top). Raises ChatError
    ("not_found") when it is not one of the user's conversations.
    """
    per_page = settings.CHAT_CONVERSATIONS_PER_PAGE
    limit = min(limit or per_page, per_page)
    conversations = Conversation.objects.filter(
        owner=user, source__in=sources, deleted_at__isnull=True
    ).order_by("-updated_at", "-id")
    if before is not None:
        anchor = (
            Conversation.objects.filter(
                owner=user, source__in=sources, public_id=before, deleted_at__isnull=True
            )
            .values("updated_at", "id")
            .first()
        )
        if anchor is None:
            raise not_found()
        conversations = conversations.filter(
            Q(updated_at__lt=anchor["updated_at"])
            | Q(updated_at=anchor["updated_at"], id__lt=anchor["id"])
        )
    rows = list(conversations.only("public_id", "title", "updated_at")[: limit + 1])
    more = len(rows) > limit
    rows = rows[:limit]
    return ConversationPage(rows, rows[-1].public_id if more else None)


def conversation_get_owned(*, user: User, public_id: UUID) -> Conversation:
    """The conversation if `user` owns it. Raises ChatError("not_found") otherwise.

    A refusal is recorded in the audit trail: probing for other people's conversations is
    exactly what a compliance officer needs to see.
    """
    conversation = Conversation.objects.filter(
        public_id=public_id, owner=user, deleted_at__isnull=True
    ).first()
    if conversation is None:
        audit_record(
            action=AuditAction.CONVERSATION_ACCESS_DENIED,
            actor=user,
            target=(TargetType.CONVERSATION, public_id),
            outcome=AuditOutcome.DENIED,
            details={"reason": "not_owner"},
        )
        raise not_found()
    return conversation


def message_list(*, conversation: Conversation) -> QuerySet[Message]:
    """The conversation's messages, oldest first, each with the tokens of its cost-ledger
    entries (`ledger_input_tokens`, `ledger_output_tokens`, for `reply_usage`)."""
    return conversation.messages.order_by("id").annotate(
        ledger_input_tokens=Sum("cost_entries__input_tokens"),
        ledger_output_tokens=Sum("cost_entries__output_tokens"),
    )


def reply_usage(reply: Message) -> dict[str, Any]:
    """A finished reply's tokens and cost, as `done` and `snapshot` carry them.

    The tokens are what the provider reported. When some call reported none (a reply stopped
    midway), the cost ledger holds an estimate for it (docs/costs.md), and the tokens are the
    ledger's, flagged `estimated` like the cost. Reads the ledger then, unless `reply` came
    from `message_list`.
    """
    input_tokens, output_tokens = reply.input_tokens, reply.output_tokens
    if reply.cost_estimated:
        if hasattr(reply, "ledger_input_tokens") and hasattr(reply, "ledger_output_tokens"):
            input_tokens = reply.ledger_input_tokens
            output_tokens = reply.ledger_output_tokens
        else:
            totals = reply.cost_entries.aggregate(
                input=Sum("input_tokens"), output=Sum("output_tokens")
            )
            input_tokens, output_tokens = totals["input"], totals["output"]
    return {
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "cost": str(reply.cost) if reply.cost is not None else None,
        "currency": settings.COSTS_CURRENCY,
        "estimated": reply.cost_estimated,
    }


def message_to_frame(message: Message) -> dict[str, Any]:
    """A message as the socket protocol and the page show it (see docs/websocket-protocol.md).

    User text is sent as text (the browser inserts it as text); finished replies as
    sanitised HTML and their raw Markdown `text` (for copying; never inserted as HTML); a
    reply still streaming as its text so far with its sequence number.
    """
    frame: dict[str, Any] = {
        "id": str(message.public_id),
        "role": message.role,
        "status": message.status,
        "model": message.model,
        "created_at": message.created_at.isoformat(),
    }
    if message.role == Message.Role.USER:
        frame["text"] = message.content
    elif message.is_in_flight:
        snapshot = streams.snapshot_get(message.public_id)
        frame["text"] = snapshot["text"] if snapshot else ""
        frame["seq"] = snapshot["seq"] if snapshot else 0
    else:
        frame["html"] = render_markdown(message.content)
        frame["text"] = message.content
        if message.status == Message.Status.FAILED:
            frame["error"] = message.error
            if message.cost:  # charged for what streamed before it failed
                frame["usage"] = reply_usage(message)
        else:  # complete or cancelled: what its `done` frame showed
            frame["usage"] = reply_usage(message)
    if message.role == Message.Role.ASSISTANT:
        frame["answered_by"] = message.answered_by
        frame["notice"] = message.notice
        frame["tools"] = message.tool_events
    return frame


def conversation_snapshot(*, user: User, public_id: UUID) -> dict[str, Any]:
    """Everything a page needs to show the conversation now. Raises ChatError("not_found")."""
    conversation = conversation_get_owned(user=user, public_id=public_id)
    messages = list(message_list(conversation=conversation))
    earlier = versions.earlier_versions(messages)
    frames = []
    for message in messages:
        if message.superseded_by_id is not None:
            continue  # shown with the version that replaced it
        frame = message_to_frame(message)
        if message.pk in earlier:
            older = earlier[message.pk]
            frame["version"] = len(older) + 1
            frame["versions"] = [
                {**message_to_frame(old), "version": number}
                for number, old in enumerate(older, start=1)
            ][-versions.VERSIONS_SHOWN :]
        frames.append(frame)
    return {
        "conversation": str(conversation.public_id),
        "title": conversation.title,
        "messages": frames,
    }


def reply_history(*, reply: Message) -> list[Message]:
    """The turns before `reply` that the model should see, oldest first.

    User turns and the text of finished or stopped replies; failed replies and earlier
    versions (regenerated, edited) are left out. Bounded by CHAT_HISTORY_MAX_MESSAGES (the
    providers issue bounds it by tokens).
    """
    turns = (
        versions.current(Message.objects.filter(conversation_id=reply.conversation_id))
        .filter(id__lt=reply.id)
        .exclude(role=Message.Role.ASSISTANT, status=Message.Status.FAILED)
        .exclude(content="")
        .order_by("-id")
        .only("role", "content")[: settings.CHAT_HISTORY_MAX_MESSAGES]
    )
    return list(reversed(turns))
