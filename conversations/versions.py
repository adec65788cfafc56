"""Versions of a conversation's last turn: regenerating the last reply, editing the last
message and sending it again.

A new version is admitted exactly like a send (`services.message_send` with a `Revision`:
rate limit, model permission, guardrails, replies in flight, budget reservation, audit).
This module holds only what is particular to versions: which message may be revised
(checked again under the conversation's row lock), marking the earlier version superseded,
and grouping versions for display. A superseded message is kept, shown as an earlier
version, and left out of everything sent to a model (history, estimates, provider state).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal
from uuid import UUID

from django.db.models import QuerySet

from audit.catalogue import AuditAction
from conversations.errors import ChatError
from conversations.models import Conversation, Message

# Earlier versions a snapshot carries per message (the newest ones): enough to compare,
# bounded however often a reply is regenerated.
VERSIONS_SHOWN = 20

RevisionKind = Literal["regenerate", "edit"]


@dataclass(frozen=True)
class Revision:
    """A send that replaces the conversation's last turn.

    `regenerate`: `message_id` is the last reply; the user message it answers is answered
    again (`answers` is its primary key as read before the lock, checked under it).
    `edit`: `message_id` is the last user message; it and its reply are replaced.
    """

    kind: RevisionKind
    message_id: UUID
    answers: int | None = None

    @property
    def action(self) -> AuditAction:
        if self.kind == "regenerate":
            return AuditAction.MESSAGE_REGENERATED
        return AuditAction.MESSAGE_EDITED


@dataclass(frozen=True)
class RevisionTarget:
    """What a revision replaces: `user_message` is the message answered again (regenerate)
    or edited (edit); `replaced` are the current messages that become earlier versions."""

    user_message: Message
    replaced: list[Message]


def current(messages: QuerySet[Message]) -> QuerySet[Message]:
    """Only the current version of each message (what a model is sent)."""
    return messages.filter(superseded_by__isnull=True)


NOT_LAST = {
    "regenerate": "Only the last reply of a conversation can be regenerated.",
    "edit": "Only your last message in a conversation can be edited and sent again.",
}
BUSY = "A reply is still being written in this conversation. Wait for it or stop it first."


def _not_found(kind: RevisionKind) -> ChatError:
    noun = "reply" if kind == "regenerate" else "message"
    return ChatError("not_found", f"That {noun} does not exist or is not yours.")


def revision_lookup(*, conversation: Conversation, revision: Revision) -> Message | None:
    """The message a revision names, if it is in `conversation` with the right role."""
    role = Message.Role.ASSISTANT if revision.kind == "regenerate" else Message.Role.USER
    return Message.objects.filter(
        conversation=conversation, public_id=revision.message_id, role=role
    ).first()


def revision_target(*, conversation: Conversation, revision: Revision) -> RevisionTarget:
    """Check that `revision` may be made now and say what it replaces. Call with the
    conversation's row locked (services._message_store), after stale replies were expired.

    Raises ChatError: not_found (no such message in this conversation, or the wrong role),
    busy (a reply is in flight), not_last (the message is not the last of its kind, or is
    already an earlier version).
    """
    target = revision_lookup(conversation=conversation, revision=revision)
    if target is None:
        raise _not_found(revision.kind)
    live = current(Message.objects.filter(conversation=conversation))
    if live.filter(role=Message.Role.ASSISTANT, status__in=Message.IN_FLIGHT).exists():
        raise ChatError("busy", BUSY)
    if target.superseded_by_id is not None:
        raise ChatError("not_last", NOT_LAST[revision.kind])
    last_of_kind = live.filter(role=target.role).order_by("-id").first()
    if last_of_kind is None or last_of_kind.pk != target.pk:
        raise ChatError("not_last", NOT_LAST[revision.kind])
    if revision.kind == "edit":
        later = list(live.filter(id__gt=target.id).order_by("id"))
        return RevisionTarget(user_message=target, replaced=[target, *later])
    if live.filter(id__gt=target.id).exists():  # a message sent after the reply
        raise ChatError("not_last", NOT_LAST[revision.kind])
    answered = live.filter(role=Message.Role.USER, id__lt=target.id).order_by("-id").first()
    if answered is None or (revision.answers is not None and answered.pk != revision.answers):
        raise ChatError("not_last", NOT_LAST[revision.kind])
    return RevisionTarget(user_message=answered, replaced=[target])


def revision_apply(*, target: RevisionTarget, user_message: Message, reply: Message) -> None:
    """Mark what `target` replaces as earlier versions of the new `user_message` (an edit)
    and `reply`. Instance saves, recorded by the caller's `message.regenerated` or
    `message.edited` event in the same transaction."""
    for old in target.replaced:
        old.superseded_by = user_message if old.role == Message.Role.USER else reply
        old.save(update_fields=["superseded_by"])


def earlier_versions(messages: Iterable[Message]) -> dict[int, list[Message]]:
    """For each message of `messages` that has earlier versions, those versions oldest
    first (every one, also the earlier versions of an earlier version)."""
    direct: dict[int, list[Message]] = defaultdict(list)
    for message in messages:
        if message.superseded_by_id is not None:
            direct[message.superseded_by_id].append(message)
    result: dict[int, list[Message]] = {}
    for pk in list(direct):
        found: list[Message] = []
        todo = list(direct.get(pk, []))
        while todo:
            old = todo.pop()
            found.append(old)
            todo.extend(direct.get(old.pk, []))
        result[pk] = sorted(found, key=lambda m: m.pk)
    return result
