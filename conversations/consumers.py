"""The chat WebSocket: one per open chat page. Protocol: docs/websocket-protocol.md.

The consumer is an entry point and stays thin: it checks the frame, calls a service or
selector, and relays events from the conversation's group to the browser. Every access to
a conversation is checked against the connected user before anything else happens.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.conf import settings

from accounts import sessions
from audit import context as audit_context
from audit.catalogue import AuditAction, AuditOutcome, TargetType
from audit.services import audit_record
from conversations import errors, selectors, services, streams
from conversations.errors import ChatError
from enterprise_ai import ratelimit
from observability import logcontext, metrics
from providers.registry import default_model_for

logger = logging.getLogger(__name__)
T = TypeVar("T")


def accepted_frame(
    result: services.SendResult, *, revision: str = "", replaces: uuid.UUID | None = None
) -> dict[str, Any]:
    """The `accepted` answer to a send, a regenerate or an edit (docs/websocket-protocol.md):
    `revision` names the kind of a new version, `replaces` the message it replaces."""
    frame: dict[str, Any] = {
        "type": "accepted",
        "conversation": str(result.conversation.public_id),
        "title": result.conversation.title,
        "created": result.created,
        "user_message": str(result.user_message.public_id),
        "message": str(result.reply.public_id),
        "model": result.reply.model,
        "created_at": result.reply.created_at.isoformat(),
        "user_created_at": result.user_message.created_at.isoformat(),
        **({"notice": result.notice} if result.notice else {}),
    }
    if revision:
        frame["revision"] = revision
        frame["replaces"] = str(replaces)
    return frame


# Close code for a refused handshake (the browser sees HTTP 403).
CLOSE_UNAUTHENTICATED = 4401
# Close code of an open socket whose session ended (signed out, expired, ended elsewhere).
CLOSE_SESSION_ENDED = 4440
# How long the session watcher waits after a failed check before trying again.
SESSION_WATCH_RETRY_SECONDS = 60

# The sockets' database work runs on a pool of its own. Channels' default runs every
# consumer's database call of the process on one shared thread: sends of many people then
# queue behind each other. Connections come from the database pool (docs/performance.md).
_db_executor = ThreadPoolExecutor(
    max_workers=settings.CHAT_DB_THREADS, thread_name_prefix="chat-db"
)


def db(function: Callable[..., T]) -> Callable[..., Awaitable[T]]:
    """`function` as a coroutine run on the sockets' database threads (connections closed
    or returned to the pool after each call, as Channels does)."""
    return database_sync_to_async(function, thread_sensitive=False, executor=_db_executor)


def _parse_uuid(value: object, field: str) -> uuid.UUID:
    if not isinstance(value, str):
        raise ChatError("invalid", f"'{field}' must be an id.")
    try:
        return uuid.UUID(value)
    except ValueError:
        raise ChatError("invalid", f"'{field}' is not a valid id.") from None


class ChatConsumer(AsyncJsonWebsocketConsumer):
    async def connect(self) -> None:
        user = self.scope.get("user")
        self.connection_id = audit_context.new_request_id()
        self.opened_at = time.monotonic()
        if user is None or not user.is_authenticated or not user.is_active:
            reason = "not_signed_in" if user is None or not user.is_authenticated else "inactive"
            await self.audit(AuditAction.WS_REFUSED, AuditOutcome.DENIED, reason=reason)
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        self.session_key: str = getattr(self.scope.get("session"), "session_key", None) or ""
        self.session_hash = audit_context.session_hash(self.session_key)
        self.session_ended = False
        check = await self.session_check(user_id=user.pk, touch=True)
        if check.problem is not None:  # e.g. idle too long: the session cookie is stale
            await self.audit(AuditAction.WS_REFUSED, AuditOutcome.DENIED, reason=check.problem)
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        self.user = user
        self.subscriptions: set[str] = set()
        # Joined before accepting: a session ended from now on reaches this socket.
        self.user_group = sessions.user_group(user.public_id)
        await self.channel_layer.group_add(self.user_group, self.channel_name)
        await self.accept()
        self.counted_open = True
        metrics.websocket_opened()
        self.session_watch = asyncio.create_task(self.watch_session(check.seconds_left))
        await self.audit(AuditAction.WS_CONNECT, AuditOutcome.SUCCESS)

    async def disconnect(self, code: int) -> None:
        if getattr(self, "counted_open", False):
            self.counted_open = False
            metrics.websocket_closed()
        if hasattr(self, "session_watch"):
            self.session_watch.cancel()
        groups = [getattr(self, "user_group", None), *getattr(self, "subscriptions", set())]
        try:
            for group in filter(None, groups):
                await self.channel_layer.group_discard(group, self.channel_name)
        except Exception as exc:
            # Redis unavailable: the memberships expire on their own (group_expiry); the
            # disconnect is still recorded below.
            logger.warning("chat socket groups not left: %s", type(exc).__name__)
        if hasattr(self, "user"):
            await self.audit(
                AuditAction.WS_DISCONNECT,
                AuditOutcome.SUCCESS,
                code=code,
                seconds_open=round(time.monotonic() - self.opened_at, 1),
            )

    def frame_context(self) -> audit_context.AuditContext:
        """Who and where, for the audit events a frame causes; a fresh request id per frame."""
        return audit_context.from_scope(self.scope)

    async def audit(self, action: AuditAction, outcome: AuditOutcome, **details: Any) -> None:
        await db(audit_record)(
            action=action,
            target=(TargetType.SOCKET, self.connection_id),
            outcome=outcome,
            details={"path": self.scope.get("path", "")[:200], **details},
            context=audit_context.from_scope(self.scope, request_id=self.connection_id),
        )

    # --- The session behind the socket (accounts/sessions.py) ------------------------------

    async def session_check(self, *, user_id: int, touch: bool) -> sessions.SocketCheck:
        return await db(sessions.socket_session_check)(
            session_key=self.session_key, user_id=user_id, touch=touch
        )

    async def end_session(self, reason: str, *, trigger: str) -> None:
        """Close the socket because its session ended; later frames are dropped unread."""
        if self.session_ended:
            return
        self.session_ended = True
        watch = getattr(self, "session_watch", None)
        if watch is not None and watch is not asyncio.current_task():
            watch.cancel()
        await self.audit(
            AuditAction.WS_SESSION_ENDED,
            AuditOutcome.DENIED if trigger == "frame" else AuditOutcome.SUCCESS,
            reason=reason,
            trigger=trigger,
        )
        await self.close(code=CLOSE_SESSION_ENDED)

    async def watch_session(self, seconds_left: int | None) -> None:
        """Close the socket when its session reaches its idle or absolute limit, unprompted."""
        while not self.session_ended:
            wait = SESSION_WATCH_RETRY_SECONDS if seconds_left is None else seconds_left + 1
            await asyncio.sleep(wait)
            try:
                check = await self.session_check(user_id=self.user.pk, touch=False)
            except Exception as exc:
                logger.warning("chat session check failed: %s", type(exc).__name__)
                seconds_left = None
                continue
            if check.problem is not None:
                await self.end_session(check.problem, trigger="timer")
                return
            seconds_left = check.seconds_left

    async def session_end(self, event: dict[str, Any]) -> None:
        """`session.end` from accounts.sessions.sockets_close: for this session, or all."""
        if event.get("session") and event["session"] != self.session_hash:
            return
        await self.end_session(str(event.get("reason", ""))[:64], trigger="event")

    # --- Frames from the browser ------------------------------------------------------------

    async def receive(
        self, text_data: str | None = None, bytes_data: bytes | None = None, **kwargs: Any
    ) -> None:
        if self.session_ended:
            return
        # The rate limit first (one cache hit): a flood of frames never reaches the database.
        if not await self.frame_allowed():
            return
        # Then the session: a frame of one that ended is never acted on.
        check = await self.session_check(user_id=self.user.pk, touch=True)
        if check.problem is not None:
            await self.end_session(check.problem, trigger="frame")
            return
        if text_data is None:
            await self.send_error("bad_frame", "Only text frames carrying JSON are accepted.")
            return
        if len(text_data.encode("utf-8")) > settings.CHAT_MAX_FRAME_BYTES:
            await self.send_error(
                "too_large",
                f"The frame is too large; the limit is {settings.CHAT_MAX_FRAME_BYTES:,} bytes.",
            )
            return
        try:
            content = json.loads(text_data)
            # A \ud800 escape parses to a lone surrogate, which no database can store.
            json.dumps(content, ensure_ascii=False).encode("utf-8")
        except (ValueError, RecursionError):  # RecursionError: nested too deeply to parse
            await self.send_error("bad_json", "The frame is not valid JSON.")
            return
        if not isinstance(content, dict):
            await self.send_error("bad_frame", "The frame must be a JSON object with a 'type'.")
            return
        await self.receive_json(content)

    async def frame_allowed(self) -> bool:
        """Count the frame against the person's CHAT_FRAMES_PER_MINUTE (all their sockets).

        Over the limit a frame is answered with `rate_limited` and otherwise ignored: no
        query, no audit event per frame. The first refusal of a window is audited, so a
        flood of frames (say, subscribe requests for other people's conversations, each of
        which would be audited) can neither load the database nor flood the audit trail.
        """
        limit = settings.CHAT_FRAMES_PER_MINUTE
        if not limit:
            return True
        decision = await ratelimit.ahit(
            f"chat:frames:{self.user.public_id}", limit=limit, window_seconds=60
        )
        if decision.allowed:
            return True
        if decision.first_refusal:
            await self.audit(
                AuditAction.WS_RATE_LIMITED,
                AuditOutcome.DENIED,
                limit=limit,
                window_seconds=60,
                retry_after=decision.retry_after,
            )
        await self.send_error(
            "rate_limited",
            f"Too many requests from this account; try again in {decision.retry_after} s.",
            retry_after=decision.retry_after,
        )
        return False

    async def receive_json(self, content: dict[str, Any], **kwargs: Any) -> None:
        handlers: dict[str, Callable[[dict[str, Any]], Awaitable[None]]] = {
            "send": self.handle_send,
            "stop": self.handle_stop,
            "subscribe": self.handle_subscribe,
            "regenerate": self.handle_regenerate,
            "edit": self.handle_edit,
        }
        frame_type = content.get("type")
        handler = handlers.get(frame_type) if isinstance(frame_type, str) else None
        if handler is None:
            await self.send_error("unknown_type", "Unknown frame type; see the protocol.")
            return
        context = self.frame_context()
        try:
            with audit_context.bind(context):
                await handler(content)
        except ChatError as exc:
            await self.send_error(exc.code, exc.reason, retry_after=exc.retry_after)
        except Exception as exc:
            error = errors.internal(logcontext.new_error_id())
            logger.error(
                "chat frame %r failed: %s",
                content.get("type"),
                type(exc).__name__,
                extra={"error_id": error.error_id, "request_id": context.request_id},
            )
            await self.send_error(error.code, error.reason, error_id=error.error_id)

    async def handle_send(self, content: dict[str, Any]) -> None:
        raw_conversation = content.get("conversation")
        model_key = content.get("model") or await self.default_model_key()
        if raw_conversation is None:
            # The id is chosen here so the socket is subscribed before the reply can start.
            conversation_id = uuid.uuid4()
            await self.subscribe(conversation_id)
            try:
                result = await db(services.message_send)(
                    actor=self.user,
                    text=content.get("text"),
                    model_key=model_key,
                    new_conversation_id=conversation_id,
                )
            except Exception:
                await self.unsubscribe(conversation_id)
                raise
        else:
            conversation_id = _parse_uuid(raw_conversation, "conversation")
            # Ownership first: a socket never joins a group it may not read.
            await db(selectors.conversation_get_owned)(user=self.user, public_id=conversation_id)
            await self.subscribe(conversation_id)
            result = await db(services.message_send)(
                actor=self.user,
                text=content.get("text"),
                model_key=model_key,
                conversation_id=conversation_id,
            )
        logger.info(
            "chat send accepted",
            extra={
                "conversation_id": str(result.conversation.public_id),
                "message_id": str(result.reply.public_id),
            },
        )
        await self.send_json(accepted_frame(result))

    async def handle_stop(self, content: dict[str, Any]) -> None:
        message_id = _parse_uuid(content.get("message"), "message")
        await db(services.reply_stop)(actor=self.user, message_id=message_id)

    async def handle_regenerate(self, content: dict[str, Any]) -> None:
        """A new version of the last reply (conversations.versions), admitted as a send."""
        reply_id = _parse_uuid(content.get("message"), "message")
        conversation_id = await self.revision_conversation(content)
        result = await db(services.message_regenerate)(
            actor=self.user,
            conversation_id=conversation_id,
            reply_id=reply_id,
            model_key=content.get("model") or None,
        )
        await self.send_json(accepted_frame(result, revision="regenerate", replaces=reply_id))

    async def handle_edit(self, content: dict[str, Any]) -> None:
        """The last message edited and sent again (conversations.versions)."""
        message_id = _parse_uuid(content.get("message"), "message")
        conversation_id = await self.revision_conversation(content)
        result = await db(services.message_edit)(
            actor=self.user,
            conversation_id=conversation_id,
            message_id=message_id,
            text=content.get("text"),
            model_key=content.get("model") or None,
        )
        await self.send_json(accepted_frame(result, revision="edit", replaces=message_id))

    async def revision_conversation(self, content: dict[str, Any]) -> uuid.UUID:
        """The frame's conversation once its ownership is checked (audited otherwise); the
        socket follows it before the new reply can start."""
        conversation_id = _parse_uuid(content.get("conversation"), "conversation")
        await db(selectors.conversation_get_owned)(user=self.user, public_id=conversation_id)
        await self.subscribe(conversation_id)
        return conversation_id

    async def handle_subscribe(self, content: dict[str, Any]) -> None:
        conversation_id = _parse_uuid(content.get("conversation"), "conversation")
        await db(selectors.conversation_get_owned)(user=self.user, public_id=conversation_id)
        # Join before reading the snapshot: every delta after it will reach this socket.
        await self.subscribe(conversation_id)
        snapshot = await db(selectors.conversation_snapshot)(
            user=self.user, public_id=conversation_id
        )
        await self.send_json({"type": "snapshot", **snapshot})

    async def default_model_key(self) -> str:
        return await db(self._default_model_key)()

    def _default_model_key(self) -> str:
        model = default_model_for(self.user)
        if model is None:
            raise ChatError(
                "model_unavailable", "No model is available to you. Ask an administrator."
            )
        return model.key

    # --- Groups -----------------------------------------------------------------------------

    async def subscribe(self, conversation_id: uuid.UUID) -> None:
        group = streams.conversation_group(conversation_id)
        if group not in self.subscriptions:
            await self.channel_layer.group_add(group, self.channel_name)
            self.subscriptions.add(group)

    async def unsubscribe(self, conversation_id: uuid.UUID) -> None:
        group = streams.conversation_group(conversation_id)
        if group in self.subscriptions:
            await self.channel_layer.group_discard(group, self.channel_name)
            self.subscriptions.discard(group)

    # --- Events from the reply generator (via the channel layer) ---------------------------

    async def chat_delta(self, event: dict[str, Any]) -> None:
        await self.send_json(
            {
                "type": "delta",
                "conversation": event["conversation"],
                "message": event["message"],
                "seq": event["seq"],
                "text": event["text"],
            }
        )

    async def chat_done(self, event: dict[str, Any]) -> None:
        await self.send_json({**event, "type": "done"})

    async def chat_tool(self, event: dict[str, Any]) -> None:
        await self.send_json({**event, "type": "tool"})

    async def chat_notice(self, event: dict[str, Any]) -> None:
        await self.send_json({**event, "type": "notice"})

    async def chat_error(self, event: dict[str, Any]) -> None:
        await self.send_json({**event, "type": "error"})

    async def send_error(
        self, code: str, reason: str, *, retry_after: int | None = None, error_id: str = ""
    ) -> None:
        frame: dict[str, Any] = {"type": "error", "code": code, "reason": reason}
        if retry_after is not None:
            frame["retry_after"] = retry_after
        if error_id:
            frame["error_id"] = error_id
        await self.send_json(frame)
