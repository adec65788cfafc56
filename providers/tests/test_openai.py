"""The OpenAI-family providers against the loopback OpenAI double (the real SDK, real HTTP).

The double (`providers.testing.openai_server`) is the outside world here: nothing else is
mocked. These tests need no database.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Generator, Iterator
from email.utils import formatdate
from typing import Any

import openai
import pytest
from pytest_django.fixtures import Settings as SettingsWrapper

from providers.base import (
    ChatMessage,
    ChatRequest,
    Finish,
    ModelSpec,
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
    ToolResult,
    ToolSpec,
    Usage,
)
from providers.openai import (
    CONVERSATION_STATE_KEY,
    AzureOpenAIProvider,
    OpenAICompatibleProvider,
    OpenAIResponsesProvider,
    resolve_openai_driver,
)
from providers.testing.openai_server import Fault, OpenAIDouble, pieces_of, reply_for

OPENAI_KEY = "sk-test-openai-secret"
AZURE_KEY = "azure-test-secret"
COMPATIBLE_KEY = "compatible-test-secret"
API_VERSION = "2025-04-01-preview"
SYSTEM = "You are a careful assistant."
MODEL = "gpt-test"

PROVIDER_CLASSES: dict[str, type[Provider]] = {
    "openai": OpenAIResponsesProvider,
    "azure-openai": AzureOpenAIProvider,
    "openai-compatible": OpenAICompatibleProvider,
}
ALL = list(PROVIDER_CLASSES)
RESPONSES = ["openai", "azure-openai"]
KEYS = {"openai": OPENAI_KEY, "azure-openai": AZURE_KEY, "openai-compatible": COMPATIBLE_KEY}

LOOKUP = ToolSpec(
    name="lookup",
    description="Look up the weather for a place.",
    parameters={
        "type": "object",
        "properties": {"place": {"type": "string"}, "days": {"type": "integer"}},
        "required": ["place"],
    },
)


@pytest.fixture
def double(settings: SettingsWrapper) -> Iterator[OpenAIDouble]:
    """The double, with every OpenAI-family setting pointing at it."""
    with OpenAIDouble() as server:
        settings.OPENAI_API_KEY = OPENAI_KEY
        settings.OPENAI_BASE_URL = server.base_url
        settings.OPENAI_ORGANIZATION = ""
        settings.OPENAI_DRIVER = "openai"
        settings.AZURE_OPENAI_ENDPOINT = server.azure_endpoint
        settings.AZURE_OPENAI_API_KEY = AZURE_KEY
        settings.AZURE_OPENAI_API_VERSION = API_VERSION
        settings.OPENAI_COMPATIBLE_BASE_URL = server.base_url
        settings.OPENAI_COMPATIBLE_API_KEY = COMPATIBLE_KEY
        yield server


def provider(name: str, *, read_timeout: float = 5.0, **options: Any) -> Provider:
    spec = ModelSpec(
        key=f"{name}-test",
        display_name="Test model",
        provider=name,
        provider_model_id=MODEL,
        options=options,
    )
    return PROVIDER_CLASSES[name](spec, timeouts=ProviderTimeouts(connect=2.0, read=read_timeout))


def chat(
    *messages: ChatMessage,
    max_tokens: int = 1000,
    temperature: float | None = None,
    tools: tuple[ToolSpec, ...] = (),
    state: dict[str, Any] | None = None,
    system: str = SYSTEM,
) -> ChatRequest:
    return ChatRequest(
        model=MODEL,
        system_prompt=system,
        messages=list(messages),
        max_output_tokens=max_tokens,
        temperature=temperature,
        tools=tools,
        state=state or {},
    )


def user(text: str = "", results: tuple[ToolResult, ...] = ()) -> ChatMessage:
    return ChatMessage("user", text, tool_results=results)


def assistant(text: str = "", calls: tuple[ToolCall, ...] = ()) -> ChatMessage:
    return ChatMessage("assistant", text, tool_calls=calls)


def text_of(events: list[StreamEvent]) -> str:
    return "".join(event.text for event in events if isinstance(event, TextDelta))


def run_until_error(
    target: Provider, request: ChatRequest
) -> tuple[list[StreamEvent], ProviderError]:
    """The events yielded before the call failed, and the error. Fails if it did not fail."""
    events: list[StreamEvent] = []
    with pytest.raises(ProviderError) as caught:
        for event in target.stream(request):  # keep what came before the error
            events.append(event)
    return events, caught.value


def body_of(double: OpenAIDouble, index: int = -1) -> dict[str, Any]:
    body = double.model_requests()[index].body
    assert isinstance(body, dict)
    return body


# --- streaming, usage and stop reasons ------------------------------------------------------------


@pytest.mark.parametrize("name", ALL)
def test_the_reply_streams_whole_and_in_order_then_usage_then_finish(
    name: str, double: OpenAIDouble
) -> None:
    double.input_tokens = 321
    double.cached_tokens = 17

    events = list(provider(name).stream(chat(user("Hello there"))))

    expected = reply_for("Hello there")
    deltas = [event for event in events if isinstance(event, TextDelta)]
    assert [delta.text for delta in deltas] == pieces_of(expected)
    assert len(deltas) > 10
    assert events[: len(deltas)] == deltas  # text first, nothing in between
    assert events[len(deltas) :] == [
        Usage(input_tokens=321, output_tokens=len(deltas), cached_input_tokens=17),
        Finish(StopReason.END_TURN),
    ]
    assert len(double.model_requests()) == 1
    assert double.model_requests()[0].api_key == KEYS[name]


@pytest.mark.parametrize("name", ALL)
def test_the_output_token_limit_stops_the_reply_with_max_tokens(
    name: str, double: OpenAIDouble
) -> None:
    events = list(provider(name).stream(chat(user("Tell me a lot"), max_tokens=5)))

    assert text_of(events) == "".join(pieces_of(reply_for("Tell me a lot"))[:5])
    assert events[-1] == Finish(StopReason.MAX_TOKENS)
    assert isinstance(events[-2], Usage) and events[-2].output_tokens == 5


@pytest.mark.parametrize("name", ALL)
def test_a_filtered_reply_stops_with_content_filtered(name: str, double: OpenAIDouble) -> None:
    double.inject(Fault.FILTERED_REPLY, after_deltas=3)

    events = list(provider(name).stream(chat(user("Something borderline"))))

    assert text_of(events) == "".join(pieces_of(reply_for("Something borderline"))[:3])
    assert events[-1] == Finish(StopReason.CONTENT_FILTERED)


# --- what the service receives --------------------------------------------------------------------


@pytest.mark.parametrize("name", RESPONSES)
def test_responses_request_carries_instructions_limits_tools_and_history(
    name: str, double: OpenAIDouble
) -> None:
    request = chat(
        user("first question"),
        assistant("first answer"),
        user("second question"),
        max_tokens=256,
        temperature=0.3,
        tools=(LOOKUP,),
    )

    events = list(provider(name).stream(request))

    assert text_of(events) == reply_for("second question")
    body = body_of(double)
    assert body["model"] == MODEL
    assert body["stream"] is True
    assert body["instructions"] == SYSTEM
    assert body["max_output_tokens"] == 256
    assert body["temperature"] == 0.3
    assert body["tools"] == [
        {
            "type": "function",
            "name": "lookup",
            "description": LOOKUP.description,
            "parameters": dict(LOOKUP.parameters),
            "strict": False,
        }
    ]
    assert body["input"] == [
        {"type": "message", "role": "user", "content": "first question"},
        {"type": "message", "role": "assistant", "content": "first answer"},
        {"type": "message", "role": "user", "content": "second question"},
    ]
    assert body["store"] is False
    assert "conversation" not in body


def test_chat_completions_request_carries_system_prompt_limits_tools_and_history(
    double: OpenAIDouble,
) -> None:
    request = chat(
        user("first question"),
        assistant("first answer"),
        user("second question"),
        max_tokens=256,
        temperature=0.3,
        tools=(LOOKUP,),
    )

    events = list(provider("openai-compatible").stream(request))

    assert text_of(events) == reply_for("second question")
    record = double.model_requests()[0]
    assert record.path == "/v1/chat/completions"
    body = body_of(double)
    assert body["model"] == MODEL
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert body["max_tokens"] == 256
    assert body["temperature"] == 0.3
    assert body["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "lookup",
                "description": LOOKUP.description,
                "parameters": dict(LOOKUP.parameters),
            },
        }
    ]
    assert body["messages"] == [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": "first question"},
        {"role": "assistant", "content": "first answer"},
        {"role": "user", "content": "second question"},
    ]


@pytest.mark.parametrize("name", ALL)
def test_unset_temperature_and_no_tools_are_left_out(name: str, double: OpenAIDouble) -> None:
    list(provider(name).stream(chat(user("hi"))))

    body = body_of(double)
    assert "temperature" not in body
    assert "tools" not in body
    assert (body.get("max_output_tokens") or body.get("max_tokens")) == 1000


# --- tool calls -----------------------------------------------------------------------------------

ARGUMENTS = {"place": "Oslo", "days": 2}
CALL = ToolCall(id="call_abc123", name="lookup", arguments=ARGUMENTS)
RESULT = ToolResult(call_id="call_abc123", name="lookup", content="Sunny, 21 degrees")


@pytest.mark.parametrize("name", ALL)
def test_tool_call_round_trip(name: str, double: OpenAIDouble) -> None:
    double.script_tool_call("lookup", ARGUMENTS, call_id=CALL.id)
    target = provider(name)

    first = list(target.stream(chat(user("Weather in Oslo?"), tools=(LOOKUP,))))

    assert first[0] == CALL
    assert isinstance(first[1], Usage)
    assert first[2:] == [Finish(StopReason.TOOL_USE)]

    second = list(
        target.stream(
            chat(
                user("Weather in Oslo?"),
                assistant("", (CALL,)),
                user("", (RESULT,)),
                tools=(LOOKUP,),
            )
        )
    )

    assert text_of(second) == reply_for(RESULT.content)
    assert second[-1] == Finish(StopReason.END_TURN)
    body = body_of(double)
    if name == "openai-compatible":
        messages = body["messages"]
        assert messages[:2] == [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": "Weather in Oslo?"},
        ]
        call_message = messages[2]
        assert call_message["role"] == "assistant"
        assert call_message["content"] is None
        assert len(call_message["tool_calls"]) == 1
        sent_call = call_message["tool_calls"][0]
        assert sent_call["id"] == CALL.id
        assert sent_call["type"] == "function"
        assert sent_call["function"]["name"] == "lookup"
        assert json.loads(sent_call["function"]["arguments"]) == ARGUMENTS
        assert messages[3:] == [
            {"role": "tool", "tool_call_id": CALL.id, "content": RESULT.content}
        ]
    else:
        items = body["input"]
        assert items[0] == {"type": "message", "role": "user", "content": "Weather in Oslo?"}
        assert {key: items[1][key] for key in ("type", "call_id", "name")} == {
            "type": "function_call",
            "call_id": CALL.id,
            "name": "lookup",
        }
        assert json.loads(items[1]["arguments"]) == ARGUMENTS
        assert items[2:] == [
            {"type": "function_call_output", "call_id": CALL.id, "output": RESULT.content}
        ]


@pytest.mark.parametrize("name", ALL)
def test_a_failed_tool_result_is_marked_as_an_error(name: str, double: OpenAIDouble) -> None:
    failed = ToolResult(call_id=CALL.id, name="lookup", content="timed out", is_error=True)

    list(
        provider(name).stream(
            chat(user("Weather?"), assistant("", (CALL,)), user("", (failed,)), tools=(LOOKUP,))
        )
    )

    body = body_of(double)
    sent = (
        body["messages"][-1]["content"]
        if name == "openai-compatible"
        else body["input"][-1]["output"]
    )
    assert sent == "Error: timed out"


# --- OpenAI context: stateless and server-side ----------------------------------------------------


def test_stateless_context_sends_the_whole_window_every_turn(double: OpenAIDouble) -> None:
    target = provider("openai")  # "stateless" is the default
    first = list(target.stream(chat(user("one"))))
    reply = text_of(first)

    second = list(target.stream(chat(user("one"), assistant(reply), user("two"))))

    assert text_of(second) == reply_for("two")
    assert not any(isinstance(event, StateUpdate) for event in first + second)
    assert body_of(double, 1)["input"] == [
        {"type": "message", "role": "user", "content": "one"},
        {"type": "message", "role": "assistant", "content": reply},
        {"type": "message", "role": "user", "content": "two"},
    ]
    assert all("conversation" not in r.body for r in double.model_requests())
    assert double.conversations == {}
    assert [r.endpoint for r in double.requests] == ["responses", "responses"]


def test_server_context_creates_a_conversation_then_sends_only_new_input(
    double: OpenAIDouble,
) -> None:
    target = provider("openai", context="server")
    window = [user("zero"), assistant("an earlier answer"), user("one")]

    first = list(target.stream(chat(*window)))

    assert isinstance(first[0], StateUpdate)
    conversation_id = first[0].state[CONVERSATION_STATE_KEY]
    assert conversation_id.startswith("conv_")
    assert [r.endpoint for r in double.requests] == ["conversations", "responses"]
    first_body = body_of(double, 0)
    assert first_body["conversation"] == conversation_id
    assert first_body["store"] is True
    assert len(first_body["input"]) == 3  # the whole window, the first time
    reply = text_of(first)
    assert reply == reply_for("one")
    stored = double.conversations[conversation_id]
    assert [item.get("role") for item in stored] == ["user", "assistant", "user", "assistant"]
    assert stored[-1]["content"][0]["text"] == reply

    second = list(
        target.stream(
            chat(
                *window,
                assistant(reply),
                user("two"),
                state={CONVERSATION_STATE_KEY: conversation_id},
            )
        )
    )

    assert not any(isinstance(event, StateUpdate) for event in second)
    assert text_of(second) == reply_for("two")
    second_body = body_of(double, 1)
    assert second_body["conversation"] == conversation_id
    assert second_body["input"] == [{"type": "message", "role": "user", "content": "two"}]
    assert [r.endpoint for r in double.requests] == ["conversations", "responses", "responses"]
    assert list(double.conversations) == [conversation_id]
    assert len(double.conversations[conversation_id]) == 6


def test_server_context_sends_only_the_tool_results_after_a_tool_call(
    double: OpenAIDouble,
) -> None:
    target = provider("openai", context="server")
    double.script_tool_call("lookup", ARGUMENTS, call_id=CALL.id)
    first = list(target.stream(chat(user("Weather in Oslo?"), tools=(LOOKUP,))))
    assert isinstance(first[0], StateUpdate)
    assert first[1] == CALL
    state = dict(first[0].state)

    second = list(
        target.stream(
            chat(
                user("Weather in Oslo?"),
                assistant("", (CALL,)),
                user("", (RESULT,)),
                tools=(LOOKUP,),
                state=state,
            )
        )
    )

    assert text_of(second) == reply_for(RESULT.content)
    assert body_of(double)["input"] == [
        {"type": "function_call_output", "call_id": CALL.id, "output": RESULT.content}
    ]
    types = [item["type"] for item in double.conversations[state[CONVERSATION_STATE_KEY]]]
    assert types == ["message", "function_call", "function_call_output", "message"]


def test_a_failed_conversation_create_is_mapped_and_sends_no_response_request(
    double: OpenAIDouble,
) -> None:
    double.inject(Fault.UNAVAILABLE, endpoint="conversations")

    events, error = run_until_error(provider("openai", context="server"), chat(user("hi")))

    assert events == []
    assert isinstance(error, ProviderUnavailable)
    assert [r.endpoint for r in double.requests] == ["conversations"]


def test_an_unknown_context_option_is_a_misconfiguration(double: OpenAIDouble) -> None:
    with pytest.raises(ProviderMisconfigured):
        list(provider("openai", context="threads").stream(chat(user("hi"))))
    assert double.requests == []


# --- Azure ----------------------------------------------------------------------------------------


def test_azure_sends_the_api_key_header_to_the_azure_path_with_the_api_version(
    double: OpenAIDouble,
) -> None:
    events = list(provider("azure-openai", context="server").stream(chat(user("hi"))))

    assert text_of(events) == reply_for("hi")
    conversations, responses = double.requests
    for record in (conversations, responses):
        assert record.query == {"api-version": API_VERSION}
        assert record.headers["api-key"] == AZURE_KEY
        assert "authorization" not in record.headers
    assert conversations.path == "/openai/conversations"
    assert responses.path == "/openai/responses"
    assert isinstance(responses.body, dict) and responses.body["model"] == MODEL  # deployment


@pytest.mark.parametrize("missing", ["AZURE_OPENAI_ENDPOINT", "AZURE_OPENAI_API_KEY"])
def test_azure_without_endpoint_or_key_is_misconfigured_before_any_request(
    missing: str, double: OpenAIDouble, settings: SettingsWrapper
) -> None:
    setattr(settings, missing, "")

    with pytest.raises(ProviderMisconfigured) as caught:
        list(provider("azure-openai").stream(chat(user("hi"))))

    assert caught.value.retryable is False
    assert double.requests == []


def test_openai_without_an_api_key_is_misconfigured_before_any_request(
    double: OpenAIDouble, settings: SettingsWrapper
) -> None:
    settings.OPENAI_API_KEY = ""

    with pytest.raises(ProviderMisconfigured):
        list(provider("openai").stream(chat(user("hi"))))

    assert double.requests == []


def test_the_double_serves_azure_deployment_chat_completions(double: OpenAIDouble) -> None:
    client = openai.AzureOpenAI(
        azure_endpoint=double.azure_endpoint, api_key=AZURE_KEY, api_version=API_VERSION
    )
    chunks = client.chat.completions.create(
        model="my-deployment", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)

    assert text == reply_for("hi")
    record = double.model_requests()[0]
    assert record.path == "/openai/deployments/my-deployment/chat/completions"
    assert record.deployment == "my-deployment"
    assert record.api_key == AZURE_KEY


# --- OpenAI-compatible configuration --------------------------------------------------------------


def test_compatible_without_a_base_url_is_misconfigured_before_any_request(
    double: OpenAIDouble, settings: SettingsWrapper
) -> None:
    settings.OPENAI_COMPATIBLE_BASE_URL = ""

    with pytest.raises(ProviderMisconfigured):
        list(provider("openai-compatible").stream(chat(user("hi"))))

    assert double.requests == []


def test_compatible_model_may_name_its_own_base_url(
    double: OpenAIDouble, settings: SettingsWrapper
) -> None:
    settings.OPENAI_COMPATIBLE_BASE_URL = ""

    events = list(provider("openai-compatible", base_url=double.base_url).stream(chat(user("hi"))))

    assert text_of(events) == reply_for("hi")


def test_compatible_replies_one_after_another_share_one_connection(
    double: OpenAIDouble, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The stream is read to its end after [DONE], so the connection goes back to the pool:
    # the next reply sends its request at once instead of opening a new TCP (and TLS)
    # connection first.
    opened: list[object] = []
    create_connection = socket.create_connection

    def counting(*args: Any, **kwargs: Any) -> socket.socket:
        opened.append(args[0])
        return create_connection(*args, **kwargs)

    monkeypatch.setattr(socket, "create_connection", counting)
    compatible = provider("openai-compatible")

    first = list(compatible.stream(chat(user("first"))))
    second = list(compatible.stream(chat(user("second"))))

    assert text_of(first) == reply_for("first")
    assert text_of(second) == reply_for("second")
    assert isinstance(second[-1], Finish)
    assert len(opened) <= 1  # the first reply's, unless an earlier test left one open
    assert [r.outcome for r in double.model_requests()] == ["completed", "completed"]


def test_compatible_sends_a_placeholder_key_when_none_is_configured(
    double: OpenAIDouble, settings: SettingsWrapper
) -> None:
    settings.OPENAI_COMPATIBLE_API_KEY = ""

    list(provider("openai-compatible").stream(chat(user("hi"))))

    assert double.model_requests()[0].api_key == "not-needed"


def test_compatible_reads_the_key_from_the_environment_variable_the_model_names(
    double: OpenAIDouble, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_LOCAL_LLM_KEY", "key-from-environment")

    list(provider("openai-compatible", api_key_env="TEST_LOCAL_LLM_KEY").stream(chat(user("hi"))))

    assert double.model_requests()[0].api_key == "key-from-environment"


# --- OPENAI_DRIVER --------------------------------------------------------------------------------


def test_openai_driver_azure_sends_openai_models_to_azure(settings: SettingsWrapper) -> None:
    settings.OPENAI_DRIVER = "azure-openai"

    assert resolve_openai_driver("openai") == "azure-openai"
    assert resolve_openai_driver("openai-compatible") == "openai-compatible"
    assert resolve_openai_driver("demo") == "demo"


def test_openai_driver_openai_keeps_openai(settings: SettingsWrapper) -> None:
    settings.OPENAI_DRIVER = "openai"

    assert resolve_openai_driver("openai") == "openai"
    assert resolve_openai_driver("azure-openai") == "azure-openai"


# --- faults ---------------------------------------------------------------------------------------

RETRYABLE_FAULTS: list[tuple[Fault, dict[str, Any], type[ProviderError]]] = [
    (Fault.RATE_LIMITED, {"retry_after": "7"}, ProviderRateLimited),
    (Fault.SERVER_ERROR, {}, ProviderUnavailable),
    (Fault.UNAVAILABLE, {}, ProviderUnavailable),
    (Fault.DROP_CONNECTION, {"after_deltas": 3}, ProviderUnavailable),
    (Fault.STALL, {"stall_seconds": 3.0}, ProviderTimeout),
    (Fault.MALFORMED_EVENT, {"after_deltas": 2}, ProviderProtocolError),
    (Fault.STREAM_ERROR, {"after_deltas": 2}, ProviderUnavailable),
]


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize(
    ("fault", "options", "expected"),
    RETRYABLE_FAULTS,
    ids=[fault for fault, _, _ in RETRYABLE_FAULTS],
)
def test_each_fault_maps_to_a_retryable_error_after_exactly_one_attempt(
    name: str,
    fault: Fault,
    options: dict[str, Any],
    expected: type[ProviderError],
    double: OpenAIDouble,
) -> None:
    double.inject(fault, **options)

    read_timeout = 0.5 if fault is Fault.STALL else 5.0  # the stall outlasts a short read timeout
    events, error = run_until_error(provider(name, read_timeout=read_timeout), chat(user("hi")))

    assert type(error) is expected
    assert error.retryable is True
    assert len(double.model_requests()) == 1  # the SDK's retries are off
    message = str(error)
    assert KEYS[name] not in message
    assert "Rate limit reached" not in message and "overloaded" not in message
    if fault is Fault.RATE_LIMITED:
        assert isinstance(error, ProviderRateLimited) and error.retry_after == 7.0
    if fault in {Fault.DROP_CONNECTION, Fault.MALFORMED_EVENT, Fault.STREAM_ERROR}:
        # The failure came mid-stream: the first pieces had arrived, in order.
        assert text_of(events) == "".join(pieces_of(reply_for("hi"))[: options["after_deltas"]])
    else:
        assert events == []


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry_after": None, "retry_after_ms": "1500"}, 1.5),
        ({"retry_after": "2.5"}, 2.5),
        ({"retry_after": None}, None),
    ],
)
def test_retry_after_is_read_from_seconds_or_milliseconds(
    headers: dict[str, Any], expected: float | None, double: OpenAIDouble
) -> None:
    double.inject(Fault.RATE_LIMITED, **headers)

    _, error = run_until_error(provider("openai"), chat(user("hi")))

    assert isinstance(error, ProviderRateLimited)
    assert error.retry_after == expected


def test_retry_after_may_be_an_http_date(double: OpenAIDouble) -> None:
    double.inject(Fault.RATE_LIMITED, retry_after=formatdate(time.time() + 30, usegmt=True))

    _, error = run_until_error(provider("openai-compatible"), chat(user("hi")))

    assert isinstance(error, ProviderRateLimited)
    assert error.retry_after is not None and 27 <= error.retry_after <= 31


@pytest.mark.parametrize("name", ALL)
def test_a_wrong_api_key_is_a_misconfiguration(name: str, double: OpenAIDouble) -> None:
    double.api_key = "the-right-key"

    _, error = run_until_error(provider(name), chat(user("hi")))

    assert isinstance(error, ProviderMisconfigured)
    assert error.retryable is False
    assert KEYS[name] not in str(error) and "Incorrect API key" not in str(error)
    assert len(double.model_requests()) == 1


@pytest.mark.parametrize("name", ALL)
def test_a_filtered_prompt_is_rejected_with_a_plain_sentence(
    name: str, double: OpenAIDouble
) -> None:
    double.inject(Fault.CONTENT_FILTER)

    _, error = run_until_error(provider(name), chat(user("something filtered")))

    assert isinstance(error, ProviderRejected)
    assert error.retryable is False
    assert "content filter" in str(error)
    assert "management policy" not in str(error)


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("rate_limit_exceeded", ProviderRateLimited),
        ("server_error", ProviderUnavailable),
        ("context_length_exceeded", ProviderRejected),
    ],
)
def test_responses_error_events_are_mapped_by_code(
    code: str, expected: type[ProviderError], double: OpenAIDouble
) -> None:
    double.inject(Fault.ERROR_EVENT, error_code=code, after_deltas=1)

    events, error = run_until_error(provider("openai"), chat(user("hi")))

    assert type(error) is expected
    assert text_of(events) == pieces_of(reply_for("hi"))[0]


# --- stopping early -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ALL)
def test_closing_the_stream_early_releases_the_connection(name: str, double: OpenAIDouble) -> None:
    double.reply_words = 400
    double.tokens_per_second = 100
    stream = provider(name).stream(chat(user("a long answer please")))

    assert isinstance(stream, Generator)  # closable, so the user's "stop" can end it

    received = [next(stream) for _ in range(3)]
    stream.close()

    assert all(isinstance(event, TextDelta) for event in received)
    record = double.model_requests()[0]
    assert double.wait_for_outcome(record) == "client_disconnected"


# --- one client per configuration -----------------------------------------------------------------


@pytest.mark.parametrize("name", ALL)
def test_calls_share_one_client_per_configuration(
    name: str, double: OpenAIDouble, settings: SettingsWrapper
) -> None:
    """Every reply of a process uses the same client (its HTTP connection pool and TLS
    context); a new client per call cost CPU and a new connection for every reply."""
    first = provider(name)._client()  # type: ignore[attr-defined]
    assert provider(name)._client() is first  # type: ignore[attr-defined]
    for _ in range(2):  # the shared client stays usable call after call
        assert text_of(list(provider(name).stream(chat(user("Hello"))))) == reply_for("Hello")
    # A changed configuration (a rotated key) gets a client of its own.
    settings.OPENAI_API_KEY = settings.AZURE_OPENAI_API_KEY = "sk-rotated"
    settings.OPENAI_COMPATIBLE_API_KEY = "sk-rotated"
    assert provider(name)._client() is not first  # type: ignore[attr-defined]
