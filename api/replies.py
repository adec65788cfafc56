"""A chat turn from the API: admission through `message_send` (the one governance path),
then the reply's events from the conversation's channel-layer group, exactly as the chat
socket receives them; the stored reply is the truth for the final text and usage."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings

from accounts.api_keys import ApiKeyRefused, api_key_authenticate
from accounts.models import ApiKey, User
from api.errors import ApiError, chat_error_status
from audit import context as audit_context
from conversations import selectors, services, streams
from conversations.models import Conversation, Message
from enterprise_ai.client_ip import client_ip
from providers.registry import default_model_for

logger = logging.getLogger(__name__)

_REPLY_END = {"chat.done", "chat.error"}


def db(function: Any) -> Any:
    """`function` as a coroutine on the default executor (not Django's one shared thread)."""
    return database_sync_to_async(function, thread_sensitive=False)


@dataclass
class Turn:
    """A sent message whose reply this request waits for."""

    owner: User
    conversation_id: uuid.UUID
    message_id: uuid.UUID
    channel: str
    group: str
    seq: int = 0
    gap: bool = False
    finished: bool = False
    deadline: float = field(default=0.0)
    # The request's audit context, for a stop after the view has returned (streaming).
    context: audit_context.AuditContext = field(default_factory=audit_context.AuditContext)


async def turn_start(
    *,
    owner: User,
    text: str,
    model_key: str | None,
    conversation_id: uuid.UUID | None,
    source: str = Conversation.Source.API,
    api_key: Any = None,
    options: services.ReplyOptions | None = None,
) -> Turn:
    """Join the conversation's group, then send the message (so no delta is missed).

    Raises ChatError from admission (nothing stored then) and ApiError when no model is
    available to the owner. `source` names the entry point (api, openai); `api_key` is the
    key the call is made with (its own rate limit was counted when it was checked; its own
    budgets apply at admission); `options` are the caller's generation settings.
    """
    layer = get_channel_layer()
    channel = await layer.new_channel()
    if conversation_id is None:
        target = uuid.uuid4()
        kwargs: dict[str, Any] = {"new_conversation_id": target}
    else:
        target = conversation_id
        # Ownership first: never join a group the owner may not read (a refusal is audited).
        await db(selectors.conversation_get_owned)(user=owner, public_id=conversation_id)
        kwargs = {"conversation_id": conversation_id}
    group = streams.conversation_group(target)
    await layer.group_add(group, channel)
    try:
        result = await db(_send)(
            actor=owner,
            text=text,
            model_key=model_key,
            source=source,
            api_key=api_key,
            options=options,
            **kwargs,
        )
    except BaseException:
        await layer.group_discard(group, channel)
        raise
    return Turn(
        owner=owner,
        conversation_id=result.conversation.public_id,
        message_id=result.reply.public_id,
        channel=channel,
        group=group,
        deadline=time.monotonic() + settings.CHAT_REPLY_MAX_SECONDS,
        context=audit_context.current(),
    )


MISSING_KEY = "Send an API key: Authorization: Bearer <key>."


async def key_authenticate(request: Any, scope: str) -> ApiKey:
    """The API key of `Authorization: Bearer <key>`, if it may be used now for `scope`; it
    acts as `key.owner`. Session cookies are never read. Raises ApiKeyRefused: `missing_key`
    without a bearer token (not audited: nothing was presented), or api_key_authenticate's
    codes (audited under the caller's address, never a session's user)."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiKeyRefused("missing_key", MISSING_KEY)
    with audit_context.bind(audit_context.from_api_request(request, actor=None)):
        key: ApiKey = await db(api_key_authenticate)(
            raw=token.strip(), ip=client_ip(request), scope=scope
        )
    return key


def folded(turns: list[tuple[str, str]]) -> str:
    """The one user message stored and sent for several turns (a system prompt, earlier
    turns, then the user's): each under its role, so that guardrails screen every word the
    provider will see and the stored conversation shows exactly what was asked. A single
    user turn is stored as it is."""
    if len(turns) == 1 and turns[0][0] == "user":
        return turns[0][1]
    return "\n\n".join(f"{role.capitalize()}: {text}" for role, text in turns)


def _default_model_key(owner: User) -> str:
    model = default_model_for(owner)
    if model is None:
        raise ApiError(403, "model_unavailable", "No model is available to you.")
    return model.key


def _send(*, actor: User, model_key: str | None, **kwargs: Any) -> services.SendResult:
    """`message_send` with the owner's default model when none is named, in one trip to
    the database thread (each trip takes a pooled connection and checks it)."""
    if model_key is None:
        model_key = _default_model_key(actor)
    return services.message_send(actor=actor, model_key=model_key, **kwargs)


async def turn_events(turn: Turn) -> AsyncIterator[dict[str, Any]]:
    """The reply's events (`chat.delta`, `chat.notice`, `chat.tool`), up to and including
    `chat.done` or `chat.error`, or until CHAT_REPLY_MAX_SECONDS have passed."""
    layer = get_channel_layer()
    message_id = str(turn.message_id)
    while True:
        remaining = turn.deadline - time.monotonic()
        if remaining <= 0:
            return
        try:
            event = await asyncio.wait_for(layer.receive(turn.channel), timeout=remaining)
        except TimeoutError:
            return
        if event.get("message") != message_id:
            continue  # another reply in the same conversation (e.g. from the chat page)
        if event.get("type") == "chat.delta":
            seq = int(event.get("seq", 0))
            if seq != turn.seq + 1:
                turn.gap = True  # the stored reply is read at the end in any case
            turn.seq = max(turn.seq, seq)
        if event.get("type") in _REPLY_END:
            turn.finished = True
        yield event
        if turn.finished:
            return


async def turn_end(turn: Turn) -> None:
    """Leave the group; stop the reply if it has not finished (client gone, timeout), so the
    owner is charged only for what was produced."""
    try:
        if not turn.finished:
            with audit_context.bind(turn.context):
                # A task of its own (it copies the bound context), shielded: a request
                # cancelled because its client went away still stops its reply.
                stop = asyncio.ensure_future(
                    db(services.reply_stop)(actor=turn.owner, message_id=turn.message_id)
                )
            try:
                await asyncio.shield(stop)
            except Exception as exc:
                logger.warning("API reply not stopped: %s", type(exc).__name__)
    finally:
        try:
            await get_channel_layer().group_discard(turn.group, turn.channel)
        except Exception as exc:  # the membership expires on its own (group_expiry)
            logger.warning("API reply group not left: %s", type(exc).__name__)


def turn_result(turn: Turn) -> dict[str, Any]:
    """The stored reply as the API answers with it. Raises ApiError when it failed or is
    still being generated."""
    reply = Message.objects.select_related("conversation").get(
        public_id=turn.message_id, conversation__owner=turn.owner
    )
    if reply.status == Message.Status.FAILED:
        code = reply.error_code or "reply_failed"
        raise ApiError(chat_error_status(code), code, reply.error or "The reply failed.")
    if reply.is_in_flight:
        raise ApiError(504, "timeout", "The reply took too long and was stopped.")
    usage = selectors.reply_usage(reply)
    return {
        "conversation_id": str(reply.conversation.public_id),
        "message_id": str(reply.public_id),
        "message": reply.content,
        "model": reply.model,
        "status": reply.status,
        "stop_reason": reply.stop_reason,
        "usage": {
            "input_tokens": usage["input_tokens"],
            "output_tokens": usage["output_tokens"],
        },
        "cost": usage["cost"],
        "currency": usage["currency"],
        "cost_estimated": usage["estimated"],
        # Calls of the caller's own tools the model asked for (OpenAI-compatible API).
        "tool_calls": [
            {"id": event["id"], "name": event["name"], "arguments": event["arguments"]}
            for event in reply.tool_events or ()
            if event.get("client")
        ],
    }


async def turn_wait(turn: Turn) -> dict[str, Any]:
    """Wait for the whole reply; its stored result (raises ApiError as turn_result)."""
    try:
        async for _event in turn_events(turn):
            pass
        if not turn.finished:
            await db(services.reply_stop)(actor=turn.owner, message_id=turn.message_id)
            turn.finished = True
            raise ApiError(504, "timeout", "The reply took too long and was stopped.")
        return await db(turn_result)(turn)
    finally:
        await turn_end(turn)


def sse(event: str, data: dict[str, Any]) -> str:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


async def turn_stream(turn: Turn) -> AsyncIterator[str]:
    """Server-Sent Events: `accepted` {conversation_id, message_id} at once (so the status
    and headers go out as soon as the message is admitted), `delta` {text} …, then `done`
    (the stored reply, as the non-stream answer) or `error` {code, message}. A client that
    goes away stops the reply."""
    try:
        yield sse(
            "accepted",
            {"conversation_id": str(turn.conversation_id), "message_id": str(turn.message_id)},
        )
        async for event in turn_events(turn):
            kind = event.get("type")
            if kind == "chat.delta":
                yield sse("delta", {"text": event.get("text", "")})
            elif kind == "chat.notice":
                yield sse("notice", {"message": event.get("text", "")})
        if not turn.finished:
            await db(services.reply_stop)(actor=turn.owner, message_id=turn.message_id)
            turn.finished = True
            yield sse("error", {"code": "timeout", "message": "The reply took too long."})
            return
        try:
            result = await db(turn_result)(turn)
        except ApiError as exc:
            yield sse("error", {"code": exc.code, "message": exc.message})
            return
        yield sse("done", result)
    finally:
        await turn_end(turn)
