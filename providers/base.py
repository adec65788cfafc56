"""The contract every model provider implements.

A provider turns a `ChatRequest` into a stream of typed events:

* `TextDelta` — a piece of the reply's text, in order;
* `ToolCall` — the model asks for a tool to be run (then `Finish(TOOL_USE)`);
* `StateUpdate` — provider-side state to keep on our Conversation (e.g. an OpenAI
  conversation id), given back in the next request's `state`;
* `Usage` — token counts, at most once, usually near the end;
* `Finish` — the last event, with the reason the model stopped.

and raises `ProviderError` subclasses, each saying whether a retry may help (`retryable`).
Providers do not retry, time out or fail over themselves: that lives around this contract,
in one place, so that attempts never multiply. See docs/providers.md ("Adding a provider").
"""

from __future__ import annotations

import abc
import enum
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """A tool offered to the model: its name, what it does, and a JSON schema of its input."""

    name: str
    description: str
    parameters: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class ToolCall:
    """The model asks for `name` to be run with `arguments`. `id` pairs it with its result."""

    id: str
    name: str
    arguments: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class ToolResult:
    """What a tool returned (or why it failed), sent back to the model as data."""

    call_id: str
    name: str
    content: str
    is_error: bool = False


@dataclass(frozen=True, slots=True)
class ChatMessage:
    """One turn. An assistant turn may carry `tool_calls`; the user turn that follows it
    then carries their `tool_results` (and usually no text)."""

    role: Literal["user", "assistant"]
    content: str
    tool_calls: tuple[ToolCall, ...] = ()
    tool_results: tuple[ToolResult, ...] = ()


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """What to ask a model. `messages` is oldest first and ends with the user's turn
    (text, or the results of the tools the model asked for)."""

    model: str  # the provider's own model id
    system_prompt: str
    messages: Sequence[ChatMessage]
    max_output_tokens: int
    temperature: float | None = None
    tools: Sequence[ToolSpec] = ()
    # Provider-side state from earlier StateUpdate events of this conversation.
    state: Mapping[str, Any] = field(default_factory=dict)


class StopReason(enum.StrEnum):
    END_TURN = "end_turn"
    MAX_TOKENS = "max_tokens"
    STOP_SEQUENCE = "stop_sequence"
    CONTENT_FILTERED = "content_filtered"
    TOOL_USE = "tool_use"


@dataclass(frozen=True, slots=True)
class TextDelta:
    text: str


@dataclass(frozen=True, slots=True)
class Usage:
    """Tokens one provider call consumed. `input_tokens` counts every input token, those read
    from a prompt cache included; `cached_input_tokens` is that cached part (priced apart)."""

    input_tokens: int
    output_tokens: int
    cached_input_tokens: int = 0


@dataclass(frozen=True, slots=True)
class Finish:
    stop_reason: StopReason


@dataclass(frozen=True, slots=True)
class StateUpdate:
    """Provider-side state to store with the conversation and pass back in `ChatRequest.state`."""

    state: Mapping[str, Any]


StreamEvent = TextDelta | ToolCall | StateUpdate | Usage | Finish


class ProviderError(Exception):
    """A provider call failed. `retryable` says whether trying again may help.

    The message is shown to the user, so it must be plain language and must never carry
    credentials, request bodies or upstream stack traces.
    """

    code = "provider_error"

    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


class ProviderUnavailable(ProviderError):
    """The service could not be reached, timed out or answered 5xx. Retrying may help."""

    code = "provider_unavailable"

    def __init__(self, message: str = "The AI service is not reachable right now.") -> None:
        super().__init__(message, retryable=True)


class ProviderRateLimited(ProviderError):
    """The service asked us to slow down. `retry_after` is in seconds, when it said."""

    code = "provider_rate_limited"

    def __init__(
        self,
        message: str = "The AI service is busy. Please try again shortly.",
        *,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, retryable=True)
        self.retry_after = retry_after


class ProviderRejected(ProviderError):
    """The request was refused as it stands (bad input, too long, filtered). Permanent."""

    code = "provider_rejected"

    def __init__(self, message: str = "The AI service refused this request.") -> None:
        super().__init__(message, retryable=False)


class ProviderMisconfigured(ProviderError):
    """Credentials, model id or endpoint are wrong. Permanent until an administrator acts."""

    code = "provider_misconfigured"

    def __init__(
        self, message: str = "This model is not configured correctly. Contact an administrator."
    ) -> None:
        super().__init__(message, retryable=False)


class ProviderProtocolError(ProviderError):
    """The service answered with something we could not read (a malformed event)."""

    code = "provider_protocol_error"

    def __init__(
        self, message: str = "The AI service sent a reply that could not be read."
    ) -> None:
        super().__init__(message, retryable=True)


class ProviderTimeout(ProviderError):
    """No answer, or no next piece of the answer, in time. Retrying may help."""

    code = "provider_timeout"

    def __init__(self, message: str = "The AI service took too long to answer.") -> None:
        super().__init__(message, retryable=True)


@dataclass(frozen=True, slots=True)
class ProviderTimeouts:
    """Network timeouts, in seconds, for the provider's HTTP client.

    `read` bounds any single wait for bytes. The resilience layer enforces the finer
    first-token, idle and total limits around the stream; this is the backstop that
    releases a connection the layer has given up on.
    """

    connect: float = 5.0
    read: float = 60.0


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """A model users can pick: our key, its label, and how to reach it."""

    key: str
    display_name: str
    provider: str
    provider_model_id: str
    is_demo: bool = False
    options: Mapping[str, Any] = field(default_factory=dict)
    context_window: int = 8192
    max_output_tokens: int = 1024
    fallback: str | None = None  # key of the model that answers when this one cannot
    description: str = ""  # one sentence for the model picker


class Provider(abc.ABC):
    """One provider (a service and its SDK). Instances are cheap and used for one call."""

    #: The name the model catalogue uses for this provider.
    name: str
    #: Whether its models can be offered tools (ChatRequest.tools) and ask for them.
    supports_tools: bool = True

    def __init__(self, spec: ModelSpec, *, timeouts: ProviderTimeouts | None = None) -> None:
        self.spec = spec
        self.timeouts = timeouts or ProviderTimeouts()

    @abc.abstractmethod
    def stream(self, request: ChatRequest) -> Iterator[StreamEvent]:
        """Yield the reply as events, ending with exactly one `Finish`.

        Raises ProviderError (or a subclass) on failure; nothing else may escape.
        Closing the iterator early (the user pressed stop) must release the connection.
        The SDK's own retries must be off: retrying belongs to the resilience layer.
        """
