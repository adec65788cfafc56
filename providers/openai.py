"""The OpenAI family of providers, on the official `openai` SDK.

* `OpenAIResponsesProvider` (`openai`) — OpenAI's Responses API, streamed. Context is kept
  per model (`options["context"]`): `"stateless"` (default) sends the whole window every turn
  with `store: false`; `"server"` keeps it in an OpenAI Conversation (the Conversations API,
  successor of the Assistants threads): the first turn creates one and yields
  `StateUpdate({"openai_conversation_id": ...})`, later turns send only the new input.
* `AzureOpenAIProvider` (`azure-openai`) — the same on Azure OpenAI; the model id is the
  Azure deployment name.
* `OpenAICompatibleProvider` (`openai-compatible`) — any server speaking OpenAI's Chat
  Completions (vLLM, Ollama, LM Studio, LiteLLM), streamed.

`resolve_openai_driver` applies `settings.OPENAI_DRIVER` (send `openai` models to Azure).

The SDK's own retries are off (`max_retries=0`): retrying belongs to the resilience layer.
Every SDK and transport exception becomes a `ProviderError` with a plain message that never
carries the API key, the request or the service's own error text.
"""

from __future__ import annotations

import json
import logging
import os
import ssl
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import anyio
import httpx2
import openai
import pydantic
from django.conf import settings
from openai import AzureOpenAI, OpenAI, Stream, omit
from openai.types.chat import (
    ChatCompletionAssistantMessageParam,
    ChatCompletionFunctionToolParam,
    ChatCompletionMessageParam,
)
from openai.types.responses import (
    EasyInputMessageParam,
    FunctionToolParam,
    ResponseCompletedEvent,
    ResponseErrorEvent,
    ResponseFailedEvent,
    ResponseFunctionToolCall,
    ResponseFunctionToolCallParam,
    ResponseIncompleteEvent,
    ResponseInputItemParam,
    ResponseOutputItemDoneEvent,
    ResponseRefusalDeltaEvent,
    ResponseStreamEvent,
    ResponseTextDeltaEvent,
)
from openai.types.responses.response import Response
from openai.types.responses.response_input_item_param import FunctionCallOutput

from providers.base import (
    ChatMessage,
    ChatRequest,
    Finish,
    Provider,
    ProviderError,
    ProviderMisconfigured,
    ProviderProtocolError,
    ProviderRateLimited,
    ProviderRejected,
    ProviderTimeout,
    ProviderTimeouts,
    ProviderUnavailable,
    StateUpdate,
    StopReason,
    StreamEvent,
    TextDelta,
    ToolCall,
    ToolSpec,
    Usage,
)

logger = logging.getLogger(__name__)

#: The `ChatRequest.state` key holding the OpenAI conversation id ("server" context).
CONVERSATION_STATE_KEY = "openai_conversation_id"

#: Placeholder key for OpenAI-compatible servers that need none (the SDK insists on one).
NO_API_KEY = "not-needed"

_INTERRUPTED = "The connection to the AI service was interrupted. Please try again."
_CONTENT_FILTERED = "The AI service's content filter blocked this request."
_TOO_LONG = "This conversation is too long for the model. Start a new conversation."
_QUOTA = "The AI service's usage quota is used up. Contact an administrator."
_BAD_TOOL_ARGUMENTS = "The AI service asked for a tool with arguments that could not be read."
_BUSY = "The AI service is still busy with an earlier request in this conversation."

_CONTENT_FILTER_CODES = frozenset(
    {
        "content_filter",
        "content_policy_violation",
        "ResponsibleAIPolicyViolation",
        "bio_policy",
        "misalignment_policy_violation",
        "image_content_policy_violation",
    }
)
_TOO_LONG_CODES = frozenset({"context_length_exceeded", "string_above_max_length"})
_MISCONFIGURED_CODES = frozenset(
    {
        "invalid_api_key",
        "insufficient_quota",
        "model_not_found",
        "deployment_not_found",
        "DeploymentNotFound",
        "data_residency_mismatch",
        "unsupported_country_region_territory",
    }
)
_RATE_LIMIT_CODES = frozenset({"rate_limit_exceeded", "rate_limit_error", "requests", "tokens"})


def resolve_openai_driver(name: str) -> str:
    """The provider that serves catalogue provider `name`, after `settings.OPENAI_DRIVER`.

    `"openai"` becomes `"azure-openai"` when OPENAI_DRIVER is `azure-openai`; every other
    name is returned unchanged. Raises nothing.
    """
    driver: str = settings.OPENAI_DRIVER
    if name == OpenAIResponsesProvider.name and driver == AzureOpenAIProvider.name:
        return AzureOpenAIProvider.name
    return name


# --- errors ------------------------------------------------------------------------------------


def retry_after_seconds(headers: Mapping[str, str]) -> float | None:
    """How long the service asked us to wait: `retry-after-ms`, else `Retry-After` (seconds
    or an HTTP date). None when it did not say (or said something unreadable)."""
    milliseconds = headers.get("retry-after-ms")
    if milliseconds:
        try:
            value = float(milliseconds) / 1000
        except ValueError:
            value = -1
        if value >= 0:
            return value
    raw = headers.get("retry-after")
    if not raw:
        return None
    try:
        seconds = float(raw)
    except ValueError:
        try:
            when = parsedate_to_datetime(raw)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        return max(0.0, (when - datetime.now(tz=UTC)).total_seconds())
    return seconds if seconds >= 0 else None


def _codes(code: object, body: object) -> set[str]:
    """Every error code in an OpenAI / Azure error: `code`, `type`, `innererror.code`."""
    found = {str(code)} if code else set()
    if isinstance(body, Mapping):
        for key in ("code", "type"):
            if body.get(key):
                found.add(str(body[key]))
        inner = body.get("innererror")
        if isinstance(inner, Mapping) and inner.get("code"):
            found.add(str(inner["code"]))
    return found


def _error_for_codes(codes: set[str]) -> ProviderError:
    """The error for a failure the service reported by code (in-stream or in a 400)."""
    if codes & _CONTENT_FILTER_CODES:
        return ProviderRejected(_CONTENT_FILTERED)
    if codes & _TOO_LONG_CODES:
        return ProviderRejected(_TOO_LONG)
    if "insufficient_quota" in codes:
        return ProviderMisconfigured(_QUOTA)
    if codes & _MISCONFIGURED_CODES:
        return ProviderMisconfigured()
    if codes & _RATE_LIMIT_CODES:
        return ProviderRateLimited()
    if any(
        code.startswith(("invalid_", "image_", "unsupported_")) or code.endswith("_image_file")
        for code in codes
    ):
        return ProviderRejected()
    return ProviderUnavailable()


def provider_error(exc: BaseException) -> ProviderError:
    """The `ProviderError` for an exception raised by the `openai` SDK or its transport.

    Raises nothing; an exception it does not know becomes a non-retryable ProviderError.
    """
    if isinstance(exc, ProviderError):
        return exc
    if isinstance(exc, openai.APITimeoutError):
        return ProviderTimeout()
    if isinstance(exc, openai.APIConnectionError):
        return ProviderUnavailable()
    if isinstance(exc, openai.RateLimitError):
        if exc.code == "insufficient_quota":
            return ProviderMisconfigured(_QUOTA)
        return ProviderRateLimited(retry_after=retry_after_seconds(exc.response.headers))
    if isinstance(
        exc, openai.AuthenticationError | openai.PermissionDeniedError | openai.NotFoundError
    ):
        return ProviderMisconfigured()
    if isinstance(exc, openai.BadRequestError | openai.UnprocessableEntityError):
        error = _error_for_codes(_codes(exc.code, exc.body))
        if isinstance(error, ProviderRejected | ProviderMisconfigured):
            return error
        return ProviderRejected()
    if isinstance(exc, openai.ConflictError):
        return ProviderUnavailable(_BUSY)
    if isinstance(exc, openai.APIStatusError):
        if exc.status_code == 408:
            return ProviderTimeout()
        if exc.status_code >= 500:
            return ProviderUnavailable()
        return ProviderRejected()
    if isinstance(exc, openai.APIResponseValidationError):
        return ProviderProtocolError()
    if isinstance(exc, openai.APIError):  # an error reported inside the stream
        return _error_for_codes(_codes(exc.code, exc.body))
    if isinstance(exc, json.JSONDecodeError | UnicodeDecodeError | pydantic.ValidationError):
        return ProviderProtocolError()
    if isinstance(exc, httpx2.TimeoutException):
        return ProviderTimeout()
    if isinstance(exc, httpx2.RequestError | anyio.EndOfStream | ssl.SSLError):
        return ProviderUnavailable()
    if isinstance(exc, openai.OpenAIError):  # e.g. the client found no credentials
        return ProviderMisconfigured()
    logger.error("Unexpected %s from the OpenAI SDK", type(exc).__name__, exc_info=exc)
    return ProviderError("The AI service call failed unexpectedly.", retryable=False)


# --- shared helpers ---------------------------------------------------------------------------


def _sdk_timeout(timeouts: ProviderTimeouts) -> httpx2.Timeout:
    return httpx2.Timeout(timeouts.read, connect=timeouts.connect)


def _arguments_json(call: ToolCall) -> str:
    return json.dumps(dict(call.arguments), ensure_ascii=False)


def _tool_output(content: str, is_error: bool) -> str:
    """A tool result as the model sees it; a failure is marked so the model can tell."""
    return f"Error: {content}" if is_error else content


def parse_tool_arguments(raw: str | None) -> Mapping[str, Any]:
    """A tool call's JSON arguments as a mapping (`{}` when empty or `null`).

    Raises ProviderProtocolError when they are not a JSON object.
    """
    if raw is None or not raw.strip():
        return {}
    try:
        value = json.loads(raw)
    except ValueError:
        raise ProviderProtocolError(_BAD_TOOL_ARGUMENTS) from None
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ProviderProtocolError(_BAD_TOOL_ARGUMENTS)
    return value


def _new_turn(messages: Sequence[ChatMessage]) -> Sequence[ChatMessage]:
    """The messages after the last assistant turn: what the service has not seen yet."""
    for index in range(len(messages) - 1, -1, -1):
        if messages[index].role == "assistant":
            return messages[index + 1 :]
    return messages


# --- Responses API (OpenAI, Azure OpenAI) --------------------------------------------------------


def response_input(messages: Sequence[ChatMessage]) -> list[ResponseInputItemParam]:
    """Messages as Responses API input items: text messages, `function_call` items for the
    assistant's tool calls and `function_call_output` items for their results."""
    items: list[ResponseInputItemParam] = []
    for message in messages:
        if message.role == "assistant":
            if message.content:
                items.append(
                    EasyInputMessageParam(type="message", role="assistant", content=message.content)
                )
            for call in message.tool_calls:
                items.append(
                    ResponseFunctionToolCallParam(
                        type="function_call",
                        call_id=call.id,
                        name=call.name,
                        arguments=_arguments_json(call),
                    )
                )
        else:
            for result in message.tool_results:
                items.append(
                    FunctionCallOutput(
                        type="function_call_output",
                        call_id=result.call_id,
                        output=_tool_output(result.content, result.is_error),
                    )
                )
            if message.content or not message.tool_results:
                items.append(
                    EasyInputMessageParam(type="message", role="user", content=message.content)
                )
    return items


def response_tools(tools: Sequence[ToolSpec]) -> list[FunctionToolParam]:
    """Tools as Responses API function tools (non-strict schemas)."""
    return [
        FunctionToolParam(
            type="function",
            name=tool.name,
            description=tool.description,
            parameters=dict(tool.parameters),
            strict=False,
        )
        for tool in tools
    ]


def _response_stop_reason(response: Response, called_tool: bool) -> StopReason:
    if called_tool:
        return StopReason.TOOL_USE
    if response.status == "incomplete":
        reason = response.incomplete_details.reason if response.incomplete_details else None
        if reason == "max_output_tokens":
            return StopReason.MAX_TOKENS
        if reason == "content_filter":
            return StopReason.CONTENT_FILTERED
    return StopReason.END_TURN


def _response_usage(response: Response) -> Usage | None:
    usage = response.usage
    if usage is None:
        return None
    details = usage.input_tokens_details
    return Usage(
        input_tokens=usage.input_tokens or 0,
        output_tokens=usage.output_tokens or 0,
        cached_input_tokens=(details.cached_tokens or 0) if details is not None else 0,
    )


_clients: dict[str, OpenAI] = {}
_clients_lock = threading.Lock()
_CLIENTS_MAX = 32


def _shared_client(factory: type[OpenAI], **options: Any) -> OpenAI:
    """One client per configuration, shared by every reply of the process.

    A client holds an HTTP connection pool and a TLS context; building one per call cost
    milliseconds of CPU and a new TCP (and TLS) connection for every reply. Clients are
    thread-safe. A changed setting (a rotated key, another base URL) gets a new client.
    """
    key = repr(sorted((name, repr(value)) for name, value in options.items()))
    key = f"{factory.__name__}:{key}"
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            if len(_clients) >= _CLIENTS_MAX:
                _clients.pop(next(iter(_clients)))
            client = _clients[key] = factory(**options)
        return client


class OpenAIResponsesProvider(Provider):
    """OpenAI through the Responses API (with the Conversations API for "server" context)."""

    name = "openai"

    def _client(self) -> OpenAI:
        """A client with the SDK's retries off. Raises ProviderMisconfigured without a key."""
        if not settings.OPENAI_API_KEY:
            raise ProviderMisconfigured()
        try:
            return _shared_client(
                OpenAI,
                api_key=settings.OPENAI_API_KEY,
                base_url=settings.OPENAI_BASE_URL or None,
                organization=settings.OPENAI_ORGANIZATION or None,
                max_retries=0,
                timeout=_sdk_timeout(self.timeouts),
            )
        except (openai.OpenAIError, ValueError, TypeError) as exc:
            raise ProviderMisconfigured() from exc

    def _context_mode(self) -> str:
        mode = self.spec.options.get("context", "stateless")
        if mode not in {"stateless", "server"}:
            raise ProviderMisconfigured()
        return str(mode)

    def stream(self, request: ChatRequest) -> Iterator[StreamEvent]:
        """Stream the reply from the Responses API.

        With "server" context and no conversation in `request.state`, first creates one and
        yields `StateUpdate` with its id. Raises ProviderMisconfigured (missing credentials,
        endpoint or a bad `context` option) before any network call, and every failure as a
        ProviderError subclass. Closing the iterator early closes the HTTP stream.
        """
        mode = self._context_mode()
        client = self._client()
        try:
            yield from self._stream(client, request, mode)
        except ProviderError:
            raise
        except Exception as exc:
            raise provider_error(exc) from exc

    def _stream(self, client: OpenAI, request: ChatRequest, mode: str) -> Iterator[StreamEvent]:
        messages: Sequence[ChatMessage] = request.messages
        conversation_id: str | None = None
        if mode == "server":
            existing = request.state.get(CONVERSATION_STATE_KEY)
            if isinstance(existing, str) and existing:
                conversation_id = existing
                messages = _new_turn(request.messages)
            else:
                conversation_id = client.conversations.create().id
                yield StateUpdate({CONVERSATION_STATE_KEY: conversation_id})
        stream = client.responses.create(
            model=request.model,
            input=response_input(messages),
            instructions=request.system_prompt or omit,
            max_output_tokens=request.max_output_tokens,
            temperature=request.temperature if request.temperature is not None else omit,
            tools=response_tools(request.tools) if request.tools else omit,
            conversation=conversation_id if conversation_id is not None else omit,
            store=conversation_id is not None,
            stream=True,
        )
        try:
            yield from self._events(stream)
        finally:
            stream.close()

    def _events(self, stream: Stream[ResponseStreamEvent]) -> Iterator[StreamEvent]:
        called_tool = False
        for event in stream:
            if isinstance(event, ResponseTextDeltaEvent | ResponseRefusalDeltaEvent):
                if event.delta:
                    yield TextDelta(event.delta)
            elif isinstance(event, ResponseOutputItemDoneEvent):
                item = event.item
                if isinstance(item, ResponseFunctionToolCall) and item.status != "incomplete":
                    called_tool = True
                    yield ToolCall(
                        id=item.call_id,
                        name=item.name,
                        arguments=parse_tool_arguments(item.arguments),
                    )
            elif isinstance(event, ResponseCompletedEvent | ResponseIncompleteEvent):
                usage = _response_usage(event.response)
                if usage is not None:
                    yield usage
                yield Finish(_response_stop_reason(event.response, called_tool))
                return
            elif isinstance(event, ResponseFailedEvent):
                error = event.response.error
                raise _error_for_codes(_codes(error.code if error else None, None))
            elif isinstance(event, ResponseErrorEvent):
                raise _error_for_codes(_codes(event.code, None))
        raise ProviderUnavailable(_INTERRUPTED)  # the stream ended without its final event


class AzureOpenAIProvider(OpenAIResponsesProvider):
    """Azure OpenAI through the Responses API; the request's model is the deployment name."""

    name = "azure-openai"

    def _client(self) -> OpenAI:
        """An Azure client with the SDK's retries off.

        Raises ProviderMisconfigured when the endpoint, key or API version is missing.
        """
        if not settings.AZURE_OPENAI_ENDPOINT or not settings.AZURE_OPENAI_API_KEY:
            raise ProviderMisconfigured()
        try:
            return _shared_client(
                AzureOpenAI,
                azure_endpoint=settings.AZURE_OPENAI_ENDPOINT,
                api_key=settings.AZURE_OPENAI_API_KEY,
                api_version=settings.AZURE_OPENAI_API_VERSION or None,
                max_retries=0,
                timeout=_sdk_timeout(self.timeouts),
            )
        except (openai.OpenAIError, ValueError, TypeError) as exc:
            raise ProviderMisconfigured() from exc


# --- Chat Completions (OpenAI-compatible servers) ------------------------------------------------


def chat_messages(
    system_prompt: str, messages: Sequence[ChatMessage]
) -> list[ChatCompletionMessageParam]:
    """The system prompt and messages as Chat Completions messages: assistant tool calls as
    `tool_calls`, their results as `tool` messages."""
    out: list[ChatCompletionMessageParam] = []
    if system_prompt:
        out.append({"role": "system", "content": system_prompt})
    for message in messages:
        if message.role == "assistant":
            assistant: ChatCompletionAssistantMessageParam = {
                "role": "assistant",
                "content": message.content or None,
            }
            if message.tool_calls:
                assistant["tool_calls"] = [
                    {
                        "id": call.id,
                        "type": "function",
                        "function": {"name": call.name, "arguments": _arguments_json(call)},
                    }
                    for call in message.tool_calls
                ]
            out.append(assistant)
        else:
            for result in message.tool_results:
                out.append(
                    {
                        "role": "tool",
                        "tool_call_id": result.call_id,
                        "content": _tool_output(result.content, result.is_error),
                    }
                )
            if message.content or not message.tool_results:
                out.append({"role": "user", "content": message.content})
    return out


def chat_tools(tools: Sequence[ToolSpec]) -> list[ChatCompletionFunctionToolParam]:
    """Tools as Chat Completions function tools."""
    return [
        {
            "type": "function",
            "function": {
                "name": tool.name,
                "description": tool.description,
                "parameters": dict(tool.parameters),
            },
        }
        for tool in tools
    ]


_FINISH_REASONS = {
    "stop": StopReason.END_TURN,
    "length": StopReason.MAX_TOKENS,
    "tool_calls": StopReason.TOOL_USE,
    "function_call": StopReason.TOOL_USE,
    "content_filter": StopReason.CONTENT_FILTERED,
}


def _count(value: object) -> int:
    """A token count as reported (a missing or non-numeric one is 0)."""
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _objects(value: object) -> Iterator[Mapping[str, Any]]:
    """The JSON objects of a list in a chunk (anything else in it is skipped)."""
    if isinstance(value, list):
        yield from (item for item in value if isinstance(item, Mapping))


def _chunks(response: Any) -> Iterator[Mapping[str, Any]]:
    """The Chat Completions chunks of a streamed response (Server-Sent Events), as JSON
    objects, up to `data: [DONE]`.

    As the SDK's own stream: an event whose data holds an `error` raises openai.APIError
    (the stream's error, mapped like any other by `provider_error`); data that is not JSON
    raises json.JSONDecodeError (a protocol error). Unlike it, the rest of the body is read
    after [DONE], so the HTTP connection goes back to the client's pool for the next reply
    instead of being closed.
    """
    lines = response.iter_lines()
    data: list[str] = []
    for line in lines:
        if line:
            if line.startswith("data:"):
                data.append(line[6:] if line.startswith("data: ") else line[5:])
            continue  # a comment, or the event's name or id: not used by Chat Completions
        if not data:
            continue
        text = "\n".join(data)
        data = []
        if text.startswith("[DONE]"):
            for _rest in lines:
                pass
            return
        chunk = json.loads(text)
        if not isinstance(chunk, Mapping):
            continue
        if chunk.get("error"):
            error = chunk["error"]
            message = error.get("message") if isinstance(error, Mapping) else None
            raise openai.APIError(
                message=message
                if isinstance(message, str) and message
                else "An error occurred during streaming",
                request=response.http_request,
                body=error,
            )
        yield chunk


@dataclass(slots=True)
class _PartialToolCall:
    id: str = ""
    name: str = ""
    arguments: str = ""


class OpenAICompatibleProvider(Provider):
    """Any OpenAI-compatible Chat Completions server (vLLM, Ollama, LM Studio, LiteLLM).

    Options: `base_url` (else settings.OPENAI_COMPATIBLE_BASE_URL) and `api_key_env`, the
    name of an environment variable holding this model's key.
    """

    name = "openai-compatible"

    def _api_key(self) -> str:
        variable = self.spec.options.get("api_key_env")
        if variable and os.environ.get(str(variable)):
            return os.environ[str(variable)]
        return settings.OPENAI_COMPATIBLE_API_KEY or NO_API_KEY

    def _client(self) -> OpenAI:
        """A client for the server with the SDK's retries off.

        Raises ProviderMisconfigured when no base URL is configured.
        """
        base_url = self.spec.options.get("base_url") or settings.OPENAI_COMPATIBLE_BASE_URL
        if not base_url:
            raise ProviderMisconfigured()
        try:
            return _shared_client(
                OpenAI,
                api_key=self._api_key(),
                base_url=str(base_url),
                max_retries=0,
                timeout=_sdk_timeout(self.timeouts),
            )
        except (openai.OpenAIError, ValueError, TypeError) as exc:
            raise ProviderMisconfigured() from exc

    def stream(self, request: ChatRequest) -> Iterator[StreamEvent]:
        """Stream the reply from the server's Chat Completions endpoint.

        Raises ProviderMisconfigured (no base URL) before any network call, and every failure
        as a ProviderError subclass. Closing the iterator early closes the HTTP stream.
        """
        client = self._client()
        try:
            yield from self._stream(client, request)
        except ProviderError:
            raise
        except Exception as exc:
            raise provider_error(exc) from exc

    def _stream(self, client: OpenAI, request: ChatRequest) -> Iterator[StreamEvent]:
        # The SDK sends the request and raises its errors for a refused one (status codes,
        # connection, timeouts); the chunks are read as plain JSON (`_chunks`), not built into
        # pydantic models one by one, which was a fifth of a worker's CPU per reply.
        with client.chat.completions.with_streaming_response.create(
            model=request.model,
            messages=chat_messages(request.system_prompt, request.messages),
            max_tokens=request.max_output_tokens,
            temperature=request.temperature if request.temperature is not None else omit,
            tools=chat_tools(request.tools) if request.tools else omit,
            stream=True,
            stream_options={"include_usage": True},
        ) as response:
            yield from self._events(_chunks(response))

    def _events(self, chunks: Iterator[Mapping[str, Any]]) -> Iterator[StreamEvent]:
        calls: dict[int, _PartialToolCall] = {}
        finish_reason: str | None = None
        usage: Usage | None = None
        for chunk in chunks:
            reported = chunk.get("usage")
            if isinstance(reported, Mapping):
                details = reported.get("prompt_tokens_details")
                cached = details.get("cached_tokens") if isinstance(details, Mapping) else None
                usage = Usage(
                    input_tokens=_count(reported.get("prompt_tokens")),
                    output_tokens=_count(reported.get("completion_tokens")),
                    cached_input_tokens=_count(cached),
                )
            for choice in _objects(chunk.get("choices")):
                if choice.get("index", 0) != 0:
                    continue
                delta = choice.get("delta")
                delta = delta if isinstance(delta, Mapping) else {}
                content = delta.get("content")
                if content:
                    yield TextDelta(str(content))
                for fragment in _objects(delta.get("tool_calls")):
                    index = fragment.get("index", 0)
                    if not isinstance(index, int):
                        raise ProviderProtocolError(_BAD_TOOL_ARGUMENTS)
                    partial = calls.setdefault(index, _PartialToolCall())
                    if fragment.get("id"):
                        partial.id = str(fragment["id"])
                    function = fragment.get("function")
                    if isinstance(function, Mapping):
                        if function.get("name") and not partial.name:
                            partial.name = str(function["name"])
                        if function.get("arguments"):
                            partial.arguments += str(function["arguments"])
                if choice.get("finish_reason"):
                    finish_reason = str(choice["finish_reason"])
        if finish_reason is None:
            raise ProviderUnavailable(_INTERRUPTED)  # the stream ended before the model did
        for index in sorted(calls):
            partial = calls[index]
            if not partial.name:
                raise ProviderProtocolError(_BAD_TOOL_ARGUMENTS)
            yield ToolCall(
                id=partial.id or f"call_{index}",
                name=partial.name,
                arguments=parse_tool_arguments(partial.arguments),
            )
        if usage is not None:
            yield usage
        stop = _FINISH_REASONS.get(finish_reason, StopReason.END_TURN)
        yield Finish(StopReason.TOOL_USE if calls else stop)
