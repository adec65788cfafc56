"""Generating one reply: window, provider stream (through the resilience layer), tools,
batched deltas to the sockets, and the stored outcome.

Runs in a Celery worker (production) or on a background thread of the server (embedded),
always through `conversations.tasks.generate_reply`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from typing import Any

from django.conf import settings
from django.db import connections

from accounts.models import User
from audit import context as audit_context
from conversations import inflight, selectors, services, streams
from conversations.errors import with_error_id
from conversations.models import Conversation, Message
from costs.services import CallUsage
from guardrails.services import ReplyGuard, reply_guard, system_prompt
from observability import logcontext
from preferences.selectors import instructions_for_chat, with_personal_instructions
from providers.base import (
    ChatMessage,
    ChatRequest,
    Finish,
    ModelSpec,
    ProviderError,
    StateUpdate,
    StopReason,
    TextDelta,
    ToolCall,
    ToolResult,
    ToolSpec,
    Usage,
)
from providers.registry import UnknownModel, get_model
from providers.resilience import Failover, resilient_stream
from providers.window import fit_window, input_budget, merge_consecutive, message_tokens
from tools.registry import run_tool, tools_for

logger = logging.getLogger(__name__)

TOOL_RESULT_STORED_CHARS = 2000


def flush_interval_ms() -> float:
    """How long a batch of text may wait before it is sent, in milliseconds.

    CHAT_DELTA_FLUSH_MS, stretched when this process streams so many replies at once that
    their sends together would exceed CHAT_DELTA_SENDS_PER_SECOND: every send is a message
    a web process must read from Redis and relay, and a web process that falls behind
    drops messages. At 200 replies in one worker, with the defaults, a batch leaves every
    0.2 s instead of every 0.05 s; the text is the same, in fewer, larger pieces.
    """
    stretched = 1000 * inflight.active() / settings.CHAT_DELTA_SENDS_PER_SECOND
    return max(float(settings.CHAT_DELTA_FLUSH_MS), stretched)


class DeltaBatcher:
    """Turns many small text pieces into few channel-layer messages.

    A batch is sent when `flush_interval_ms()` has passed since the previous send or
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
            waited_ms >= flush_interval_ms()
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
        streams.publish_delta(
            self.conversation_id,
            {
                "type": "chat.delta",
                "conversation": str(self.conversation_id),
                "message": str(self.reply.public_id),
                "seq": self.seq,
                "text": chunk,
            },
            message_id=self.reply.public_id,
            seq=self.seq,
            text="".join(self.parts),
        )

    def event(self, kind: str, **fields: Any) -> None:
        """Tell the sockets about something other than text (a tool used, a failover)."""
        self.flush()
        streams.broadcast(
            self.conversation_id,
            {
                "type": f"chat.{kind}",
                "conversation": str(self.conversation_id),
                "message": str(self.reply.public_id),
                **fields,
            },
        )


@dataclass
class Turn:
    """What is being built up while a reply is written, across tool rounds."""

    history: list[ChatMessage]
    tools: list[ToolSpec]
    state: dict[str, Any]
    rounds: list[ChatMessage] = field(default_factory=list)
    input_tokens: int = 0
    output_tokens: int = 0
    has_usage: bool = False
    stop_reason: str = ""
    answered_by: str = ""
    notice: str = ""
    tool_events: list[dict[str, Any]] = field(default_factory=list)
    calls: list[CallUsage] = field(default_factory=list)  # one per provider call, for costs
    options: dict[str, Any] = field(default_factory=dict)  # the caller's (Message.options)
    # The person's custom instructions (chat replies only; preferences.selectors).
    instructions: str = ""


def _history(reply: Message) -> list[ChatMessage]:
    turns = selectors.reply_history(reply=reply)
    return merge_consecutive(
        [
            ChatMessage("user" if m.role == Message.Role.USER else "assistant", m.content)
            for m in turns
        ]
    )


def _state_for(conversation: Conversation, spec: ModelSpec, reply: Message) -> dict[str, Any]:
    """The provider-side state to reuse, or {} when it belongs to another provider or has
    missed a turn (another provider answered since)."""
    state = dict(conversation.provider_state or {})
    if state.get("provider") != spec.provider:
        return {}
    last_reply = (
        Message.objects.filter(
            conversation=conversation,
            superseded_by__isnull=True,  # state that saw an earlier version is not reused
            role=Message.Role.ASSISTANT,
            id__lt=reply.id,
            status__in=[Message.Status.COMPLETE, Message.Status.CANCELLED],
        )
        .order_by("-id")
        .values_list("public_id", flat=True)
        .first()
    )
    if state.get("last_reply") != (str(last_reply) if last_reply else None):
        return {}
    return {k: v for k, v in state.items() if k not in {"provider", "last_reply"}}


def _request(turn: Turn, spec: ModelSpec) -> ChatRequest:
    # With tools, the system prompt says their results are data (guardrails).
    prompt = system_prompt(settings.CHAT_SYSTEM_PROMPT, tools_offered=bool(turn.tools))
    # The person's own instructions come last, subordinate to the organisation's.
    prompt = with_personal_instructions(prompt, turn.instructions)
    # The caller may ask for fewer output tokens than the model's maximum, never more (the
    # budget reservation was made for this figure).
    max_output = spec.max_output_tokens
    if turn.options.get("max_output_tokens"):
        max_output = min(max_output, int(turn.options["max_output_tokens"]))
    temperature = turn.options.get("temperature")
    budget = input_budget(
        context_window=spec.context_window,
        max_output_tokens=max_output,
        system_prompt=prompt,
        tools=turn.tools,
    )
    return ChatRequest(
        model=spec.provider_model_id,
        system_prompt=prompt,
        messages=fit_window([*turn.history, *turn.rounds], budget=budget),
        max_output_tokens=max_output,
        temperature=settings.CHAT_TEMPERATURE if temperature is None else float(temperature),
        tools=turn.tools,
        state=turn.state,
    )


def _call_usage(turn: Turn, spec: ModelSpec, usage: Usage | None, text: str) -> CallUsage:
    """What one provider call consumed, for the ledger.

    The provider's own figures when it reported them. Otherwise, when the call streamed
    something before it was stopped or failed, an estimate (the request's window and the
    text received, at 4 characters a token), flagged as such. A call that produced nothing
    is recorded with no tokens, which the ledger does not charge.
    """
    if usage is not None:
        return CallUsage(
            model=spec.key,
            provider=spec.provider,
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            cached_input_tokens=usage.cached_input_tokens,
        )
    if not text:
        return CallUsage(model=spec.key, provider=spec.provider, input_tokens=0, output_tokens=0)
    request = _request(turn, spec)
    return CallUsage(
        model=spec.key,
        provider=spec.provider,
        input_tokens=message_tokens(ChatMessage("user", request.system_prompt))
        + sum(message_tokens(m) for m in request.messages),
        output_tokens=message_tokens(ChatMessage("assistant", text)),
        estimated=True,
    )


def _client_call(call: ToolCall) -> dict[str, Any]:
    """A call of one of the caller's tools, stored with the reply and returned to them."""
    return {"id": call.id, "name": call.name, "arguments": dict(call.arguments), "client": True}


def _guarded_history(guard: ReplyGuard, history: list[ChatMessage]) -> list[ChatMessage]:
    """The caller's structured turns as the provider may see them: text redacted, the model's
    earlier tool calls redacted like its own turns, and tool results screened for injected
    instructions, redacted and delimited as data, exactly like the product's own tools'."""
    guarded = []
    for message in history:
        if message.tool_calls:
            guarded.append(guard.own_turn(message))
        elif message.tool_results:
            results = tuple(guard.tool_result(result) for result in message.tool_results)
            guarded.append(replace(guard.messages([message])[0], tool_results=results))
        else:
            guarded.extend(guard.messages([message]))
    return guarded


def _record_tool(turn: Turn, call: ToolCall, result: ToolResult) -> dict[str, Any]:
    stored = result.content
    if len(stored) > TOOL_RESULT_STORED_CHARS:
        stored = stored[:TOOL_RESULT_STORED_CHARS] + "…"
    event = {
        "id": call.id,
        "name": call.name,
        "arguments": dict(call.arguments),
        "result": stored,
        "is_error": result.is_error,
    }
    turn.tool_events.append(event)
    return event


def reply_generate(*, reply_id: int) -> None:
    """Generate the reply with this id, once, and store how it ended.

    Safe to call more than once for the same id: only the call that claims the pending
    reply does anything. Never raises for a provider's failure: the reply is marked failed
    with a message for the user and its sockets get an `error` frame.
    """
    reply = services.reply_claim(reply_id=reply_id)
    if reply is None:
        return
    # Events recorded while generating (guardrails, refused tools) carry the owner and the
    # id of the request that asked for the reply.
    context = audit_context.AuditContext(
        actor=reply.conversation.owner, request_id=reply.request_id
    )
    with (
        audit_context.bind(context),
        # Log lines say which turn they belong to: the same request id as the web process's.
        logcontext.bind(
            request_id=reply.request_id,
            conversation_id=reply.conversation.public_id,
            message_id=reply.public_id,
        ),
        inflight.tracking(pk=reply.pk, public_id=reply.public_id) as tracked,
    ):
        _reply_generate(reply, tracked)


def _release_connection() -> None:
    """Give this thread's database connection back while the reply waits on the model.

    A process carries hundreds of replies at once; each holding a connection for its whole
    stream would need hundreds of PostgreSQL connections. With pooling the next query takes
    one from the pool again. (SQLite connections are files: nothing to gain. Inside a
    transaction, as in tests, the connection must stay.)
    """
    connection = connections["default"]
    if connection.vendor != "sqlite" and not connection.in_atomic_block:
        connection.close()


def _reply_generate(reply: Message, tracked: inflight.Tracked) -> None:
    conversation = reply.conversation
    user: User = conversation.owner
    batcher = DeltaBatcher(reply)
    status = Message.Status.COMPLETE
    error_code = error = ""
    turn = Turn(history=[], tools=[], state={}, options=dict(reply.options or {}))
    spec: ModelSpec | None = None  # the model answering now (changes on failover)
    stop_requested = tracked.stopped

    try:
        spec = get_model(reply.model)
        # Guardrails: the provider sees placeholders instead of personal data and secrets
        # (redact mode), in every message of the window, with one mapping for the reply.
        guard = reply_guard(reply=reply)
        client_tools = [ToolSpec(**tool) for tool in turn.options.get("tools", ())]
        if turn.options.get("history"):
            # The caller's own turns (tool calls and their results), structured.
            turn.history = _guarded_history(guard, services.history_from(turn.options["history"]))
        else:
            turn.history = guard.messages(_history(reply))
        # The caller's tools replace the product's own: a call to one ends the reply and
        # goes back to the caller, who runs it (OpenAI-compatible API).
        turn.tools = client_tools or [tool.spec() for tool in tools_for(user)]
        turn.state = _state_for(conversation, spec, reply)
        turn.answered_by = spec.key
        if reply.api_key_id is None:  # chat only: API calls never use them (docs)
            turn.instructions = instructions_for_chat(user)
        tool_rounds = 0
        while True:
            _release_connection()
            round_text: list[str] = []
            calls: list[ToolCall] = []
            new_state: dict[str, Any] = {}
            cancelled = False
            round_usage: Usage | None = None
            try:
                for event in resilient_stream(
                    model=spec,
                    build_request=lambda s: _request(turn, s),
                    should_stop=stop_requested,
                ):
                    if stop_requested():
                        cancelled = True
                        break
                    if isinstance(event, TextDelta):
                        batcher.add(event.text)
                        round_text.append(event.text)
                    elif isinstance(event, ToolCall):
                        calls.append(event)
                    elif isinstance(event, Usage):
                        round_usage = event
                        turn.has_usage = True
                        turn.input_tokens += event.input_tokens
                        turn.output_tokens += event.output_tokens
                    elif isinstance(event, Finish):
                        turn.stop_reason = event.stop_reason.value
                    elif isinstance(event, StateUpdate):
                        # Applied once the round has succeeded: a retried attempt must not
                        # assume the service kept what a failed attempt sent.
                        new_state.update(event.state)
                    elif isinstance(event, Failover):
                        spec = event.to_model
                        turn.answered_by, turn.notice = spec.key, event.notice
                        turn.state = _state_for(conversation, spec, reply)
                        batcher.event("notice", text=event.notice)
            finally:
                # Every call is charged, also one that was stopped or failed midway.
                turn.calls.append(_call_usage(turn, spec, round_usage, "".join(round_text)))
            if new_state:
                turn.state = {**turn.state, **new_state}
                services.conversation_state_save(
                    conversation=conversation, provider=spec.provider, state=turn.state
                )
            if cancelled or stop_requested():
                status, turn.stop_reason = Message.Status.CANCELLED, "stopped"
                break
            if not calls:
                break
            if client_tools:
                turn.tool_events += [_client_call(call) for call in calls]
                turn.stop_reason = StopReason.TOOL_USE.value
                break
            if tool_rounds >= settings.CHAT_MAX_TOOL_ROUNDS:
                turn.stop_reason = "tool_rounds_exhausted"
                break
            tool_rounds += 1
            results = []
            for call in calls:
                result = run_tool(call, user=user)
                # The model gets the result screened, redacted and delimited as data; the
                # user's tool event shows what the tool returned.
                results.append(guard.tool_result(result))
                batcher.event("tool", tool=_record_tool(turn, call, result))
            turn.rounds += [
                guard.own_turn(
                    ChatMessage("assistant", "".join(round_text), tool_calls=tuple(calls))
                ),
                ChatMessage("user", "", tool_results=tuple(results)),
            ]
    except UnknownModel:
        status, error_code = Message.Status.FAILED, "model_unavailable"
        error = "This model is no longer available. Pick another model and try again."
    except ProviderError as exc:
        status, error_code, error = Message.Status.FAILED, exc.code, str(exc)
    except Exception as exc:
        # Unexpected: keep the user's view tidy and the log free of payloads.
        error_id = logcontext.new_error_id()
        logger.error(
            "reply %s failed unexpectedly: %s",
            reply.public_id,
            type(exc).__name__,
            extra={"error_id": error_id},
        )
        error = with_error_id(services.GENERIC_FAILURE, error_id)
        status, error_code = Message.Status.FAILED, "internal"

    batcher.flush()
    finished = services.reply_finish(
        reply=reply,
        outcome=services.ReplyOutcome(
            status=status,
            content=batcher.text,
            input_tokens=turn.input_tokens if turn.has_usage else None,
            output_tokens=turn.output_tokens if turn.has_usage else None,
            stop_reason=turn.stop_reason,
            first_token_at=batcher.first_token_at,
            error_code=error_code,
            error=error,
            answered_by=turn.answered_by,
            notice=turn.notice,
            tool_events=turn.tool_events,
            calls=turn.calls,
        ),
    )
    logger.info("reply %s: %s", status, turn.stop_reason or error_code or "-")
    if finished and status != Message.Status.FAILED and turn.state and spec is not None:
        services.conversation_state_save(
            conversation=conversation,
            provider=spec.provider,
            state=turn.state,
            last_reply=str(reply.public_id),
        )
