"""One conversation as a Markdown file, for its owner (`GET /c/<id>/export.md`).

The title, then each message with who wrote it and when; a reply's tool calls are summarised
(the tool, whether it failed, the size of its result), not copied: results can be whole web
pages or other conversations. Audited as `conversation.exported`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from django.db import transaction
from django.utils import timezone

from accounts.models import User
from audit.catalogue import AuditAction
from audit.services import audit_record
from conversations import selectors
from conversations.models import Conversation, Message

ARGUMENTS_MAX_CHARS = 200


@dataclass(frozen=True)
class Export:
    filename: str
    text: str
    messages: int


def _when(moment: datetime | None) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC") if moment else ""


def _filename(conversation: Conversation) -> str:
    words = re.sub(r"[^\w\s-]", "", str(conversation.title), flags=re.UNICODE)
    stem = re.sub(r"[\s_-]+", "-", words).strip("-").lower()[:60].strip("-") or "conversation"
    return f"{stem}-{conversation.created_at:%Y-%m-%d}.md"


def _tool_line(tool: dict[str, Any]) -> str:
    arguments = json.dumps(tool.get("arguments", {}), ensure_ascii=False, sort_keys=True)
    if len(arguments) > ARGUMENTS_MAX_CHARS:
        arguments = arguments[: ARGUMENTS_MAX_CHARS - 1] + "…"
    result = str(tool.get("result", ""))
    failed = " (failed)" if tool.get("is_error") else ""
    return (
        f"> Used tool `{tool.get('name', '?')}`{failed} with `{arguments}`: "
        f"result of {len(result):,} characters."
    )


def _status_note(message: Message) -> str:
    if message.status == Message.Status.CANCELLED:
        return "_Stopped._"
    if message.status == Message.Status.FAILED:
        return f"_Failed: {message.error}_" if message.error else "_Failed._"
    if message.is_in_flight:
        return "_Still being written when exported._"
    return ""


def render(conversation: Conversation, messages: list[Message]) -> str:
    """The Markdown text of a conversation and its messages (oldest first)."""
    lines = [
        f"# {conversation.title or 'Untitled conversation'}",
        "",
        f"Exported from Enterprise AI on {_when(timezone.now())}. "
        f"Started {_when(conversation.created_at)}; {len(messages)} messages.",
    ]
    for message in messages:
        if message.role == Message.Role.USER:
            who = "You"
        else:
            model = message.answered_by or message.model
            who = f"Assistant ({model})" if model else "Assistant"
        if message.superseded_by_id is not None:
            who += " · earlier version, replaced"  # regenerated or edited (conversations.versions)
        lines += ["", "---", "", f"## {who} · {_when(message.created_at)}", ""]
        tools = message.tool_events if isinstance(message.tool_events, list) else []
        if tools:
            lines += [_tool_line(tool) for tool in tools if isinstance(tool, dict)] + [""]
        if message.notice:
            lines += [f"_{message.notice}_", ""]
        lines.append(str(message.content))
        note = _status_note(message)
        if note:
            lines += ["", note]
    return "\n".join(lines).rstrip() + "\n"


def conversation_export(*, actor: User, public_id: UUID) -> Export:
    """The actor's conversation as Markdown. Audited as `conversation.exported`.

    Raises ChatError("not_found") when it is not theirs or deleted (audited as an access
    denial, as any other read of someone else's conversation).
    """
    # Outside the transaction: a refusal's audit record must outlive the refusal.
    conversation = selectors.conversation_get_owned(user=actor, public_id=public_id)
    with transaction.atomic():
        messages = list(conversation.messages.order_by("id"))
        audit_record(
            action=AuditAction.CONVERSATION_EXPORTED,
            actor=actor,
            target=conversation,
            details={"messages": len(messages), "format": "markdown"},
        )
    return Export(
        filename=_filename(conversation),
        text=render(conversation, messages),
        messages=len(messages),
    )
