"""The OpenAI-compatible endpoint under /v1/ (docs/api.md): `POST /v1/chat/completions` and
`GET /v1/models`, in OpenAI's request, response and error shapes, so that the official `openai`
SDK and every OpenAI client work unchanged with `base_url=<server>/v1`.

Plain async Django views, not a second NinjaAPI: OpenAI publishes the schema, and its shapes
(400 for every bad parameter, `{"error": {message, type, param, code}}`, `data: [DONE]`) are
easier to produce exactly by hand than to bend a framework's validation and error handling to.

The governance path is the REST API's: the key is checked by `api_key_authenticate` for the
endpoint's scope, the turn is sent through `message_send` (source "openai") under the key
owner's audit context, and the reply comes from the worker through the channel layer
(api/replies.py). Each call is one stored conversation: every message of the request is
folded, with its role, into the one stored user message, so guardrails screen all the text
the provider will see.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from typing import Any

from django.contrib.auth.decorators import login_not_required
from django.http import HttpRequest, HttpResponseBase, JsonResponse, StreamingHttpResponse
from django.urls import path, re_path
from django.views.decorators.csrf import csrf_exempt

from accounts.api_keys import ApiKeyRefused
from accounts.models import ApiKey, User
from api import replies
from api.errors import ApiError
from audit import context as audit_context
from conversations import services
from conversations.errors import ChatError
from conversations.models import Conversation
from conversations.services import ReplyOptions
from observability import logcontext
from providers.base import ChatMessage, ToolCall, ToolResult, ToolSpec
from providers.models import AIModel
from providers.registry import models_for_user
from providers.window import merge_consecutive

logger = logging.getLogger(__name__)

ROLES = ("system", "developer", "user", "assistant")
# Our stop reasons (providers.base.StopReason) as OpenAI's finish_reason.
FINISH_REASONS = {
    "max_tokens": "length",
    "content_filtered": "content_filter",
    "tool_use": "tool_calls",
}


class OpenAIError(Exception):
    """An error answered in OpenAI's shape."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.retry_after = retry_after

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def response(self) -> JsonResponse:
        response = JsonResponse(self.body(), status=self.status)
        if self.retry_after is not None:
            response["Retry-After"] = str(self.retry_after)
        if self.status == 401:
            response["WWW-Authenticate"] = 'Bearer realm="openai"'
        return response


def from_chat_error(exc: ChatError) -> OpenAIError:
    """An admission refusal (conversations.errors.ChatError) as OpenAI would answer it."""
    code = exc.code
    if code == "model_unavailable":
        return OpenAIError(404, exc.reason, code="model_not_found", param="model")
    if code == "too_large":
        return OpenAIError(400, exc.reason, code="context_length_exceeded", param="messages")
    if code == "guardrail_blocked":
        return OpenAIError(400, exc.reason, code="guardrail_blocked", param="messages")
    if code == "rate_limited":
        return OpenAIError(
            429,
            exc.reason,
            type="requests",
            code="rate_limit_exceeded",
            retry_after=exc.retry_after,
        )
    if code == "budget_exceeded":
        return OpenAIError(429, exc.reason, type="insufficient_quota", code="insufficient_quota")
    if code == "tools_unsupported":
        return OpenAIError(400, exc.reason, code="tools_unsupported", param="tools")
    if code == "busy":
        return OpenAIError(409, exc.reason, code="busy")
    if code == "not_found":
        return OpenAIError(404, exc.reason, code="not_found")
    if code == "internal":
        return OpenAIError(500, exc.reason, type="server_error", code="internal")
    return OpenAIError(400, exc.reason, code=code)


def from_api_error(exc: ApiError) -> OpenAIError:
    """A failed or timed-out reply (api.replies) as OpenAI would answer it."""
    if exc.status >= 500:
        return OpenAIError(exc.status, exc.message, type="server_error", code=exc.code)
    if exc.code == "model_unavailable":
        return OpenAIError(404, exc.message, code="model_not_found", param="model")
    return OpenAIError(exc.status, exc.message, code=exc.code)


def from_key_refused(exc: ApiKeyRefused) -> OpenAIError:
    if exc.code == "rate_limited":
        return OpenAIError(
            429,
            exc.message,
            type="requests",
            code="rate_limit_exceeded",
            retry_after=exc.retry_after,
        )
    if exc.code in {"inactive_owner", "scope_missing"}:
        return OpenAIError(403, exc.message, type="permission_error", code=exc.code)
    return OpenAIError(401, exc.message, code="invalid_api_key")


async def _authenticate(request: HttpRequest, scope: str) -> ApiKey:
    """The key (acting as `key.owner`). Session cookies are never read. Raises OpenAIError
    (401, 403, 429)."""
    try:
        return await replies.key_authenticate(request, scope)
    except ApiKeyRefused as exc:
        raise from_key_refused(exc) from None


View = Callable[[HttpRequest], Awaitable[HttpResponseBase]]


def endpoint(method: str) -> Callable[[View], View]:
    """An entry point: one HTTP method, no session, no CSRF (keys only), every error in
    OpenAI's shape and never a stack trace."""

    def decorate(view: View) -> View:
        async def wrapped(request: HttpRequest) -> HttpResponseBase:
            if request.method != method:
                return OpenAIError(405, f"Use {method}.", code="method_not_allowed").response()
            try:
                return await view(request)
            except OpenAIError as exc:
                return exc.response()
            except ChatError as exc:
                return from_chat_error(exc).response()
            except ApiError as exc:
                return from_api_error(exc).response()
            except Exception as exc:
                error_id = logcontext.new_error_id()
                # The type only: an exception's text may quote the request.
                logger.error(
                    "OpenAI-compatible request %s failed: %s",
                    request.path[:200],
                    type(exc).__name__,
                    extra={"error_id": error_id},
                )
                message = f"Something went wrong. If it keeps happening, quote error id {error_id}."
                return OpenAIError(500, message, type="server_error", code="internal").response()

        # Keys only: no session is read, so there is neither a sign-in page nor CSRF.
        return login_not_required(csrf_exempt(wrapped))

    return decorate


# --- Request parsing --------------------------------------------------------------------------


def _bad(message: str, param: str | None = None, code: str | None = None) -> OpenAIError:
    return OpenAIError(400, message, param=param, code=code)


def _content_text(content: Any, index: int) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text":
                raise _bad("Only text content parts are supported.", f"messages[{index}].content")
            if not isinstance(part.get("text"), str):
                raise _bad("A text part needs `text`.", f"messages[{index}].content")
            parts.append(part["text"])
        return "".join(parts)
    raise _bad("`content` must be a string or a list of text parts.", f"messages[{index}].content")


def _tool_calls(message: dict[str, Any], index: int) -> tuple[ToolCall, ...]:
    calls = message.get("tool_calls") or []
    if not isinstance(calls, list):
        raise _bad("`tool_calls` must be a list.", f"messages[{index}].tool_calls")
    parsed = []
    for call in calls:
        function = call.get("function") if isinstance(call, dict) else None
        if (
            not isinstance(function, dict)
            or not isinstance(call.get("id"), str)
            or not isinstance(function.get("name"), str)
        ):
            raise _bad("A tool call needs an id and a function name.", f"messages[{index}]")
        try:
            arguments = json.loads(function.get("arguments") or "{}")
        except (TypeError, ValueError):
            raise _bad(
                "A tool call's arguments must be a JSON object.", f"messages[{index}]"
            ) from None
        if not isinstance(arguments, dict):
            raise _bad("A tool call's arguments must be a JSON object.", f"messages[{index}]")
        parsed.append(ToolCall(id=call["id"], name=function["name"], arguments=arguments))
    return tuple(parsed)


def _tool_line(call: ToolCall) -> str:
    return f"[asks for tool {call.name} ({call.id}) with {json.dumps(dict(call.arguments))}]"


def parse_messages(messages: Any) -> tuple[str, tuple[ChatMessage, ...]]:
    """The one user message stored and screened for `messages`, and, when the request
    carries tool calls or tool results, the turns as structured messages for the provider.

    A single user message is stored as it is. Anything more (a system prompt, earlier turns,
    tool calls and results) is folded into it, each turn under its role, so that guardrails
    screen every word the provider will see and the stored conversation shows exactly what
    was asked. Raises OpenAIError (400).
    """
    if not isinstance(messages, list) or not messages:
        raise _bad("`messages` must be a non-empty list.", "messages")
    turns: list[tuple[str, str]] = []
    structured: list[ChatMessage] = []
    names: dict[str, str] = {}  # tool call id -> tool name
    with_tools = False
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise _bad("Each message must be an object.", f"messages[{index}]")
        role = message.get("role")
        if role == "tool":
            call_id = message.get("tool_call_id")
            if not isinstance(call_id, str) or call_id not in names:
                raise _bad(
                    "A tool message needs the `tool_call_id` of an earlier assistant tool call.",
                    f"messages[{index}].tool_call_id",
                )
            content = _content_text(message.get("content"), index)
            with_tools = True
            turns.append(("tool", f"{names[call_id]} ({call_id}) returned: {content}"))
            result = ToolResult(call_id=call_id, name=names[call_id], content=content)
            previous = structured[-1] if structured else None
            if previous is not None and previous.tool_results:
                structured[-1] = replace(previous, tool_results=(*previous.tool_results, result))
            else:
                structured.append(ChatMessage("user", "", tool_results=(result,)))
            continue
        if role not in ROLES:
            raise _bad(f"Unknown role {role!r}.", f"messages[{index}].role")
        calls = _tool_calls(message, index) if role == "assistant" else ()
        if message.get("tool_calls") and role != "assistant":
            raise _bad("Only assistant messages carry tool calls.", f"messages[{index}]")
        content = _content_text(message.get("content") or ("" if calls else None), index)
        names.update({call.id: call.name for call in calls})
        with_tools = with_tools or bool(calls)
        text = "\n".join([content, *(_tool_line(call) for call in calls)]).strip()
        turns.append((str(role), text))
        if role in ("system", "developer"):
            structured.append(ChatMessage("user", f"{str(role).capitalize()}: {content}"))
        else:
            structured.append(ChatMessage(role, content, tool_calls=calls))
    if turns[-1][0] not in ("user", "tool"):
        raise _bad("The last message must be the user's or a tool result.", "messages")
    return replies.folded(turns), tuple(merge_consecutive(structured)) if with_tools else ()


def _tools(body: dict[str, Any]) -> tuple[ToolSpec, ...]:
    """The request's function tools. Raises OpenAIError (400)."""
    if body.get("functions"):
        raise _bad("`functions` is deprecated: use `tools`.", "functions")
    tools = body.get("tools") or []
    choice = body.get("tool_choice")
    if choice not in (None, "auto", "none"):
        raise _bad("Only tool_choice `auto` or `none` is supported.", "tool_choice")
    if not isinstance(tools, list):
        raise _bad("`tools` must be a list.", "tools")
    specs = []
    for index, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(tool, dict) or tool.get("type") != "function":
            raise _bad("Only function tools are supported.", f"tools[{index}]")
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise _bad("A function tool needs a name.", f"tools[{index}]")
        parameters = function.get("parameters", {"type": "object", "properties": {}})
        description = function.get("description", "")
        if not isinstance(parameters, dict) or not isinstance(description, str):
            raise _bad(
                "A function's parameters must be a JSON schema object, its description text.",
                f"tools[{index}]",
            )
        specs.append(
            ToolSpec(name=function["name"], description=description, parameters=parameters)
        )
    return () if choice == "none" else tuple(specs)


def _positive_int(body: dict[str, Any], name: str) -> None:
    value = body.get(name)
    if value is not None and (type(value) is not int or value < 1):
        raise _bad(f"`{name}` must be a positive integer.", name)


def parse_completion(body: Any) -> dict[str, Any]:
    """What this endpoint uses of a chat completion request. Raises OpenAIError (400)."""
    if not isinstance(body, dict):
        raise _bad("The body must be a JSON object.")
    tools = _tools(body)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _bad("`model` is required: a model id from GET /v1/models.", "model")
    _positive_int(body, "max_tokens")
    _positive_int(body, "max_completion_tokens")
    temperature = body.get("temperature")
    if temperature is not None and (
        isinstance(temperature, bool)
        or not isinstance(temperature, int | float)
        or not 0 <= temperature <= 2
    ):
        raise _bad("`temperature` must be a number from 0 to 2.", "temperature")
    n = body.get("n")
    if n is not None and n != 1:
        raise _bad("Only n=1 is supported.", "n")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise _bad("`stream` must be a boolean.", "stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise _bad("`stream_options` must be an object.", "stream_options")
    user = body.get("user")
    if user is not None and not isinstance(user, str):
        raise _bad("`user` must be a string.", "user")
    # max_completion_tokens is the current name, max_tokens the older one: either caps the
    # reply (never above the model's maximum), and the budget holds only that much.
    cap = body.get("max_completion_tokens") or body.get("max_tokens")
    text, history = parse_messages(body.get("messages"))
    return {
        "model": model,
        "text": text,
        "stream": stream,
        "include_usage": bool(options.get("include_usage")),
        "options": ReplyOptions(
            max_output_tokens=cap, temperature=temperature, tools=tools, history=history
        ),
    }


# --- Answers ----------------------------------------------------------------------------------


def _usage(result: dict[str, Any]) -> dict[str, int]:
    prompt = result["usage"]["input_tokens"] or 0
    completion = result["usage"]["output_tokens"] or 0
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _finish_reason(result: dict[str, Any]) -> str:
    return FINISH_REASONS.get(result.get("stop_reason") or "", "stop")


def completion(
    turn: replies.Turn, model: str, created: int, result: dict[str, Any]
) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-{turn.message_id.hex}",
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": result["message"] or (None if result["tool_calls"] else ""),
                    **(
                        {"tool_calls": _openai_tool_calls(result, indexed=False)}
                        if result["tool_calls"]
                        else {}
                    ),
                },
                "finish_reason": _finish_reason(result),
            }
        ],
        "usage": _usage(result),
    }


def _openai_tool_calls(result: dict[str, Any], *, indexed: bool) -> list[dict[str, Any]]:
    """The tool calls the model asked for, as OpenAI writes them (`index` in a stream)."""
    return [
        {
            **({"index": index} if indexed else {}),
            "id": call["id"],
            "type": "function",
            "function": {"name": call["name"], "arguments": json.dumps(call["arguments"])},
        }
        for index, call in enumerate(result["tool_calls"])
    ]


def _chunk(
    turn: replies.Turn,
    model: str,
    created: int,
    delta: dict[str, Any] | None,
    finish_reason: str | None = None,
    usage: dict[str, int] | None = None,
) -> str:
    data: dict[str, Any] = {
        "id": f"chatcmpl-{turn.message_id.hex}",
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": []
        if delta is None
        else [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
    }
    if usage is not None:
        data["usage"] = usage
    return f"data: {json.dumps(data, separators=(',', ':'))}\n\n"


def _error_event(error: OpenAIError) -> str:
    return f"data: {json.dumps(error.body(), separators=(',', ':'))}\n\n"


async def completion_stream(
    turn: replies.Turn, model: str, created: int, include_usage: bool
) -> AsyncIterator[str]:
    """OpenAI's chunks: the role, the text as it comes, the finish reason, the usage when
    asked for, then `[DONE]`. A failure is an `error` event (the SDK raises it). A client
    that goes away stops the reply (replies.turn_end)."""
    try:
        yield _chunk(turn, model, created, {"role": "assistant", "content": ""})
        async for event in replies.turn_events(turn):
            if event.get("type") == "chat.delta" and event.get("text"):
                yield _chunk(turn, model, created, {"content": event["text"]})
        if not turn.finished:
            await replies.db(services.reply_stop)(actor=turn.owner, message_id=turn.message_id)
            turn.finished = True
            yield _error_event(
                OpenAIError(504, "The reply took too long.", type="server_error", code="timeout")
            )
            return
        try:
            result = await replies.db(replies.turn_result)(turn)
        except ApiError as exc:
            yield _error_event(from_api_error(exc))
            return
        if result["tool_calls"]:
            calls = _openai_tool_calls(result, indexed=True)
            yield _chunk(turn, model, created, {"tool_calls": calls})
        yield _chunk(turn, model, created, {}, _finish_reason(result))
        if include_usage:
            yield _chunk(turn, model, created, None, usage=_usage(result))
        yield "data: [DONE]\n\n"
    finally:
        await replies.turn_end(turn)


# --- Endpoints --------------------------------------------------------------------------------


@endpoint("POST")
async def chat_completions(request: HttpRequest) -> HttpResponseBase:
    """A chat completion, whole or streamed, through the one governance path."""
    key = await _authenticate(request, "chat")
    owner = key.owner
    try:
        body = json.loads(request.body or b"null")
    except ValueError:
        raise _bad("The body is not valid JSON.") from None
    params = parse_completion(body)
    created = int(time.time())
    with audit_context.bind(audit_context.from_api_request(request, actor=owner)):
        turn = await replies.turn_start(
            owner=owner,
            text=params["text"],
            model_key=params["model"],
            conversation_id=None,
            source=Conversation.Source.OPENAI,
            api_key=key,
            options=params["options"],
        )
        if params["stream"]:
            response = StreamingHttpResponse(
                completion_stream(turn, params["model"], created, params["include_usage"]),
                content_type="text/event-stream",
            )
            response["Cache-Control"] = "no-cache"
            response["X-Accel-Buffering"] = "no"
            return response
        result = await replies.turn_wait(turn)
    return JsonResponse(completion(turn, params["model"], created, result))


@endpoint("GET")
async def models(request: HttpRequest) -> HttpResponseBase:
    """The models the key's owner may use."""
    owner = (await _authenticate(request, "models:read")).owner
    specs = await replies.db(_models)(owner)
    return JsonResponse({"object": "list", "data": specs})


def _models(owner: User) -> list[dict[str, Any]]:
    specs = models_for_user(owner)
    created = dict(
        AIModel.objects.filter(key__in=[spec.key for spec in specs]).values_list(
            "key", "created_at"
        )
    )
    return [
        {
            "id": spec.key,
            "object": "model",
            "created": int(created[spec.key].timestamp()) if spec.key in created else 0,
            "owned_by": spec.provider,
        }
        for spec in specs
    ]


app_name = "openai-v1"


@login_not_required
def not_found(request: HttpRequest, rest: str = "") -> HttpResponseBase:
    """Any other path under /v1/, in OpenAI's error shape."""
    return OpenAIError(
        404, f"Unknown request URL: {request.method} {request.path[:200]}.", code="unknown_url"
    ).response()


urlpatterns = [
    path("chat/completions", chat_completions, name="chat-completions"),  # type: ignore[arg-type]
    path("models", models, name="models"),  # type: ignore[arg-type]
    re_path(r"^(?P<rest>.*)$", not_found),
]
