"""Writes to conversations: sending a message, stopping a reply, recording a reply's end.

Each write is one transaction. Side effects that must not happen if it rolls back (starting
the reply task, broadcasting to sockets) run on commit.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from dataclasses import dataclass, field, replace
from datetime import timedelta
from functools import partial
from typing import Any, NoReturn
from uuid import UUID

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Q, QuerySet
from django.utils import timezone

from accounts.models import User
from audit import context as audit_context
from audit.catalogue import AuditAction, AuditOutcome, TargetType
from audit.governed import governed_writes
from audit.services import audit_record
from conversations import search, selectors, streams, versions
from conversations.errors import ChatError, not_found
from conversations.models import Conversation, Message
from conversations.rendering import render_markdown
from conversations.versions import Revision
from costs.services import (
    BudgetExceeded,
    CallUsage,
    Settlement,
    budget_reserve,
    budget_status_for,
    format_amount,
    ledger_settle,
)
from enterprise_ai import ratelimit
from enterprise_ai.dispatch import dispatch
from guardrails.services import (
    GuardrailRefused,
    Screening,
    message_screen,
    redaction_notice,
    refusal_record,
    screening_record,
)
from observability import metrics
from preferences.selectors import chat_system_prompt
from protection.aead import ProtectionError
from providers.base import ChatMessage, ToolCall, ToolResult, ToolSpec
from providers.registry import UnknownModel, get_model, model_for_user, supports_tools
from providers.window import input_budget, message_tokens, tools_tokens

logger = logging.getLogger(__name__)

TITLE_MAX_CHARS = 80
GENERIC_FAILURE = "Something went wrong while generating this reply. Please try again."
INTERRUPTED = "This reply was interrupted before it finished. Please try again."
# When too many replies are in flight: a hint for the client, replies take seconds.
IN_FLIGHT_RETRY_SECONDS = 5


@dataclass(frozen=True)
class SendResult:
    conversation: Conversation
    user_message: Message
    reply: Message
    created: bool
    # For the sender, e.g. that the model sees placeholders instead of personal data.
    notice: str = ""


MAX_CLIENT_TOOLS = 64
MAX_CLIENT_TOOLS_CHARS = 100_000
_TOOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


@dataclass(frozen=True)
class ReplyOptions:
    """A caller's settings for one reply (the API's max_tokens, temperature and tools).

    `max_output_tokens` can only lower the model's maximum: the budget holds the worst case
    of that lower figure. `tools` are the caller's own tools (OpenAI-compatible API): offered
    to the model, never run here; a call the model asks for ends the reply and is returned to
    the caller. `history` is the turns of this call as structured messages (assistant tool
    calls, tool results) when the caller sent them, so the provider gets them natively; the
    stored user message still holds their text (screened, shown, audited). Validated here, so
    every entry point gets the same answer.
    """

    max_output_tokens: int | None = None
    temperature: float | None = None
    tools: tuple[ToolSpec, ...] = ()
    history: tuple[ChatMessage, ...] = ()

    def __post_init__(self) -> None:
        if len(self.tools) > MAX_CLIENT_TOOLS:
            raise ChatError("invalid", f"At most {MAX_CLIENT_TOOLS} tools can be offered.")
        names = [tool.name for tool in self.tools]
        if any(not _TOOL_NAME.match(name) for name in names) or len(set(names)) != len(names):
            raise ChatError(
                "invalid", "Tool names must be unique, 1 to 64 letters, digits, _ or -."
            )
        size = sum(len(tool.description) + len(json.dumps(tool.parameters)) for tool in self.tools)
        if size > MAX_CLIENT_TOOLS_CHARS:
            raise ChatError("too_large", "The tools' descriptions and schemas are too long.")
        cap = self.max_output_tokens
        if cap is not None and (type(cap) is not int or cap < 1):
            raise ChatError("invalid", "The most output tokens must be a positive whole number.")
        temperature = self.temperature
        if temperature is not None and (
            isinstance(temperature, bool)
            or not isinstance(temperature, int | float)
            or not 0 <= temperature <= 2
        ):
            raise ChatError("invalid", "The temperature must be a number from 0 to 2.")

    def output_cap(self, model: Any) -> int:
        if self.max_output_tokens is None:
            return int(model.max_output_tokens)
        return min(int(model.max_output_tokens), self.max_output_tokens)

    def _settings(self) -> dict[str, Any]:
        values: dict[str, Any] = {}
        if self.max_output_tokens is not None:
            values["max_output_tokens"] = self.max_output_tokens
        if self.temperature is not None:
            values["temperature"] = float(self.temperature)
        return values

    def stored(self) -> dict[str, Any]:
        """As kept in Message.options (only what the caller set)."""
        values = self._settings()
        if self.tools:
            values["tools"] = [
                {"name": t.name, "description": t.description, "parameters": dict(t.parameters)}
                for t in self.tools
            ]
        if self.history:
            values["history"] = [history_item(message) for message in self.history]
        return values

    def audited(self) -> dict[str, Any]:
        """What the audit event records: the settings and the tools' names, not the text."""
        values = self._settings()
        if self.tools:
            values["tools"] = [tool.name for tool in self.tools]
        return values


def history_item(message: ChatMessage) -> dict[str, Any]:
    """A structured turn as stored in Message.options["history"]."""
    item: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.tool_calls:
        item["tool_calls"] = [
            {"id": c.id, "name": c.name, "arguments": dict(c.arguments)} for c in message.tool_calls
        ]
    if message.tool_results:
        item["tool_results"] = [
            {"call_id": r.call_id, "name": r.name, "content": r.content, "is_error": r.is_error}
            for r in message.tool_results
        ]
    return item


def history_from(items: list[dict[str, Any]]) -> list[ChatMessage]:
    """The turns stored by `history_item`."""
    return [
        ChatMessage(
            item["role"],
            item.get("content", ""),
            tool_calls=tuple(ToolCall(**call) for call in item.get("tool_calls", ())),
            tool_results=tuple(ToolResult(**result) for result in item.get("tool_results", ())),
        )
        for item in items
    ]


def title_from_text(text: str) -> str:
    """A conversation title from its first message: the first line, whitespace collapsed."""
    first_line = next((line for line in text.splitlines() if line.strip()), "")
    title = re.sub(r"\s+", " ", first_line).strip()
    if len(title) > TITLE_MAX_CHARS:
        title = title[: TITLE_MAX_CHARS - 1].rstrip() + "…"
    return title or "New conversation"


def storable(text: str) -> bool:
    """Whether `text` can be stored and sent: UTF-8 encodable. JSON can carry half a
    surrogate pair (\\ud800), which no database, log or provider accepts."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _validate_text(text: object) -> str:
    if not isinstance(text, str):
        raise ChatError("invalid", "The message must be text.")
    if not text.strip():
        raise ChatError("invalid", "The message is empty.")
    if "\x00" in text:
        # PostgreSQL cannot store a NUL in text; no keyboard types one either.
        raise ChatError("invalid", "The message contains a NUL character, which is not allowed.")
    if not storable(text):
        raise ChatError("invalid", "The message is not valid Unicode text (a lone surrogate).")
    if len(text) > settings.CHAT_MAX_MESSAGE_CHARS:
        raise ChatError(
            "too_large",
            f"The message is too long ({len(text):,} characters); "
            f"the limit is {settings.CHAT_MAX_MESSAGE_CHARS:,}.",
        )
    return text


def _interrupted_calls(reply: Message) -> list[CallUsage]:
    """What an interrupted reply is charged: nothing if nothing streamed; otherwise one
    estimated call (the window it was sent, the text the snapshot holds), like any call
    that ended without the provider's usage."""
    snapshot = streams.snapshot_get(reply.public_id) if reply.status == "streaming" else None
    text = snapshot["text"] if snapshot else ""
    if not text:
        return []
    key = reply.answered_by or reply.model
    try:
        provider = get_model(key).provider
    except UnknownModel:
        provider = ""
    return [
        CallUsage(
            model=key,
            provider=provider,
            input_tokens=_input_estimate(
                conversation=reply.conversation,
                model=None,
                budget=2**31 - 1,
                system_prompt=chat_system_prompt(
                    user=reply.conversation.owner, api_key=reply.api_key_id
                ),
            ),
            output_tokens=message_tokens(ChatMessage("assistant", text)),
            estimated=True,
        )
    ]


@governed_writes(reason="reply.interrupted")  # audited per reply below
def _fail_interrupted(replies: QuerySet[Message]) -> int:
    """Fail replies whose worker evidently died: each in its own transaction, recorded in
    the audit trail, its holds released (or an estimate charged when text had streamed),
    and its sockets told with an `interrupted` error. Returns how many were failed."""
    failed_count = 0
    for reply in replies.select_related("conversation__owner"):
        with transaction.atomic():
            stuck_in = str(reply.status)
            calls = _interrupted_calls(reply)
            failed = Message.objects.filter(pk=reply.pk, status=reply.status).update(
                status=Message.Status.FAILED,
                error_code="interrupted",
                error=INTERRUPTED,
                completed_at=timezone.now(),
            )
            if not failed:
                continue
            failed_count += 1
            reply.status = Message.Status.FAILED
            reply.error_code, reply.error = "interrupted", INTERRUPTED
            settlement = ledger_settle(reply=reply, calls=calls, outcome=reply.status)
            if calls:
                Message.objects.filter(pk=reply.pk).update(
                    cost=settlement.cost, cost_estimated=settlement.estimated
                )
                reply.cost, reply.cost_estimated = settlement.cost, settlement.estimated
            _audit_reply_end(reply)
            transaction.on_commit(partial(metrics.replies_swept, stuck_in))
            transaction.on_commit(partial(_broadcast_error, reply))
            transaction.on_commit(partial(streams.stream_forget, reply.public_id))
    return failed_count


def _stuck(queryset: QuerySet[Message]) -> QuerySet[Message]:
    """Replies in flight whose worker evidently died: streaming without a heartbeat for
    CHAT_HEARTBEAT_TIMEOUT_SECONDS, or pending (never picked up) for CHAT_REPLY_MAX_SECONDS."""
    now = timezone.now()
    silent = now - timedelta(seconds=settings.CHAT_HEARTBEAT_TIMEOUT_SECONDS)
    return queryset.filter(
        Q(status=Message.Status.STREAMING, heartbeat_at__lt=silent)
        | Q(status=Message.Status.STREAMING, heartbeat_at__isnull=True, started_at__lt=silent)
        | Q(
            status=Message.Status.PENDING,
            created_at__lt=now - timedelta(seconds=settings.CHAT_REPLY_MAX_SECONDS),
        )
    )


def replies_sweep(*, limit: int = 200) -> int:
    """Fail up to `limit` stuck replies (see `_stuck`) as interrupted; return how many.

    Run every CHAT_SWEEP_SECONDS by a thread of every web process, worker and beat
    (conversations.inflight); safe from several processes at once (each reply is failed
    once).
    """
    ids = list(_stuck(Message.objects.all()).order_by("id").values_list("pk", flat=True)[:limit])
    if not ids:
        return 0
    swept = _fail_interrupted(Message.objects.filter(pk__in=ids).order_by("id"))
    if swept:
        logger.warning("swept %d interrupted replies", swept)
    return swept


def _expire_stale_reply(conversation: Conversation) -> None:
    """Fail an in-flight reply whose worker has evidently died, so the chat is not stuck."""
    _fail_interrupted(_stuck(Message.objects.filter(conversation=conversation)))


def conversation_access_denied(
    *, actor: User, conversation_id: object, reason: str = "not_owner"
) -> None:
    """Record that the current actor asked for a conversation that is not theirs (or none).

    Called after the refused request's transaction, so the record survives its rollback.
    """
    audit_record(
        action=AuditAction.CONVERSATION_ACCESS_DENIED,
        actor=actor,
        target=(TargetType.CONVERSATION, conversation_id),
        outcome=AuditOutcome.DENIED,
        details={"reason": reason},
    )


def message_send(
    *,
    actor: User,
    text: object,
    model_key: object,
    conversation_id: UUID | None = None,
    new_conversation_id: UUID | None = None,
    source: str = Conversation.Source.WEB,
    api_key: Any = None,
    options: ReplyOptions | None = None,
    revision: Revision | None = None,
) -> SendResult:
    """Store the user's message and a pending reply, and start generating it on commit.

    This is the one admission path of every entry point (the chat socket, the REST API, the
    OpenAI-compatible API; `source` names it): rate limits, input validation, the model
    permission, the context window, guardrail screening and redaction, the budget
    reservation and the audit event, in that order. Settlement is one path too: the reply's
    worker stores the outcome, writes the ledger and settles the budgets (`reply_finish`).

    Give `conversation_id` to continue a conversation the actor owns, or
    `new_conversation_id` (chosen by the caller so it can subscribe first) to start one.
    `api_key`: the API key the call is made with (its own budgets apply on top of the
    owner's, and the audit event names it). `options`: the caller's generation settings
    (a lower cap on output tokens, which also lowers the budget hold; a temperature).
    `revision`: this send replaces the conversation's last turn (`message_regenerate`,
    `message_edit`); it may also raise not_last then, and is audited as
    message.regenerated or message.edited instead of message.sent.
    Raises ChatError: invalid / too_large (text), model_unavailable, not_found (not the
    actor's conversation), busy (a reply is still being generated), guardrail_blocked (the
    guardrail policy refuses the text), rate_limited (too many messages this minute or
    replies in flight), budget_exceeded. Nothing is stored then, except the audit event of
    a refused model, conversation, guardrail check or rate limit. Governance refusals are
    counted in eai_refusals_total.
    """
    try:
        return _message_send(
            actor=actor,
            text=text,
            model_key=model_key,
            conversation_id=conversation_id,
            new_conversation_id=new_conversation_id,
            source=Conversation.Source(source),
            api_key=api_key,
            options=options or ReplyOptions(),
            revision=revision,
        )
    except ChatError as exc:
        reason = metrics.REFUSAL_REASONS.get(exc.code)
        if reason is not None:  # guardrail refusals are counted where their kind is known
            metrics.refusal(reason=reason, source=str(source))
        raise
    except ProtectionError as exc:
        # The text cannot be encrypted (no usable master key, KMS unreachable): nothing is
        # stored, and the person gets a code rather than an internal error.
        logger.error("message not stored: encryption unavailable (%s)", exc.code)
        raise ChatError(
            "encryption_unavailable",
            "Messages cannot be stored right now: the encryption key is unavailable. "
            "Try again later.",
        ) from None


def _message_send(
    *,
    actor: User,
    text: object,
    model_key: object,
    conversation_id: UUID | None,
    new_conversation_id: UUID | None,
    source: Conversation.Source,
    api_key: Any,
    options: ReplyOptions,
    revision: Revision | None = None,
) -> SendResult:
    _check_message_rate(actor)
    text = _validate_text(text)
    model = _permitted_model(actor, model_key)

    if options.tools and not supports_tools(model):
        raise ChatError(
            "tools_unsupported",
            f"{model.display_name} cannot use tools: pick a model that can, or leave them out.",
        )
    budget = input_budget(
        context_window=model.context_window,
        max_output_tokens=options.output_cap(model),
        system_prompt=chat_system_prompt(user=actor, api_key=api_key),
        tools=options.tools,
    )
    if message_tokens(ChatMessage("user", text)) > budget:
        raise ChatError(
            "too_large",
            f"The message is too long for {model.display_name}: shorten it or pick a model "
            "with a larger context window.",
        )

    # Guardrails (docs/guardrails.md): a refusal stores nothing and is recorded on its own.
    try:
        screening = message_screen(actor=actor, text=text)
    except GuardrailRefused as exc:
        refusal_record(actor=actor, refusal=exc, conversation_id=conversation_id)
        kind = _GUARDRAIL_KINDS.get(str(exc.action), "other")
        metrics.refusal(reason="guardrail", kind=kind, source=source)
        raise ChatError("guardrail_blocked", exc.message) from None

    try:
        result = _message_store(
            actor=actor,
            text=text,
            model=model,
            screening=screening,
            conversation_id=conversation_id,
            new_conversation_id=new_conversation_id,
            source=source,
            api_key=api_key,
            options=options,
            revision=revision,
        )
        return replace(result, notice=redaction_notice(screening))
    except ChatError as exc:
        if exc.code == "not_found":
            conversation_access_denied(actor=actor, conversation_id=conversation_id)
        raise
    except BudgetExceeded as exc:
        # Recorded after the rollback: nothing of the refused request is stored.
        budget_id = exc.details.get("budget")
        audit_record(
            action=AuditAction.BUDGET_REFUSED,
            actor=actor,
            target=(TargetType.BUDGET, budget_id) if budget_id else None,
            outcome=AuditOutcome.DENIED,
            details={**exc.details, "model": model.key},
        )
        raise ChatError("budget_exceeded", exc.reason) from None


# The guardrail behind a refusal, as counted in eai_refusals_total{kind}.
_GUARDRAIL_KINDS = {
    AuditAction.PII_BLOCKED.value: "pii",
    AuditAction.INJECTION_BLOCKED.value: "injection",
}


def _permitted_model(actor: User, model_key: object) -> Any:
    """The catalogue model `model_key` names, if the actor may use it. Raises ChatError:
    invalid (not a name, or one no database could store), model_unavailable (unknown,
    disabled or not permitted; audited as model.refused)."""
    if not isinstance(model_key, str):
        raise ChatError("invalid", "The model must be given by its name.")
    # No model's name, and no database could store it (the refusal is audited).
    if "\x00" in model_key:
        raise ChatError("invalid", "The model name contains a NUL character.")
    if not storable(model_key):
        raise ChatError("invalid", "The model name is not valid Unicode text (a lone surrogate).")
    try:
        return model_for_user(model_key, actor)
    except UnknownModel:
        audit_record(
            action=AuditAction.MODEL_REFUSED,
            actor=actor,
            outcome=AuditOutcome.DENIED,
            details={"model": model_key[:100]},
        )
        raise ChatError("model_unavailable", "That model is not available to you.") from None


def _check_message_rate(actor: User) -> None:
    """Count one message against the actor's CHAT_MESSAGES_PER_MINUTE. Raises ChatError
    ("rate_limited") with the seconds until the minute's window ends.

    Every attempt counts, refused ones too, so a flood of bad frames is limited as well.
    The first refusal in a window is audited; the rest are not, so the limit cannot be
    used to flood the audit trail either.
    """
    limit = settings.CHAT_MESSAGES_PER_MINUTE
    if not limit:
        return
    decision = ratelimit.hit(f"chat:send:{actor.public_id}", limit=limit, window_seconds=60)
    if decision.allowed:
        return
    if decision.first_refusal:
        audit_record(
            action=AuditAction.MESSAGE_RATE_LIMITED,
            actor=actor,
            target=(TargetType.USER, actor.public_id),
            outcome=AuditOutcome.DENIED,
            details={"limit": limit, "window_seconds": 60, "retry_after": decision.retry_after},
        )
    raise ChatError(
        "rate_limited",
        f"You have sent {limit} messages this minute, the most allowed. "
        f"Try again in {decision.retry_after} second{'s' if decision.retry_after != 1 else ''}.",
        retry_after=decision.retry_after,
    )


def _check_replies_in_flight(actor: User) -> None:
    """Refuse a send while the actor already has CHAT_MAX_REPLIES_IN_FLIGHT replies being
    written (in any conversation). Raises ChatError("rate_limited").

    Counted from the messages themselves, not a cache counter: a reply's status is the one
    truth that survives a worker dying mid-reply, and replies older than
    CHAT_REPLY_MAX_SECONDS (dead workers) do not count. The sender's user row is locked
    first, so two sends at once cannot both see room for one more.
    """
    limit = settings.CHAT_MAX_REPLIES_IN_FLIGHT
    if not limit:
        return
    list(User.objects.select_for_update().filter(pk=actor.pk).values_list("pk"))
    cutoff = timezone.now() - timedelta(seconds=settings.CHAT_REPLY_MAX_SECONDS)
    in_flight = Message.objects.filter(
        conversation__owner=actor,
        role=Message.Role.ASSISTANT,
        status__in=Message.IN_FLIGHT,
        created_at__gte=cutoff,
    ).count()
    if in_flight >= limit:
        raise ChatError(
            "rate_limited",
            f"You already have {in_flight} replies being written, the most at once. "
            "Wait for one to finish (or stop one), then send again.",
            retry_after=IN_FLIGHT_RETRY_SECONDS,
        )


def _input_estimate(
    *, conversation: Conversation, model: Any, budget: int, system_prompt: str
) -> int:
    """Input tokens the reply's first call will send: system prompt and history (the
    window), never more than the model's input budget."""
    turns = (
        versions.current(Message.objects.filter(conversation=conversation))
        .exclude(role=Message.Role.ASSISTANT, status=Message.Status.FAILED)
        .order_by("-id")
        .values_list("role", "content")[: settings.CHAT_HISTORY_MAX_MESSAGES]
    )
    tokens = message_tokens(ChatMessage("user", system_prompt)) + sum(
        message_tokens(ChatMessage("user" if role == "user" else "assistant", content))
        for role, content in turns
    )
    return min(tokens, budget)


@transaction.atomic
def _message_store(
    *,
    actor: User,
    text: str,
    model: Any,
    conversation_id: UUID | None,
    new_conversation_id: UUID | None,
    screening: Screening | None = None,
    source: str = Conversation.Source.WEB,
    api_key: Any = None,
    options: ReplyOptions | None = None,
    revision: Revision | None = None,
) -> SendResult:
    options = options or ReplyOptions()
    audited_options = options.audited()
    request_id = audit_context.current().request_id or audit_context.new_request_id()
    # The organisation's prompt, with the person's instructions on chat sends (counted in
    # the reservation: they are sent with every call).
    prompt = chat_system_prompt(user=actor, api_key=api_key)
    input_budget_tokens = input_budget(
        context_window=model.context_window,
        max_output_tokens=options.output_cap(model),
        tools=options.tools,
        system_prompt=prompt,
    )
    created = conversation_id is None
    if conversation_id is None:
        conversation = Conversation.objects.create(
            public_id=new_conversation_id or uuid.uuid4(),
            owner=actor,
            title=title_from_text(text),
            model=model.key,
            source=source,
        )
    else:
        owned = (
            Conversation.objects.select_for_update()
            .filter(public_id=conversation_id, owner=actor, deleted_at__isnull=True)
            .first()
        )
        if owned is None:
            raise not_found()  # audited by message_send, after this transaction rolls back
        conversation = owned
        _expire_stale_reply(conversation)
        conversation.model = model.key
        fields = ["model", "updated_at"]
        if not conversation.title:  # created empty (the API): named by its first message
            conversation.title = title_from_text(text)
            fields.append("title")
        conversation.save(update_fields=fields)
    if created or "title" in fields:
        search.index_title(conversation)  # the blind search index (conversations.search)
    # A new version of the last turn: checked under the conversation's lock (not_last, busy).
    target = None
    if revision is not None:
        target = versions.revision_target(conversation=conversation, revision=revision)

    _check_replies_in_flight(actor)
    if target is not None and revision is not None and revision.kind == "regenerate":
        user_message = target.user_message  # answered again
    else:
        user_message = Message.objects.create(
            conversation=conversation,
            role=Message.Role.USER,
            content=text,
            status=Message.Status.COMPLETE,
            model=model.key,
            request_id=request_id,
        )
        search.index_message(user_message)
    try:
        with transaction.atomic():
            reply = Message.objects.create(
                conversation=conversation,
                role=Message.Role.ASSISTANT,
                status=Message.Status.PENDING,
                model=model.key,
                request_id=request_id,
                options=options.stored(),
                api_key=api_key,
            )
    except IntegrityError:
        raise ChatError(
            "busy", "A reply is still being written in this conversation. Wait or stop it."
        ) from None
    if target is not None:
        # Before the estimate below: the earlier version is no longer part of the window.
        versions.revision_apply(target=target, user_message=user_message, reply=reply)

    # Before anything can reach a provider: hold the call's maximum cost against every
    # budget that applies, or refuse (BudgetExceeded rolls all of this back).
    alerts = budget_reserve(
        user=actor,
        reply=reply,
        model=model,
        input_tokens=_input_estimate(
            conversation=conversation, model=model, budget=input_budget_tokens, system_prompt=prompt
        )
        + tools_tokens(options.tools),
        max_output_tokens=options.max_output_tokens,
        api_key=api_key,
    )

    if screening is not None:
        screening_record(
            screening=screening, actor=actor, conversation=conversation, message=user_message
        )
    audit_record(
        action=revision.action if revision is not None else AuditAction.MESSAGE_SENT,
        actor=actor,
        target=conversation,
        details={
            "message": str(user_message.public_id),
            "reply": str(reply.public_id),
            **({"replaces": str(revision.message_id)} if revision is not None else {}),
            "model": model.key,
            "characters": len(text),
            "new_conversation": created,
            "source": str(source),
            **({"api_key": api_key.prefix} if api_key is not None else {}),
            **({"options": audited_options} if audited_options else {}),
            **({"budget_alerts": alerts} if alerts else {}),
        },
    )
    # Imported here: the task module imports this one (tasks → generation → services).
    from conversations.tasks import generate_reply

    transaction.on_commit(partial(dispatch, generate_reply, reply.pk))
    return SendResult(
        conversation=conversation, user_message=user_message, reply=reply, created=created
    )


def _revision_message(
    *, actor: User, conversation_id: UUID, message_id: UUID, kind: str
) -> Message:
    """The message a regenerate or edit names, in one of the actor's conversations. Raises
    ChatError("not_found"), audited as an access denial, otherwise."""
    role = Message.Role.ASSISTANT if kind == "regenerate" else Message.Role.USER
    message = Message.objects.filter(
        public_id=message_id,
        role=role,
        conversation__public_id=conversation_id,
        conversation__owner=actor,
        conversation__deleted_at__isnull=True,
    ).first()
    if message is None:
        audit_record(
            action=AuditAction.CONVERSATION_ACCESS_DENIED,
            actor=actor,
            target=(TargetType.MESSAGE, message_id),
            outcome=AuditOutcome.DENIED,
            details={"reason": "not_owner", "operation": kind},
        )
        noun = "reply" if kind == "regenerate" else "message"
        raise ChatError("not_found", f"That {noun} does not exist or is not yours.")
    return message


def message_regenerate(
    *, actor: User, conversation_id: UUID, reply_id: UUID, model_key: object = None
) -> SendResult:
    """A new version of the conversation's last reply: the message it answers is answered
    again by a new provider call, admitted exactly as a send (`message_send`), with
    `model_key` or the earlier reply's model. The earlier reply is kept as a previous
    version with its own ledger entries; the new one is charged for its own call. Audited
    as message.regenerated.

    Raises ChatError: not_found (no such reply in the actor's conversation; audited),
    not_last (not the last reply), busy (a reply is in flight), and whatever
    `message_send` raises (rate_limited, model_unavailable, guardrail_blocked,
    budget_exceeded…).
    """
    reply = _revision_message(
        actor=actor, conversation_id=conversation_id, message_id=reply_id, kind="regenerate"
    )
    answered = (
        versions.current(Message.objects.filter(conversation_id=reply.conversation_id))
        .filter(role=Message.Role.USER, id__lt=reply.pk)
        .order_by("-id")
        .first()
    )
    if answered is None:
        raise ChatError("not_last", versions.NOT_LAST["regenerate"])
    return message_send(
        actor=actor,
        text=answered.content,
        model_key=model_key or reply.model,
        conversation_id=conversation_id,
        revision=Revision("regenerate", reply_id, answers=answered.pk),
    )


def message_edit(
    *,
    actor: User,
    conversation_id: UUID,
    message_id: UUID,
    text: object,
    model_key: object = None,
) -> SendResult:
    """Replace the conversation's last user message with `text` and answer it anew: the
    new text is admitted exactly as a send (`message_send`: validation, guardrails, budget
    reservation…). The earlier message and its reply are kept as a previous version.
    Audited as message.edited.

    Raises ChatError: not_found (no such message in the actor's conversation; audited),
    not_last, busy, and whatever `message_send` raises.
    """
    message = _revision_message(
        actor=actor, conversation_id=conversation_id, message_id=message_id, kind="edit"
    )
    return message_send(
        actor=actor,
        text=text,
        model_key=model_key or message.model,
        conversation_id=conversation_id,
        revision=Revision("edit", message_id),
    )


TITLE_MAX = 200


def conversation_create(
    *, actor: User, title: object = "", model_key: object, source: str = Conversation.Source.API
) -> Conversation:
    """Start an empty conversation for `actor` with a model they may use (the first message
    names it when `title` is empty). Audited. Raises ChatError: invalid (title), too_large,
    model_unavailable (audited as model.refused)."""
    if not isinstance(title, str):
        raise ChatError("invalid", "The title must be text.")
    title = " ".join(title.split())
    if "\x00" in title or not storable(title):
        raise ChatError("invalid", "The title contains a character that is not allowed.")
    if len(title) > TITLE_MAX:
        raise ChatError("too_large", f"A title has at most {TITLE_MAX} characters.")
    model = _permitted_model(actor, model_key)
    with transaction.atomic():
        conversation = Conversation.objects.create(
            owner=actor, title=title, model=model.key, source=Conversation.Source(source)
        )
        search.index_title(conversation)
        audit_record(
            action=AuditAction.CONVERSATION_CREATED,
            actor=actor,
            target=conversation,
            details={"model": model.key, "source": str(source)},
        )
    return conversation


def _owned_locked(*, actor: User, public_id: UUID) -> Conversation | None:
    """The actor's live conversation, locked for the change about to be made; None when it
    is not theirs or was deleted."""
    return (
        Conversation.objects.select_for_update()
        .select_related("owner")
        .filter(public_id=public_id, owner=actor, deleted_at__isnull=True)
        .first()
    )


def _held(conversation: Conversation) -> bool:
    """Under legal hold, itself or through its owner: it must be kept as it is."""
    return conversation.legal_hold or conversation.owner.legal_hold


def _refuse_unowned_or_held(
    *,
    actor: User,
    public_id: UUID,
    conversation: Conversation | None,
    action: AuditAction,
    details: dict[str, Any],
    done: str,
) -> NoReturn:
    """Refuse a change to a conversation: not_found when it is not the actor's (audited as
    an access denial), else legal_hold (audited as `action`, denied). Call it outside the
    transaction that looked, so the refusal's audit record is kept."""
    if conversation is None:
        conversation_access_denied(actor=actor, conversation_id=public_id)
        raise not_found()
    audit_record(
        action=action,
        actor=actor,
        target=conversation,
        outcome=AuditOutcome.DENIED,
        details=details,
    )
    raise ChatError(
        "legal_hold",
        f"This conversation is under legal hold, so it cannot be {done} now. Your compliance "
        "team can tell you more.",
    )


@governed_writes(reason="conversation.deleted")  # audited with the count
def conversation_delete(*, actor: User, public_id: UUID) -> Conversation:
    """Delete one of the actor's conversations: its title and every message's text, tool
    calls and notices are erased and it disappears from every list, page and API answer.
    The rows stay (without content) because the cost ledger and the audit trail refer to
    them. Audited with the number of messages erased.

    Raises ChatError: not_found (not the actor's, or already deleted; audited as an access
    denial), legal_hold (the conversation or its owner is under legal hold: retention and
    deletion must skip it; the refusal is audited), busy (a reply is being written: stop it
    first).
    """
    with transaction.atomic():
        conversation = _owned_locked(actor=actor, public_id=public_id)
        if conversation is not None and not _held(conversation):
            _expire_stale_reply(conversation)
            if Message.objects.filter(
                conversation=conversation,
                role=Message.Role.ASSISTANT,
                status__in=Message.IN_FLIGHT,
            ).exists():
                raise ChatError(
                    "busy", "A reply is still being written in this conversation. Stop it first."
                )
            erased = Message.objects.filter(conversation=conversation).update(
                content="", tool_events=[], notice="", error="", options={}
            )
            conversation.title = ""
            conversation.provider_state = {}
            conversation.deleted_at = timezone.now()
            conversation.save(update_fields=["title", "provider_state", "deleted_at"])
            search.forget_conversations([conversation.pk])
            audit_record(
                action=AuditAction.CONVERSATION_DELETED,
                actor=actor,
                target=conversation,
                details={"messages": erased, "source": conversation.source},
            )
            return conversation
    _refuse_unowned_or_held(
        actor=actor,
        public_id=public_id,
        conversation=conversation,
        action=AuditAction.CONVERSATION_DELETE_REFUSED,
        details={"reason": "legal_hold"},
        done="deleted",
    )


def reply_stop(*, actor: User, message_id: UUID) -> Message:
    """Ask for a reply to stop. Raises ChatError("not_found") unless the actor owns it.

    A reply not yet started is cancelled at once; a streaming one is stopped by its worker
    within one chunk (it keeps the partial text). A finished reply is left as it is.
    """
    reply = (
        Message.objects.select_related("conversation")
        .filter(
            public_id=message_id,
            role=Message.Role.ASSISTANT,
            conversation__owner=actor,
        )
        .first()
    )
    if reply is None:
        audit_record(
            action=AuditAction.CONVERSATION_ACCESS_DENIED,
            actor=actor,
            target=(TargetType.MESSAGE, message_id),
            outcome=AuditOutcome.DENIED,
            details={"reason": "not_owner", "operation": "stop"},
        )
        raise ChatError("not_found", "That reply does not exist or is not yours.")
    with transaction.atomic():
        _reply_stop(reply)
    return reply


@governed_writes(reason="reply.cancelled")  # audited when it ends
def _reply_stop(reply: Message) -> None:
    if reply.status == Message.Status.STREAMING:
        streams.stop_request(reply.public_id)
    elif reply.status == Message.Status.PENDING:
        now = timezone.now()
        cancelled = Message.objects.filter(pk=reply.pk, status=Message.Status.PENDING).update(
            status=Message.Status.CANCELLED, completed_at=now, stop_reason="stopped"
        )
        if cancelled:
            reply.refresh_from_db()
            ledger_settle(reply=reply, calls=[], outcome=reply.status)  # releases its holds
            _audit_reply_end(reply)
            transaction.on_commit(partial(_broadcast_done, reply))
        else:
            # The worker claimed it a moment ago: stop it like any streaming reply.
            streams.stop_request(reply.public_id)
    # A streaming reply's cancellation is recorded by its worker when it settles.


@governed_writes(reason="reply.claimed")  # the reply's end is audited
def reply_claim(*, reply_id: int) -> Message | None:
    """Mark a pending reply as streaming, for exactly one worker.

    Returns the reply, or None when it is not pending (already claimed, finished, stopped or
    deleted): a task delivered twice therefore produces one reply. A redelivered task whose
    reply's worker has died (its heartbeat stopped) fails it as interrupted at once instead
    of waiting for the sweeper.
    """
    now = timezone.now()
    claimed = Message.objects.filter(pk=reply_id, status=Message.Status.PENDING).update(
        status=Message.Status.STREAMING, started_at=now, heartbeat_at=now
    )
    if not claimed:
        _fail_interrupted(_stuck(Message.objects.filter(pk=reply_id)))
        return None
    # With the owner: the worker needs them at once (audit context, guardrails, budgets).
    return Message.objects.select_related("conversation__owner").get(pk=reply_id)


@dataclass(frozen=True)
class ReplyOutcome:
    status: str
    content: str
    input_tokens: int | None = None
    output_tokens: int | None = None
    stop_reason: str = ""
    first_token_at: float | None = None  # epoch seconds
    error_code: str = ""
    error: str = ""
    answered_by: str = ""
    notice: str = ""
    tool_events: list[dict[str, Any]] = field(default_factory=list)
    # Each provider call's usage, for the cost ledger (estimated where none was reported).
    calls: list[CallUsage] = field(default_factory=list)


@governed_writes(reason="reply.finished")  # audited by _audit_reply_end
def reply_finish(*, reply: Message, outcome: ReplyOutcome) -> bool:
    """Store how a streaming reply ended and tell its sockets (`done` or `error`).

    Returns False, changing nothing, when the reply is no longer streaming (it was expired
    as interrupted meanwhile): the first outcome recorded wins.
    """
    now = timezone.now()
    accepted_at = reply.created_at.timestamp()
    ttft_ms = (
        max(0, round((outcome.first_token_at - accepted_at) * 1000))
        if outcome.first_token_at is not None
        else None
    )
    fields = {
        "status": outcome.status,
        "content": outcome.content,
        "input_tokens": outcome.input_tokens,
        "output_tokens": outcome.output_tokens,
        "stop_reason": outcome.stop_reason,
        "time_to_first_token_ms": ttft_ms,
        "duration_ms": max(0, round((now.timestamp() - accepted_at) * 1000)),
        "error_code": outcome.error_code,
        "error": outcome.error,
        "answered_by": outcome.answered_by,
        "notice": outcome.notice,
        "tool_events": outcome.tool_events,
        "completed_at": now,
    }
    settlement = Settlement()
    with transaction.atomic():
        updated = Message.objects.filter(pk=reply.pk, status=Message.Status.STREAMING).update(
            **fields
        )
        if updated:
            for name, value in fields.items():
                setattr(reply, name, value)
            settlement = ledger_settle(reply=reply, calls=outcome.calls, outcome=outcome.status)
            reply.cost, reply.cost_estimated = settlement.cost, settlement.estimated
            Message.objects.filter(pk=reply.pk).update(
                cost=settlement.cost, cost_estimated=settlement.estimated
            )
            search.index_message(reply)
            _audit_reply_end(reply)
    if not updated:
        return False
    for warning in settlement.warnings:
        streams.broadcast(
            reply.conversation.public_id,
            {
                "type": "chat.notice",
                "conversation": str(reply.conversation.public_id),
                "message": str(reply.public_id),
                "text": warning,
            },
        )
    streams.stream_forget(reply.public_id)
    if outcome.status == Message.Status.FAILED:
        _broadcast_error(reply)
    else:
        _broadcast_done(reply)
    return True


_REPLY_ACTIONS = {
    Message.Status.COMPLETE: (AuditAction.REPLY_COMPLETED, AuditOutcome.SUCCESS),
    Message.Status.FAILED: (AuditAction.REPLY_FAILED, AuditOutcome.FAILED),
    Message.Status.CANCELLED: (AuditAction.REPLY_CANCELLED, AuditOutcome.SUCCESS),
}


def _audit_reply_end(reply: Message) -> None:
    """Record how a reply ended: model, tokens and timings, never its text; count it in the
    chat metrics once the transaction commits."""
    action, outcome = _REPLY_ACTIONS[Message.Status(reply.status)]
    transaction.on_commit(partial(metrics.reply_ended, reply))
    conversation = reply.conversation
    ctx = audit_context.current()
    if not ctx.request_id:  # a worker: the request that asked for the reply
        ctx = audit_context.AuditContext(actor=conversation.owner, request_id=reply.request_id)
    audit_record(
        action=action,
        actor=conversation.owner,
        target=conversation,
        outcome=outcome,
        details={
            "reply": str(reply.public_id),
            "model": reply.model,
            "answered_by": reply.answered_by,
            "input_tokens": reply.input_tokens,
            "output_tokens": reply.output_tokens,
            "duration_ms": reply.duration_ms,
            "time_to_first_token_ms": reply.time_to_first_token_ms,
            "stop_reason": reply.stop_reason,
            "error_code": reply.error_code,
            "tool_calls": len(reply.tool_events or []),
            "cost": str(reply.cost) if reply.cost is not None else None,
        },
        context=ctx,
    )


def _broadcast_done(reply: Message) -> None:
    streams.broadcast(
        reply.conversation.public_id,
        {
            "type": "chat.done",
            "conversation": str(reply.conversation.public_id),
            "message": str(reply.public_id),
            "status": reply.status,
            "html": render_markdown(reply.content),
            "text": reply.content,  # the raw Markdown, for copying (never inserted as HTML)
            "stop_reason": reply.stop_reason,
            "usage": selectors.reply_usage(reply),
            "timings": {
                "time_to_first_token_ms": reply.time_to_first_token_ms,
                "duration_ms": reply.duration_ms,
            },
            "answered_by": reply.answered_by,
            "notice": reply.notice,
            "tools": reply.tool_events,
            "budgets": budget_frames(reply.conversation.owner),
        },
    )


def budget_frames(user: User) -> list[dict[str, Any]]:
    """The person's budgets as the page shows them: what is left and when it resets."""
    return [
        {
            "name": status.name,
            "period": status.period,
            "remaining": format_amount(status.remaining),
            "limit": format_amount(status.limit),
            "currency": settings.COSTS_CURRENCY,
            "resets_at": status.resets_at.isoformat(),
            "blocking": status.blocking,
        }
        for status in budget_status_for(user)
    ]


def conversation_state_save(
    *,
    conversation: Conversation,
    provider: str,
    state: dict[str, Any],
    last_reply: str | None = None,
) -> None:
    """Keep provider-side state (e.g. an OpenAI conversation id) with the conversation.

    `last_reply` is the reply the state has seen last; state that misses a turn is not reused.
    """
    current = dict(conversation.provider_state or {})
    saved = {**state, "provider": provider, "last_reply": last_reply or current.get("last_reply")}
    conversation.provider_state = saved
    Conversation.objects.filter(pk=conversation.pk).update(provider_state=saved)


def _broadcast_error(reply: Message) -> None:
    streams.broadcast(
        reply.conversation.public_id,
        {
            "type": "chat.error",
            "conversation": str(reply.conversation.public_id),
            "message": str(reply.public_id),
            "code": reply.error_code,
            "reason": reply.error,
            # What streamed before the failure was charged: shown as on the page.
            **({"usage": selectors.reply_usage(reply)} if reply.cost else {}),
        },
    )


def conversation_rename(*, actor: User, public_id: UUID, title: object) -> Conversation:
    """Give one of the actor's conversations a new title (whitespace collapsed; 1 to
    TITLE_MAX characters). Moves its last activity forward, like a message. Audited as
    `conversation.renamed` with the title's length, never the title.

    Raises ChatError: invalid (not text, empty, a character that cannot be stored),
    too_large, not_found (not the actor's, or deleted; audited as an access denial),
    legal_hold (the conversation or its owner is under legal hold; audited as denied).
    """
    if not isinstance(title, str):
        raise ChatError("invalid", "The title must be text.")
    title = " ".join(title.split())
    if not title:
        raise ChatError("invalid", "The title is empty.")
    if "\x00" in title or not storable(title):
        raise ChatError("invalid", "The title contains a character that is not allowed.")
    if len(title) > TITLE_MAX:
        raise ChatError("too_large", f"A title has at most {TITLE_MAX} characters.")
    with transaction.atomic():
        conversation = _owned_locked(actor=actor, public_id=public_id)
        if conversation is not None and not _held(conversation):
            conversation.title = title
            conversation.save(update_fields=["title", "updated_at"])
            search.index_title(conversation)
            audit_record(
                action=AuditAction.CONVERSATION_RENAMED,
                actor=actor,
                target=conversation,
                details={"characters": len(title), "source": conversation.source},
            )
            return conversation
    _refuse_unowned_or_held(
        actor=actor,
        public_id=public_id,
        conversation=conversation,
        action=AuditAction.CONVERSATION_RENAMED,
        details={"reason": "legal_hold", "source": conversation.source if conversation else ""},
        done="renamed",
    )
