"""Generating one reply: stream from the provider, batch deltas to the sockets, store it.

Runs in a Celery worker (production) or on a background thread of the server (embedded),
always through `conversations.tasks.generate_reply`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

from django.conf import settings

from conversations import selectors, services, streams
from conversations.models import Message
from providers.base import (
    ChatMessage,
    ChatRequest,
    Finish,
    ProviderError,
    StreamEvent,
    TextDelta,
    Usage,
)
from providers.registry import UnknownModel, get_model, provider_for

logger = logging.getLogger(__name__)


class DeltaBatcher:
    """Turns many small text pieces into few channel-layer messages.

    A batch is sent when CHAT_DELTA_FLUSH_MS have passed since the previous send or
    CHAT_DELTA_FLUSH_CHARS are waiting, so a fast model costs tens of messages a second,
    not one per token. The first piece goes out at once (time to first token matters most).
    Before each send the text so far is saved as the reply's snapshot for late subscribers.
    """

    def __init__(self, reply: Message) -> None:
        self.reply = reply
        self.conversation_id = reply.conversation.public_id
        self.parts: list[str] = []
        self.pending: list[str] = []
        self.seq = 0
        self.last_flush = 0.0
        self.first_token_at: float | None = None

    @property
    def text(self) -> str:
        return "".join(self.parts) + "".join(self.pending)

    def add(self, text: str) -> None:
        if not text:
            return
        if self.first_token_at is None:
            self.first_token_at = time.time()
        self.pending.append(text)
        waited_ms = (time.monotonic() - self.last_flush) * 1000
        if (
            waited_ms >= settings.CHAT_DELTA_FLUSH_MS
            or sum(map(len, self.pending)) >= settings.CHAT_DELTA_FLUSH_CHARS
        ):
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        chunk = "".join(self.pending)
        self.parts.append(chunk)
        self.pending.clear()
        self.seq += 1
        self.last_flush = time.monotonic()
        streams.snapshot_save(self.reply.public_id, seq=self.seq, text="".join(self.parts))
        streams.broadcast(
            self.conversation_id,
            {
                "type": "chat.delta",
                "conversation": str(self.conversation_id),
                "message": str(self.reply.public_id),
                "seq": self.seq,
                "text": chunk,
            },
        )


def _build_request(reply: Message, provider_model_id: str) -> ChatRequest:
    history = selectors.reply_history(reply=reply)
    return ChatRequest(
        model=provider_model_id,
        system_prompt=settings.CHAT_SYSTEM_PROMPT,
        messages=[
            ChatMessage(
                role="user" if m.role == Message.Role.USER else "assistant", content=m.content
            )
            for m in history
        ],
        max_output_tokens=settings.CHAT_MAX_OUTPUT_TOKENS,
        temperature=settings.CHAT_TEMPERATURE,
    )


def reply_generate(*, reply_id: int) -> None:
    """Generate the reply with this id, once, and store how it ended.

    Safe to call more than once for the same id: only the call that claims the pending
    reply does anything. Never raises for a provider's failure: the reply is marked failed
    with a message for the user and its sockets get an `error` frame.
    """
    reply = services.reply_claim(reply_id=reply_id)
    if reply is None:
        return

    batcher = DeltaBatcher(reply)
    usage: Usage | None = None
    stop_reason = ""
    status = Message.Status.COMPLETE
    error_code = error = ""
    try:
        spec = get_model(reply.model)
        provider = provider_for(spec)
        events: Iterator[StreamEvent] = provider.stream(
            _build_request(reply, spec.provider_model_id)
        )
        try:
            for event in events:
                if streams.stop_requested(reply.public_id):
                    status, stop_reason = Message.Status.CANCELLED, "stopped"
                    break
                if isinstance(event, TextDelta):
                    batcher.add(event.text)
                elif isinstance(event, Usage):
                    usage = event
                elif isinstance(event, Finish):
                    stop_reason = event.stop_reason.value
        finally:
            close = getattr(events, "close", None)
            if close is not None:
                close()  # releases the provider's connection when we stopped early
    except UnknownModel:
        status, error_code = Message.Status.FAILED, "model_unavailable"
        error = "This model is no longer available. Pick another model and try again."
    except ProviderError as exc:
        status, error_code, error = Message.Status.FAILED, exc.code, str(exc)
    except Exception as exc:
        # Unexpected: keep the user's view tidy and the log free of payloads.
        logger.error("reply %s failed unexpectedly: %s", reply.public_id, type(exc).__name__)
        status, error_code, error = Message.Status.FAILED, "internal", services.GENERIC_FAILURE

    batcher.flush()
    services.reply_finish(
        reply=reply,
        outcome=services.ReplyOutcome(
            status=status,
            content=batcher.text,
            input_tokens=usage.input_tokens if usage else None,
            output_tokens=usage.output_tokens if usage else None,
            stop_reason=stop_reason,
            first_token_at=batcher.first_token_at,
            error_code=error_code,
            error=error,
        ),
    )
