"""The AWS Bedrock provider against the loopback Bedrock double, through the real boto3.

Nothing is mocked: the double (providers/testing/bedrock_server.py) is the outside world,
speaking Bedrock's wire protocol on 127.0.0.1. No database is needed.
"""

from __future__ import annotations

import email.utils
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.eventstream import ChecksumMismatch, EventStreamBuffer
from pytest_django.fixtures import Settings as SettingsWrapper

import providers.bedrock as bedrock_module
from providers.base import (
    ChatMessage,
    ChatRequest,
    Finish,
    ModelSpec,
    ProviderError,
    ProviderMisconfigured,
    ProviderProtocolError,
    ProviderRateLimited,
    ProviderRejected,
    ProviderTimeout,
    ProviderTimeouts,
    ProviderUnavailable,
    StopReason,
    StreamEvent,
    TextDelta,
    ToolCall,
    ToolResult,
    ToolSpec,
    Usage,
)
from providers.bedrock import BedrockProvider
from providers.testing.bedrock_server import (
    BedrockServer,
    Fault,
    FaultKind,
    ToolScript,
    expected_reply,
    reply_pieces,
)
from providers.testing.eventstream import (
    corrupt,
    encode_message,
    event_message,
    exception_message,
)

ACCESS_KEY = "AKIDBEDROCKTEST"
SECRET_KEY = "bedrock-test-secret"
SESSION_TOKEN = "bedrock-test-session-token"
PROFILE_ARN = (
    "arn:aws:bedrock:us-east-1:123456789012:inference-profile/"
    "us.anthropic.claude-3-5-sonnet-20240620-v1:0"
)
SPEC = ModelSpec(
    key="claude", display_name="Claude", provider="bedrock", provider_model_id=PROFILE_ARN
)
FAST = ProviderTimeouts(connect=2.0, read=5.0)


@pytest.fixture(autouse=True)
def aws_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Test credentials in the environment; no profile, shared file or instance role."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.setenv("AWS_SESSION_TOKEN", SESSION_TOKEN)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    for name in (
        "AWS_PROFILE",
        "AWS_DEFAULT_PROFILE",
        "AWS_BEARER_TOKEN_BEDROCK",
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_BEDROCK_RUNTIME",
        "AWS_MAX_ATTEMPTS",
        "AWS_RETRY_MODE",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
    ):
        monkeypatch.delenv(name, raising=False)
    # A fresh boto3 session per test, so each test's environment is what the chain reads.
    monkeypatch.setattr(bedrock_module, "_sessions", threading.local())


@pytest.fixture
def bedrock(settings: SettingsWrapper) -> Iterator[BedrockServer]:
    with BedrockServer() as server:
        settings.BEDROCK_REGION = "us-east-1"
        settings.BEDROCK_ENDPOINT_URL = server.url
        yield server


def ask(
    text: str = "hello there",
    *,
    system_prompt: str = "Be brief.",
    max_tokens: int = 500,
    temperature: float | None = None,
    tools: tuple[ToolSpec, ...] = (),
    history: tuple[ChatMessage, ...] = (),
) -> ChatRequest:
    return ChatRequest(
        model=PROFILE_ARN,
        system_prompt=system_prompt,
        messages=[*history, ChatMessage("user", text)],
        max_output_tokens=max_tokens,
        temperature=temperature,
        tools=tools,
    )


def provider(timeouts: ProviderTimeouts = FAST, **options: Any) -> BedrockProvider:
    spec = ModelSpec(
        key=SPEC.key,
        display_name=SPEC.display_name,
        provider=SPEC.provider,
        provider_model_id=SPEC.provider_model_id,
        options=options,
    )
    return BedrockProvider(spec, timeouts=timeouts)


def run(request: ChatRequest, bedrock_provider: BedrockProvider | None = None) -> list[StreamEvent]:
    return list((bedrock_provider or provider()).stream(request))


def run_until_error(
    request: ChatRequest, bedrock_provider: BedrockProvider | None = None
) -> tuple[list[StreamEvent], ProviderError]:
    events: list[StreamEvent] = []
    with pytest.raises(ProviderError) as caught:
        for event in (bedrock_provider or provider()).stream(request):
            events.append(event)
    return events, caught.value


def text_of(events: list[StreamEvent]) -> str:
    return "".join(e.text for e in events if isinstance(e, TextDelta))


WEATHER = ToolSpec(
    name="weather",
    description="The weather forecast for a city.",
    parameters={"type": "object", "properties": {"city": {"type": "string"}}},
)


# --- streaming --------------------------------------------------------------------------


def test_a_streamed_reply_arrives_whole_and_in_order_with_usage_and_stop_reason(
    bedrock: BedrockServer,
) -> None:
    bedrock.reply_words = 40
    events = run(ask("hello there"))

    deltas = [e for e in events if isinstance(e, TextDelta)]
    expected = expected_reply("hello there", 40)
    assert [d.text for d in deltas] == reply_pieces(expected)
    assert text_of(events) == expected
    # Usage comes before Finish although Bedrock sends messageStop before metadata.
    assert events[-2] == Usage(input_tokens=2 + 2, output_tokens=40, cached_input_tokens=0)
    assert events[-1] == Finish(StopReason.END_TURN)
    assert len(events) == 42

    [received] = bedrock.requests
    assert received.operation == "ConverseStream"
    assert received.model_id == PROFILE_ARN
    authorization = received.headers["Authorization"]
    assert f"Credential={ACCESS_KEY}/" in authorization
    assert "/us-east-1/bedrock/aws4_request" in authorization
    assert received.headers["X-Amz-Security-Token"] == SESSION_TOKEN


def test_the_reply_follows_the_last_user_message(bedrock: BedrockServer) -> None:
    first = text_of(run(ask("alpha")))
    second = text_of(run(ask("beta")))
    assert first == expected_reply("alpha")
    assert second == expected_reply("beta")
    assert first != second


def test_cache_reads_are_reported_as_cached_input_tokens(bedrock: BedrockServer) -> None:
    bedrock.cache_read_tokens = 1234
    usage = [e for e in run(ask()) if isinstance(e, Usage)]
    # Bedrock's inputTokens leaves cache reads out; the contract counts them in.
    assert usage == [Usage(input_tokens=4 + 1234, output_tokens=12, cached_input_tokens=1234)]


def test_a_reply_cut_by_max_tokens_says_so(bedrock: BedrockServer) -> None:
    events = run(ask("hello there", max_tokens=5))
    assert text_of(events) == "".join(reply_pieces(expected_reply("hello there"))[:5])
    assert events[-1] == Finish(StopReason.MAX_TOKENS)


def test_the_request_carries_system_prompt_inference_config_tools_and_history(
    bedrock: BedrockServer,
) -> None:
    history = (
        ChatMessage("user", "What is the weather in Oslo and Bergen?"),
        ChatMessage(
            "assistant",
            "Let me check.",
            tool_calls=(
                ToolCall("tooluse_a", "weather", {"city": "Oslo"}),
                ToolCall("tooluse_b", "weather", {"city": "Bergen"}),
            ),
        ),
        ChatMessage(
            "user",
            "",
            tool_results=(
                ToolResult("tooluse_a", "weather", "12 °C and sunny"),
                ToolResult("tooluse_b", "weather", "The forecast service failed.", is_error=True),
            ),
        ),
        ChatMessage("assistant", "Oslo is sunny; Bergen is unknown."),
    )
    run(
        ask(
            "Thanks!",
            system_prompt="You are a helpful assistant.",
            max_tokens=321,
            temperature=0.25,
            tools=(WEATHER,),
            history=history,
        )
    )

    [received] = bedrock.requests
    body = received.body
    assert body["system"] == [{"text": "You are a helpful assistant."}]
    assert body["inferenceConfig"] == {"maxTokens": 321, "temperature": 0.25}
    assert body["toolConfig"] == {
        "tools": [
            {
                "toolSpec": {
                    "name": "weather",
                    "description": "The weather forecast for a city.",
                    "inputSchema": {"json": dict(WEATHER.parameters)},
                }
            }
        ]
    }
    assert body["messages"] == [
        {"role": "user", "content": [{"text": "What is the weather in Oslo and Bergen?"}]},
        {
            "role": "assistant",
            "content": [
                {"text": "Let me check."},
                {
                    "toolUse": {
                        "toolUseId": "tooluse_a",
                        "name": "weather",
                        "input": {"city": "Oslo"},
                    }
                },
                {
                    "toolUse": {
                        "toolUseId": "tooluse_b",
                        "name": "weather",
                        "input": {"city": "Bergen"},
                    }
                },
            ],
        },
        {
            "role": "user",
            "content": [
                {
                    "toolResult": {
                        "toolUseId": "tooluse_a",
                        "content": [{"text": "12 °C and sunny"}],
                    }
                },
                {
                    "toolResult": {
                        "toolUseId": "tooluse_b",
                        "content": [{"text": "The forecast service failed."}],
                        "status": "error",
                    }
                },
            ],
        },
        {"role": "assistant", "content": [{"text": "Oslo is sunny; Bergen is unknown."}]},
        {"role": "user", "content": [{"text": "Thanks!"}]},
    ]
    assert received.path.endswith("/converse-stream")


def test_optional_fields_are_left_out(bedrock: BedrockServer) -> None:
    run(ask("hi", system_prompt="", max_tokens=64, temperature=None))
    [received] = bedrock.requests
    assert received.body["inferenceConfig"] == {"maxTokens": 64}
    assert "system" not in received.body
    assert "toolConfig" not in received.body


def test_a_tool_use_reply_yields_the_call_with_parsed_arguments_then_finish(
    bedrock: BedrockServer,
) -> None:
    arguments = {"city": "Oslo", "days": 3, "units": {"temperature": "celsius"}}
    bedrock.tool_script = ToolScript(
        name="weather",
        input=arguments,
        tool_use_id="tooluse_xyz",
        text_before="Let me look that up.",
        input_chunk_size=5,
    )
    events = run(ask("Weather in Oslo?", tools=(WEATHER,)))

    assert text_of(events) == "Let me look that up."
    assert [e for e in events if not isinstance(e, TextDelta)] == [
        ToolCall(id="tooluse_xyz", name="weather", arguments=arguments),
        Usage(input_tokens=5, output_tokens=6, cached_input_tokens=0),
        Finish(StopReason.TOOL_USE),
    ]

    # The next turn carries the tool's result; the double then answers with text about it.
    follow_up = run(
        ChatRequest(
            model=PROFILE_ARN,
            system_prompt="Be brief.",
            messages=[
                ChatMessage("user", "Weather in Oslo?"),
                ChatMessage("assistant", "", tool_calls=(ToolCall("tooluse_xyz", "weather", {}),)),
                ChatMessage(
                    "user", "", tool_results=(ToolResult("tooluse_xyz", "weather", "Sunny."),)
                ),
            ],
            max_output_tokens=500,
            tools=(WEATHER,),
        )
    )
    assert text_of(follow_up) == expected_reply("Sunny.")
    assert follow_up[-1] == Finish(StopReason.END_TURN)
    # An assistant turn with no text is sent as its tool use only (Bedrock rejects blank text).
    assert bedrock.requests[-1].body["messages"][1] == {
        "role": "assistant",
        "content": [{"toolUse": {"toolUseId": "tooluse_xyz", "name": "weather", "input": {}}}],
    }


# --- errors -----------------------------------------------------------------------------

FAULT_CASES = [
    pytest.param(
        Fault(FaultKind.THROTTLED, retry_after="7"), ProviderRateLimited, True, 0, id="http-429"
    ),
    pytest.param(Fault(FaultKind.INTERNAL_ERROR), ProviderUnavailable, True, 0, id="http-500"),
    pytest.param(Fault(FaultKind.UNAVAILABLE), ProviderUnavailable, True, 0, id="http-503"),
    pytest.param(Fault(FaultKind.VALIDATION), ProviderRejected, False, 0, id="http-400"),
    pytest.param(Fault(FaultKind.ACCESS_DENIED), ProviderMisconfigured, False, 0, id="http-403"),
    pytest.param(
        Fault(FaultKind.STREAM_THROTTLED, after_events=3),
        ProviderRateLimited,
        True,
        2,
        id="in-stream-throttling",
    ),
    pytest.param(
        Fault(FaultKind.STREAM_UNAVAILABLE, after_events=3),
        ProviderUnavailable,
        True,
        2,
        id="in-stream-unavailable",
    ),
    pytest.param(
        Fault(FaultKind.DROP, after_events=4), ProviderUnavailable, True, 3, id="dropped-mid-stream"
    ),
    pytest.param(
        Fault(FaultKind.CUT, after_events=4), ProviderUnavailable, True, 3, id="ended-early"
    ),
    pytest.param(
        Fault(FaultKind.MALFORMED, after_events=4), ProviderProtocolError, True, 3, id="bad-crc"
    ),
]


@pytest.mark.parametrize(("fault", "error_type", "retryable", "deltas_before"), FAULT_CASES)
def test_each_fault_maps_to_the_contract_after_exactly_one_attempt(
    bedrock: BedrockServer,
    fault: Fault,
    error_type: type[ProviderError],
    retryable: bool,
    deltas_before: int,
) -> None:
    bedrock.inject(fault)
    events, error = run_until_error(ask("tell me a secret"))

    assert type(error) is error_type
    assert error.retryable is retryable
    # What arrived before the failure is the start of the reply, in order.
    assert [e for e in events if not isinstance(e, TextDelta)] == []
    assert text_of(events) == "".join(
        reply_pieces(expected_reply("tell me a secret"))[:deltas_before]
    )
    # The SDK's retries are off: one HTTP request reached the service.
    assert len(bedrock.requests) == 1
    # The message is for people: no upstream text, no credentials, no request content.
    message = str(error)
    for leak in ("Injected", "Exception", ACCESS_KEY, SECRET_KEY, "secret", "127.0.0.1"):
        assert leak not in message
    assert message.endswith(".")


def test_a_429_carries_retry_after_seconds(bedrock: BedrockServer) -> None:
    bedrock.inject(Fault(FaultKind.THROTTLED, retry_after="7"))
    _, error = run_until_error(ask())
    assert isinstance(error, ProviderRateLimited)
    assert error.retry_after == 7.0


def test_a_429_with_an_http_date_retry_after(bedrock: BedrockServer) -> None:
    later = email.utils.formatdate(time.time() + 30, usegmt=True)
    bedrock.inject(Fault(FaultKind.THROTTLED, retry_after=later))
    _, error = run_until_error(ask())
    assert isinstance(error, ProviderRateLimited)
    assert error.retry_after is not None and 25 <= error.retry_after <= 31


def test_a_429_without_retry_after_and_in_stream_throttling_have_no_retry_after(
    bedrock: BedrockServer,
) -> None:
    bedrock.inject(
        Fault(FaultKind.THROTTLED, retry_after=None),
        Fault(FaultKind.STREAM_THROTTLED, after_events=2),
    )
    for _ in range(2):
        _, error = run_until_error(ask())
        assert isinstance(error, ProviderRateLimited)
        assert error.retry_after is None


def test_retryable_failures_in_a_row_still_cost_one_request_per_call(
    bedrock: BedrockServer,
) -> None:
    bedrock.inject(*(Fault(FaultKind.UNAVAILABLE) for _ in range(3)))
    _, error = run_until_error(ask())
    assert isinstance(error, ProviderUnavailable)
    assert len(bedrock.requests) == 1
    assert len(bedrock.pending_faults) == 2


@pytest.mark.parametrize(
    "fault",
    [
        pytest.param(Fault(FaultKind.STALL, after_events=2, stall_seconds=3.0), id="stall"),
        pytest.param(
            Fault(FaultKind.STALL, after_events=2, stall_seconds=3.0, then_drop=True),
            id="stall-then-drop",
        ),
    ],
)
def test_a_stall_longer_than_the_read_timeout_times_out(
    bedrock: BedrockServer, fault: Fault
) -> None:
    bedrock.inject(fault)
    started = time.monotonic()
    events, error = run_until_error(ask("hello"), provider(ProviderTimeouts(connect=2, read=0.5)))
    assert isinstance(error, ProviderTimeout)
    assert error.retryable
    assert text_of(events) == reply_pieces(expected_reply("hello"))[0]
    assert time.monotonic() - started < 2.0
    assert len(bedrock.requests) == 1


def test_a_slow_first_token_beyond_the_read_timeout_times_out(bedrock: BedrockServer) -> None:
    bedrock.first_token_delay = 3.0
    started = time.monotonic()
    events, error = run_until_error(ask(), provider(ProviderTimeouts(connect=2, read=0.5)))
    assert isinstance(error, ProviderTimeout)
    assert events == []
    assert time.monotonic() - started < 2.0
    assert len(bedrock.requests) == 1


def test_a_stall_within_the_read_timeout_is_waited_out(bedrock: BedrockServer) -> None:
    bedrock.inject(Fault(FaultKind.STALL, after_events=2, stall_seconds=0.3))
    events = run(ask("hello"), provider(ProviderTimeouts(connect=2, read=2)))
    assert text_of(events) == expected_reply("hello")
    assert events[-1] == Finish(StopReason.END_TURN)


def test_tool_blocks_without_tools_are_rejected_by_bedrock(bedrock: BedrockServer) -> None:
    history = (
        ChatMessage("user", "Weather?"),
        ChatMessage("assistant", "", tool_calls=(ToolCall("t1", "weather", {}),)),
    )
    request = ChatRequest(
        model=PROFILE_ARN,
        system_prompt="",
        messages=[
            *history,
            ChatMessage("user", "", tool_results=(ToolResult("t1", "weather", "x"),)),
        ],
        max_output_tokens=100,
    )
    _, error = run_until_error(request)
    assert isinstance(error, ProviderRejected)
    assert not error.retryable
    assert "toolConfig" not in str(error)


def test_an_unreachable_endpoint_is_unavailable(settings: SettingsWrapper) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings.BEDROCK_REGION = "us-east-1"
    settings.BEDROCK_ENDPOINT_URL = f"http://127.0.0.1:{port}"
    _, error = run_until_error(ask())
    assert isinstance(error, ProviderUnavailable)
    assert error.retryable
    assert str(port) not in str(error)


def test_missing_credentials_are_a_configuration_problem(
    bedrock: BedrockServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name)
    _, error = run_until_error(ask())
    assert isinstance(error, ProviderMisconfigured)
    assert not error.retryable
    assert bedrock.requests == []


def test_a_missing_region_is_a_configuration_problem(
    bedrock: BedrockServer, settings: SettingsWrapper, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings.BEDROCK_REGION = ""
    monkeypatch.delenv("AWS_REGION", raising=False)
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    _, error = run_until_error(ask())
    assert isinstance(error, ProviderMisconfigured)
    assert "region" in str(error)
    assert bedrock.requests == []


def test_a_model_may_name_its_own_endpoint_and_region(bedrock: BedrockServer) -> None:
    with BedrockServer(reply_text="From the other endpoint.") as other:
        events = run(ask(), provider(endpoint_url=other.url, region="eu-west-1"))
        assert text_of(events) == "From the other endpoint."
        [received] = other.requests
        assert "/eu-west-1/bedrock/aws4_request" in received.headers["Authorization"]
    assert bedrock.requests == []


# --- early close --------------------------------------------------------------------------


def test_closing_the_stream_after_the_first_delta_releases_the_connection(
    bedrock: BedrockServer,
) -> None:
    bedrock.reply_words = 400
    bedrock.tokens_per_second = 100  # four seconds of reply, unless the client goes away
    stream = provider().stream(ask())
    first = next(stream)
    assert isinstance(first, TextDelta)

    started = time.monotonic()
    stream.close()  # what the chat does when the user presses stop; nothing may leak
    assert bedrock.wait_for_disconnect(timeout=2.0)
    assert time.monotonic() - started < 2.0

    # The provider still works afterwards.
    bedrock.reply_words = 3
    bedrock.tokens_per_second = None
    assert text_of(run(ask("again"))) == expected_reply("again", 3)


# --- Converse (not streaming) -----------------------------------------------------------


def test_complete_uses_converse(bedrock: BedrockServer) -> None:
    bedrock.cache_read_tokens = 9
    text, usage, stop = provider().complete(ask("hello there", temperature=0.5))
    assert text == expected_reply("hello there")
    assert usage == Usage(input_tokens=4 + 9, output_tokens=12, cached_input_tokens=9)
    assert stop is StopReason.END_TURN
    [received] = bedrock.requests
    assert received.operation == "Converse"
    assert received.path.endswith("/converse")
    assert received.body["inferenceConfig"] == {"maxTokens": 500, "temperature": 0.5}


def test_complete_reports_tool_use_and_max_tokens(bedrock: BedrockServer) -> None:
    bedrock.tool_script = ToolScript(name="weather", input={"city": "Oslo"})
    assert provider().complete(ask(tools=(WEATHER,)))[2] is StopReason.TOOL_USE
    text, _, stop = provider().complete(ask("hello there", max_tokens=3))
    assert text == "".join(reply_pieces(expected_reply("hello there"))[:3])
    assert stop is StopReason.MAX_TOKENS


@pytest.mark.parametrize(
    ("fault", "error_type"),
    [
        pytest.param(Fault(FaultKind.THROTTLED, retry_after="3"), ProviderRateLimited, id="429"),
        pytest.param(Fault(FaultKind.UNAVAILABLE), ProviderUnavailable, id="503"),
        pytest.param(Fault(FaultKind.DROP), ProviderUnavailable, id="dropped"),
        pytest.param(Fault(FaultKind.MALFORMED), ProviderProtocolError, id="not-json"),
    ],
)
def test_complete_maps_faults_after_one_attempt(
    bedrock: BedrockServer, fault: Fault, error_type: type[ProviderError]
) -> None:
    bedrock.inject(fault)
    with pytest.raises(error_type) as caught:
        provider().complete(ask())
    assert len(bedrock.requests) == 1
    if isinstance(caught.value, ProviderRateLimited):
        assert caught.value.retry_after == 3.0


# --- the event-stream encoder -------------------------------------------------------------


def test_the_event_stream_encoder_is_read_by_botocores_decoder() -> None:
    messages = [
        event_message("messageStart", {"role": "assistant"}),
        event_message("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "Hé "}}),
        exception_message("throttlingException", "Slow down."),
        encode_message({":message-type": "event", "x-custom": "ünïcode"}, b""),
    ]
    data = b"".join(messages)
    buffer = EventStreamBuffer()
    decoded = []
    for offset in range(0, len(data), 5):  # in small pieces, as a socket would deliver them
        buffer.add_data(data[offset : offset + 5])
        decoded.extend(buffer)

    assert [m.headers for m in decoded] == [
        {
            ":event-type": "messageStart",
            ":content-type": "application/json",
            ":message-type": "event",
        },
        {
            ":event-type": "contentBlockDelta",
            ":content-type": "application/json",
            ":message-type": "event",
        },
        {
            ":exception-type": "throttlingException",
            ":content-type": "application/json",
            ":message-type": "exception",
        },
        {":message-type": "event", "x-custom": "ünïcode"},
    ]
    assert json.loads(decoded[0].payload) == {"role": "assistant"}
    assert json.loads(decoded[1].payload) == {"contentBlockIndex": 0, "delta": {"text": "Hé "}}
    assert json.loads(decoded[2].payload) == {"message": "Slow down."}
    assert decoded[3].payload == b""
    assert [m.prelude.total_length for m in decoded] == [len(m) for m in messages]

    broken = EventStreamBuffer()
    broken.add_data(corrupt(messages[1]))
    with pytest.raises(ChecksumMismatch):
        next(broken)


def test_calls_share_one_client_until_the_configuration_or_credentials_change(
    bedrock: BedrockServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A boto3 client per call cost tens of milliseconds of CPU and a connection pool per
    reply; one is shared per configuration, and rotated credentials get a new one."""
    first = provider()._client()
    assert provider()._client() is first
    assert run(ask()) and run(ask())  # the shared client serves call after call
    assert len(bedrock.requests) >= 2
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "rotated-secret")
    assert provider()._client() is not first
