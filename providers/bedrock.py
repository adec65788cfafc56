"""AWS Bedrock, through the Converse API (any Converse-capable model or inference profile).

`BedrockProvider.stream()` calls ConverseStream and maps its events to the provider contract
(`providers.base`); `complete()` calls Converse for callers that need no streaming.

Settings: `BEDROCK_REGION` and `BEDROCK_ENDPOINT_URL` (a VPC endpoint; empty: AWS's
default). A catalogue model may override both with its options `region` and `endpoint_url`.
The model id (`ChatRequest.model`) may be a model id, an inference profile id or an ARN.
Credentials come only from the standard AWS chain (environment, shared files, SSO, container
or instance role), never from the catalogue.

The SDK's retries are off (one HTTP attempt per call): retrying belongs to the resilience
layer. Every failure is raised as a `ProviderError` subclass with a plain message; upstream
text is logged (without request bodies), never shown.

Usage follows the contract (providers/base.py): `input_tokens` counts every input token, so
it is Bedrock's `inputTokens` (which leaves out prompt-cache reads) plus
`cacheReadInputTokens`, and `cached_input_tokens` is the cache-read part.
"""

from __future__ import annotations

import email.utils
import json
import logging
import math
import os
import threading
import time
from collections.abc import Generator, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import boto3
import botocore.config
import botocore.eventstream
import botocore.exceptions
import botocore.parsers
import urllib3.exceptions
from django.conf import settings

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
    ProviderUnavailable,
    StopReason,
    StreamEvent,
    TextDelta,
    ToolCall,
    Usage,
)

logger = logging.getLogger(__name__)

_STOP_REASONS: dict[str, StopReason] = {
    "end_turn": StopReason.END_TURN,
    "max_tokens": StopReason.MAX_TOKENS,
    "model_context_window_exceeded": StopReason.MAX_TOKENS,
    "stop_sequence": StopReason.STOP_SEQUENCE,
    "tool_use": StopReason.TOOL_USE,
    "content_filtered": StopReason.CONTENT_FILTERED,
    "guardrail_intervened": StopReason.CONTENT_FILTERED,
}

# Error codes, lower-cased: the HTTP API says "ThrottlingException", the event stream
# "throttlingException".
_RATE_LIMITED = {
    "throttlingexception",
    "throttling",
    "toomanyrequestsexception",
    "toomanyrequests",
    "requestlimitexceeded",
}
_UNAVAILABLE = {
    "serviceunavailableexception",
    "serviceunavailable",
    "internalserverexception",
    "internalfailure",
    "modelnotreadyexception",
    "modelstreamerrorexception",
    "modelerrorexception",
}
_TIMED_OUT = {"modeltimeoutexception", "requesttimeout", "requesttimeoutexception"}
_REJECTED = {"validationexception", "serializationexception"}
_MISCONFIGURED = {
    "accessdeniedexception",
    "resourcenotfoundexception",
    "unrecognizedclientexception",
    "invalidsignatureexception",
    "incompletesignature",
    "signaturedoesnotmatch",
    "missingauthenticationtokenexception",
    "missingauthenticationtoken",
    "expiredtokenexception",
    "invalidclienttokenid",
    "unknownoperationexception",
}

_MSG_RATE_LIMITED = "AWS Bedrock is busy right now. Please try again shortly."
_MSG_UNAVAILABLE = "AWS Bedrock is not available right now. Please try again shortly."
_MSG_UNREACHABLE = "AWS Bedrock could not be reached. Please try again shortly."
_MSG_INTERRUPTED = "The connection to AWS Bedrock was interrupted before the reply was complete."
_MSG_TIMEOUT = "AWS Bedrock took too long to answer."
_MSG_REJECTED = "AWS Bedrock refused this request as it stands."
_MSG_ACCESS = (
    "This model is not configured correctly: AWS Bedrock refused access to it or does not "
    "know it. Contact an administrator."
)
_MSG_NO_CREDENTIALS = (
    "This model is not configured correctly: no AWS credentials are available. "
    "Contact an administrator."
)
_MSG_NO_REGION = (
    "This model is not configured correctly: no AWS region is set. Contact an administrator."
)
_MSG_BAD_ENDPOINT = (
    "This model is not configured correctly: its AWS endpoint is invalid. Contact an administrator."
)
_MSG_PROTOCOL = "AWS Bedrock sent a reply that could not be read."

_sessions = threading.local()
# One client per configuration, shared by the process's threads (building one costs tens of
# milliseconds of CPU and a new connection pool).
_clients: dict[tuple[Any, ...], Any] = {}
_clients_lock = threading.Lock()
_CREDENTIAL_VARIABLES = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AWS_BEARER_TOKEN_BEDROCK",
)


def _session() -> Any:
    """This thread's boto3 session (boto3's default session is not safe to share between
    threads while clients are created; clients themselves are)."""
    session = getattr(_sessions, "session", None)
    if session is None:
        session = boto3.session.Session()
        _sessions.session = session
    return session


def _retry_after(headers: Mapping[str, Any]) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date), if there is one."""
    value = next((v for k, v in headers.items() if str(k).lower() == "retry-after"), None)
    if value is None:
        return None
    text = str(value).strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - time.time()
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


def _client_error(exc: botocore.exceptions.ClientError) -> ProviderError:
    response: Mapping[str, Any] = getattr(exc, "response", None) or {}
    error = response.get("Error") or {}
    code = str(error.get("Code") or "").split(":")[0].split("#")[-1].lower()
    metadata = response.get("ResponseMetadata") or {}
    status = metadata.get("HTTPStatusCode")
    in_stream = isinstance(exc, botocore.exceptions.EventStreamError)
    if in_stream:
        status = None  # botocore sets 400 for every in-stream exception
    headers = metadata.get("HTTPHeaders") or {}

    if code in _RATE_LIMITED or (not code and status == 429):
        return ProviderRateLimited(_MSG_RATE_LIMITED, retry_after=_retry_after(headers))
    if code in _UNAVAILABLE:
        return ProviderUnavailable(_MSG_UNAVAILABLE)
    if code in _TIMED_OUT:
        return ProviderTimeout(_MSG_TIMEOUT)
    if code in _REJECTED:
        return ProviderRejected(_MSG_REJECTED)
    if code in _MISCONFIGURED:
        return ProviderMisconfigured(_MSG_ACCESS)
    if isinstance(status, int):
        if status == 429:
            return ProviderRateLimited(_MSG_RATE_LIMITED, retry_after=_retry_after(headers))
        if status == 408:
            return ProviderTimeout(_MSG_TIMEOUT)
        if status in (401, 403, 404):
            return ProviderMisconfigured(_MSG_ACCESS)
        if 400 <= status < 500:
            return ProviderRejected(_MSG_REJECTED)
    return ProviderUnavailable(_MSG_UNAVAILABLE)


def _provider_error(exc: Exception) -> ProviderError:
    """The contract's error for anything boto3, botocore or urllib3 raised."""
    if isinstance(exc, ProviderError):
        return exc
    if isinstance(exc, botocore.exceptions.ClientError):
        return _client_error(exc)
    if isinstance(
        exc,
        botocore.exceptions.NoCredentialsError
        | botocore.exceptions.PartialCredentialsError
        | botocore.exceptions.CredentialRetrievalError
        | botocore.exceptions.NoAuthTokenError
        | botocore.exceptions.TokenRetrievalError,
    ):
        return ProviderMisconfigured(_MSG_NO_CREDENTIALS)
    if isinstance(exc, botocore.exceptions.NoRegionError):
        return ProviderMisconfigured(_MSG_NO_REGION)
    if isinstance(exc, botocore.exceptions.ParamValidationError):
        return ProviderRejected(_MSG_REJECTED)
    # Timeouts first: botocore's ReadTimeoutError is also a connection error.
    if isinstance(
        exc,
        botocore.exceptions.ConnectTimeoutError
        | botocore.exceptions.ReadTimeoutError
        | urllib3.exceptions.TimeoutError
        | TimeoutError,
    ):
        return ProviderTimeout(_MSG_TIMEOUT)
    if isinstance(
        exc,
        botocore.exceptions.EndpointConnectionError
        | botocore.exceptions.ProxyConnectionError
        | botocore.exceptions.SSLError,
    ):
        return ProviderUnavailable(_MSG_UNREACHABLE)
    if isinstance(exc, botocore.eventstream.ParserError | botocore.parsers.ResponseParserError):
        return ProviderProtocolError(_MSG_PROTOCOL)
    if isinstance(
        exc,
        botocore.exceptions.ConnectionClosedError
        | botocore.exceptions.ResponseStreamingError
        | botocore.exceptions.IncompleteReadError
        | botocore.exceptions.HTTPClientError
        | botocore.exceptions.ConnectionError
        | urllib3.exceptions.HTTPError
        | ConnectionError,
    ):
        return ProviderUnavailable(_MSG_INTERRUPTED)
    if isinstance(exc, botocore.exceptions.BotoCoreError | OSError):
        return ProviderUnavailable(_MSG_UNAVAILABLE)
    logger.error("Unexpected error from the Bedrock client: %s", type(exc).__name__)
    return ProviderError("Something went wrong while talking to AWS Bedrock.", retryable=False)


def _log(exc: Exception, operation: str, model: str) -> None:
    """Log a failure for operators. Upstream text goes here, never to the user; request
    bodies go nowhere (a ParamValidationError's text can quote them, so only its type)."""
    if isinstance(exc, botocore.exceptions.ClientError):
        response: Mapping[str, Any] = getattr(exc, "response", None) or {}
        error = response.get("Error") or {}
        status = (response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
        detail = f"{error.get('Code')} (HTTP {status}): {error.get('Message')}"
    elif isinstance(exc, botocore.exceptions.ParamValidationError):
        detail = "the request did not pass the SDK's parameter validation"
    else:
        detail = str(exc)
    logger.warning("Bedrock %s for %s failed: %s: %s", operation, model, type(exc).__name__, detail)


def _content(message: ChatMessage) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    for result in message.tool_results:
        tool_result: dict[str, Any] = {
            "toolUseId": result.call_id,
            "content": [{"text": result.content}],
        }
        if result.is_error:
            tool_result["status"] = "error"
        blocks.append({"toolResult": tool_result})
    if message.content:
        blocks.append({"text": message.content})
    for call in message.tool_calls:
        blocks.append(
            {"toolUse": {"toolUseId": call.id, "name": call.name, "input": dict(call.arguments)}}
        )
    return blocks


def converse_arguments(request: ChatRequest) -> dict[str, Any]:
    """The keyword arguments of `converse` / `converse_stream` for `request`."""
    inference: dict[str, Any] = {"maxTokens": request.max_output_tokens}
    if request.temperature is not None:
        inference["temperature"] = request.temperature
    arguments: dict[str, Any] = {
        "modelId": request.model,
        "messages": [
            {"role": message.role, "content": _content(message)} for message in request.messages
        ],
        "inferenceConfig": inference,
    }
    if request.system_prompt:
        arguments["system"] = [{"text": request.system_prompt}]
    if request.tools:
        arguments["toolConfig"] = {
            "tools": [
                {
                    "toolSpec": {
                        "name": tool.name,
                        "description": tool.description,
                        "inputSchema": {"json": dict(tool.parameters)},
                    }
                }
                for tool in request.tools
            ]
        }
    return arguments


def _stop_reason(value: Any) -> StopReason:
    reason = _STOP_REASONS.get(str(value))
    if reason is None:
        logger.warning("Bedrock stop reason %r is not mapped; treating it as end_turn.", value)
        return StopReason.END_TURN
    return reason


def _usage(usage: Mapping[str, Any] | None) -> Usage | None:
    if not usage:
        return None
    cached = int(usage.get("cacheReadInputTokens") or 0)
    return Usage(
        input_tokens=int(usage.get("inputTokens") or 0) + cached,
        output_tokens=int(usage.get("outputTokens") or 0),
        cached_input_tokens=cached,
    )


def _tool_arguments(text: str) -> Mapping[str, Any]:
    if not text.strip():
        return {}
    try:
        arguments = json.loads(text)
    except ValueError:
        raise ProviderProtocolError(
            "AWS Bedrock sent a tool request whose arguments could not be read."
        ) from None
    if not isinstance(arguments, dict):
        raise ProviderProtocolError(
            "AWS Bedrock sent a tool request whose arguments could not be read."
        )
    return arguments


@dataclass(slots=True)
class _PendingToolUse:
    id: str
    name: str
    parts: list[str] = field(default_factory=list)


def _map_events(events: Iterable[Mapping[str, Any]]) -> Iterator[StreamEvent]:
    """ConverseStream's events → the contract's events; Finish last, after Usage."""
    tools: dict[int, _PendingToolUse] = {}
    stop: StopReason | None = None
    usage_sent = False
    for event in events:
        if "contentBlockDelta" in event:
            body = event["contentBlockDelta"]
            delta = body.get("delta") or {}
            if delta.get("text"):
                yield TextDelta(delta["text"])
            elif "toolUse" in delta:
                pending = tools.get(int(body.get("contentBlockIndex", 0)))
                if pending is None:
                    raise ProviderProtocolError(_MSG_PROTOCOL)
                pending.parts.append(str(delta["toolUse"].get("input") or ""))
        elif "contentBlockStart" in event:
            body = event["contentBlockStart"]
            start = (body.get("start") or {}).get("toolUse")
            if start is not None:
                tools[int(body.get("contentBlockIndex", 0))] = _PendingToolUse(
                    id=str(start.get("toolUseId") or ""), name=str(start.get("name") or "")
                )
        elif "contentBlockStop" in event:
            pending = tools.pop(int(event["contentBlockStop"].get("contentBlockIndex", 0)), None)
            if pending is not None:
                yield ToolCall(
                    id=pending.id,
                    name=pending.name,
                    arguments=_tool_arguments("".join(pending.parts)),
                )
        elif "messageStop" in event:
            stop = _stop_reason(event["messageStop"].get("stopReason"))
        elif "metadata" in event:
            usage = _usage(event["metadata"].get("usage"))
            if usage is not None and not usage_sent:
                usage_sent = True
                yield usage
    if stop is None:
        # The body ended cleanly but early (no messageStop): the reply is incomplete.
        logger.warning("Bedrock ConverseStream ended without messageStop.")
        raise ProviderUnavailable(_MSG_INTERRUPTED)
    yield Finish(stop)


class BedrockProvider(Provider):
    """AWS Bedrock's Converse API through boto3, with the SDK's retries off."""

    name = "bedrock"

    def _client(self) -> Any:
        """A bedrock-runtime client for this model.

        Raises ProviderMisconfigured when the region or endpoint cannot be used.
        """
        options = self.spec.options
        region = options.get("region") or settings.BEDROCK_REGION or None
        endpoint_url = options.get("endpoint_url") or settings.BEDROCK_ENDPOINT_URL or None
        # Credentials are resolved when a client is built: changed ones need a new client.
        credentials = tuple(os.environ.get(name, "") for name in _CREDENTIAL_VARIABLES)
        key = (region, endpoint_url, self.timeouts.connect, self.timeouts.read, credentials)
        with _clients_lock:
            client = _clients.get(key)
        if client is not None:
            return client
        config = botocore.config.Config(
            connect_timeout=self.timeouts.connect,
            read_timeout=self.timeouts.read,
            retries={"total_max_attempts": 1, "mode": "standard"},
            # One client serves every concurrent reply of the process (boto3 clients are
            # thread-safe); botocore's default pool of 10 would queue the eleventh stream.
            max_pool_connections=settings.BEDROCK_MAX_POOL_CONNECTIONS,
        )
        try:
            client = _session().client(
                "bedrock-runtime", region_name=region, endpoint_url=endpoint_url, config=config
            )
        except botocore.exceptions.NoRegionError as exc:
            _log(exc, "client setup", self.spec.key)
            raise ProviderMisconfigured(_MSG_NO_REGION) from exc
        except (botocore.exceptions.BotoCoreError, ValueError) as exc:
            _log(exc, "client setup", self.spec.key)
            raise ProviderMisconfigured(_MSG_BAD_ENDPOINT) from exc
        with _clients_lock:
            if len(_clients) >= 32:
                _clients.pop(next(iter(_clients)))
            return _clients.setdefault(key, client)

    def stream(self, request: ChatRequest) -> Generator[StreamEvent, None, None]:
        """Stream the reply with ConverseStream: TextDelta and ToolCall events in order,
        then Usage (when Bedrock reports it), then Finish.

        Raises ProviderRateLimited (throttling; `retry_after` from a Retry-After header),
        ProviderUnavailable (5xx, unreachable, connection dropped, stream ended early),
        ProviderTimeout (connect or read timeout), ProviderRejected (validation),
        ProviderMisconfigured (credentials, region, access, unknown model),
        ProviderProtocolError (a malformed event). Closing the generator closes the stream.
        """
        client = self._client()
        try:
            response = client.converse_stream(**converse_arguments(request))
        except Exception as exc:
            _log(exc, "ConverseStream", self.spec.key)
            raise _provider_error(exc) from exc
        event_stream = response["stream"]
        try:
            yield from _map_events(event_stream)
        except ProviderError:
            raise
        except Exception as exc:
            _log(exc, "ConverseStream (streaming)", self.spec.key)
            raise _provider_error(exc) from exc
        finally:
            event_stream.close()

    def complete(self, request: ChatRequest) -> tuple[str, Usage | None, StopReason]:
        """Ask with Converse (no streaming): the reply's text, its usage and stop reason.

        Tool-use blocks of the reply are not returned (only `StopReason.TOOL_USE` says so).
        Raises the same ProviderError subclasses as `stream()`.
        """
        client = self._client()
        try:
            response = client.converse(**converse_arguments(request))
        except Exception as exc:
            _log(exc, "Converse", self.spec.key)
            raise _provider_error(exc) from exc
        try:
            content = response["output"]["message"]["content"]
            text = "".join(block["text"] for block in content if "text" in block)
            return text, _usage(response.get("usage")), _stop_reason(response.get("stopReason"))
        except (KeyError, TypeError) as exc:
            raise ProviderProtocolError(_MSG_PROTOCOL) from exc
