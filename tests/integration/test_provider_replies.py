"""Each provider end to end: reply generation → resilience → the real SDK → its double.

The same scenarios run against Bedrock (boto3, AWS event-stream), OpenAI Responses
(stateless and with a server-side Conversation), Azure OpenAI and an OpenAI-compatible
Chat Completions server (openai SDK, SSE).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from django.core.cache import cache

from conversations.generation import reply_generate
from conversations.models import Message
from conversations.services import message_send
from providers.models import AIModel
from providers.testing.google_search import GoogleSearchDouble
from tests.integration.services import PROVIDER_KINDS, Service, running_service

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def quick_resilience(settings, monkeypatch) -> None:
    monkeypatch.setattr("conversations.services.dispatch", lambda *args: None)
    cache.clear()
    settings.PROVIDER_MAX_ATTEMPTS = 3
    settings.PROVIDER_RETRY_BASE_SECONDS = 0.01
    settings.PROVIDER_RETRY_MAX_SECONDS = 5
    settings.PROVIDER_FIRST_TOKEN_TIMEOUT_SECONDS = 1.0
    settings.PROVIDER_IDLE_TIMEOUT_SECONDS = 1.0
    settings.CIRCUIT_FAILURE_THRESHOLD = 50


@pytest.fixture(params=PROVIDER_KINDS)
def service(request, settings, monkeypatch, tmp_path) -> Iterator[Service]:
    with running_service(request.param, settings, monkeypatch, tmp_path) as service:
        yield service


def ask(
    owner: Any, service: Service, text: str = "Tell me about resilience", conversation: Any = None
) -> Message:
    result = message_send(
        actor=owner,
        text=text,
        model_key=service.model.key,
        conversation_id=conversation.public_id if conversation else None,
    )
    reply_generate(reply_id=result.reply.pk)
    result.reply.refresh_from_db()
    return result.reply


def test_a_streamed_reply_arrives_whole_with_usage_and_stop_reason(owner, service) -> None:
    reply = ask(owner, service)
    assert reply.status == "complete", reply.error
    assert reply.content == service.expected_reply("Tell me about resilience")
    assert reply.output_tokens and reply.input_tokens
    assert reply.stop_reason == "end_turn"
    assert reply.answered_by == service.model.key and reply.notice == ""
    assert len(service.model_requests()) == 1


def test_a_tool_round_trip_with_search_internet(owner, service, settings) -> None:
    with GoogleSearchDouble() as google:
        settings.GOOGLE_SEARCH_API_KEY = google.api_key
        settings.GOOGLE_SEARCH_ENGINE_ID = google.engine_id
        settings.GOOGLE_SEARCH_ENDPOINT = google.endpoint
        service.script_tool("search_internet", {"query": "event stream framing"})
        reply = ask(owner, service, "What is event stream framing?")
    assert reply.status == "complete", reply.error
    assert [e["name"] for e in reply.tool_events] == ["search_internet"]
    assert reply.tool_events[0]["arguments"] == {"query": "event stream framing"}
    assert (
        google.results_for("event stream framing", 1)[0]["link"] in reply.tool_events[0]["result"]
    )
    assert google.requests[0].params["q"] == "event stream framing"
    assert len(service.model_requests()) == 2  # the tool call, then the answer with its result
    assert reply.content.startswith("Searching. ")


@pytest.mark.parametrize("fault", ["unavailable", "server_error", "stall"])
def test_a_transient_failure_is_retried_then_answered(owner, service, fault) -> None:
    service.fail(fault, seconds=3)
    reply = ask(owner, service)
    assert reply.status == "complete", reply.error
    assert reply.content == service.expected_reply("Tell me about resilience")
    assert len(service.model_requests()) == 2


def test_retry_after_is_honoured(owner, service) -> None:
    service.fail("rate_limited", retry_after=1)
    started = time.monotonic()
    reply = ask(owner, service)
    assert reply.status == "complete", reply.error
    assert time.monotonic() - started >= 1
    assert len(service.model_requests()) == 2


def test_attempts_never_exceed_the_limit_and_the_user_gets_a_plain_error(owner, service) -> None:
    for _ in range(5):
        service.fail("unavailable")
    reply = ask(owner, service)
    assert reply.status == "failed"
    assert len(service.model_requests()) == 3
    assert reply.error_code == "provider_unavailable"
    assert (
        reply.error.endswith(".")
        and "Traceback" not in reply.error
        and "127.0.0.1" not in reply.error
    )


def test_failover_to_the_fallback_is_labelled(owner, service) -> None:
    AIModel.objects.filter(pk=service.model.pk).update(fallback=AIModel.objects.get(key="demo"))
    for _ in range(3):
        service.fail("server_error")
    reply = ask(owner, service)
    assert reply.status == "complete", reply.error
    assert reply.answered_by == "demo"
    assert (
        reply.notice
        == f"Answered by Demo model (offline) because {service.model.display_name} was unavailable."
    )
    assert "demo model" in reply.content


def test_no_retry_once_text_has_reached_the_user(owner, service) -> None:
    service.fail("drop")
    reply = ask(owner, service)
    assert reply.status == "failed"
    assert len(service.model_requests()) == 1
    assert reply.content and service.expected_reply("Tell me about resilience").startswith(
        reply.content
    )


def test_the_circuit_opens_after_repeated_failures_and_recovers(owner, service, settings) -> None:
    settings.CIRCUIT_FAILURE_THRESHOLD = 2
    settings.CIRCUIT_RESET_SECONDS = 0.5
    settings.PROVIDER_MAX_ATTEMPTS = 1
    service.fail("unavailable")
    service.fail("unavailable")
    assert ask(owner, service).status == "failed"
    assert ask(owner, service).status == "failed"
    refused = ask(owner, service)
    assert refused.error_code == "provider_circuit_open"
    assert len(service.model_requests()) == 2, "an open circuit sends nothing"
    time.sleep(0.6)
    assert ask(owner, service).status == "complete"
    assert len(service.model_requests()) == 3


@pytest.mark.parametrize("service", ["openai-server"], indirect=True)
def test_server_side_state_sends_only_the_new_input(owner, service) -> None:
    first = ask(owner, service, "First question")
    conversation = first.conversation
    conversation.refresh_from_db()
    conversation_id = conversation.provider_state["openai_conversation_id"]
    assert conversation_id in service.double.conversations
    second = ask(owner, service, "Second question", conversation=conversation)
    assert second.status == "complete", second.error
    body = service.model_requests()[-1].body
    assert body["conversation"] == conversation_id
    sent = str(body["input"])
    assert "Second question" in sent and "First question" not in sent


@pytest.mark.parametrize("service", ["openai"], indirect=True)
def test_stateless_sends_the_window_every_turn(owner, service) -> None:
    first = ask(owner, service, "First question")
    ask(owner, service, "Second question", conversation=first.conversation)
    sent = str(service.model_requests()[-1].body["input"])
    assert "First question" in sent and "Second question" in sent
    assert "conversation" not in service.model_requests()[-1].body
