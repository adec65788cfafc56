"""A reply that uses tools and one that fails over, as stored and as the socket shows them.

The model is a scripted stand-in; search_internet runs for real against its loopback double.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from channels.db import database_sync_to_async

from conversations.models import Message
from providers import registry
from providers.base import (
    ChatRequest,
    Finish,
    Provider,
    ProviderUnavailable,
    StopReason,
    StreamEvent,
    TextDelta,
    ToolCall,
    Usage,
)
from providers.models import AIModel
from tests.support import connected, is_final, receive_until

pytestmark = pytest.mark.django_db(transaction=True)


class Researcher(Provider):
    """Asks for a web search until it has results, then answers citing the first URL."""

    name = "researcher"
    requests: list[ChatRequest] = []

    def stream(self, request: ChatRequest) -> Iterator[StreamEvent]:
        type(self).requests.append(request)
        results = [r for m in request.messages for r in m.tool_results]
        if not results:
            yield TextDelta("Let me look that up. ")
            yield ToolCall("call-1", "search_internet", {"query": "channels release"})
            yield Usage(10, 5)
            yield Finish(StopReason.TOOL_USE)
            return
        url = results[-1].content.split("URL: ")[1].split()[0]
        yield TextDelta(f"According to {url}, it shipped.")
        yield Usage(30, 8)
        yield Finish(StopReason.END_TURN)


class Unreachable(Provider):
    name = "unreachable"

    def stream(self, request: ChatRequest) -> Iterator[StreamEvent]:
        raise ProviderUnavailable()
        yield  # pragma: no cover


@pytest.fixture
def models(monkeypatch, settings) -> None:
    monkeypatch.setitem(registry.PROVIDERS, "researcher", Researcher)
    monkeypatch.setitem(registry.PROVIDERS, "unreachable", Unreachable)
    Researcher.requests = []
    settings.PROVIDER_RETRY_BASE_SECONDS = 0
    backup = AIModel.objects.create(
        key="researcher", display_name="Researcher", provider="researcher",
        provider_model_id="r", available_to_everyone=True,
    )  # fmt: skip
    AIModel.objects.create(
        key="flaky", display_name="Flaky", provider="unreachable", provider_model_id="f",
        available_to_everyone=True, fallback=backup,
    )  # fmt: skip


async def test_a_tool_round_trip_is_streamed_stored_and_shown(
    owner, session_cookie, google, models
) -> None:
    comm = await connected(await database_sync_to_async(session_cookie)(owner))
    await comm.send_json_to(
        {"type": "send", "conversation": None, "text": "Is it out?", "model": "researcher"}
    )
    frames = await receive_until(comm, is_final)
    await comm.disconnect()

    tool_frame = next(f for f in frames if f["type"] == "tool")
    assert tool_frame["tool"]["name"] == "search_internet"
    assert tool_frame["tool"]["arguments"] == {"query": "channels release"}
    assert not tool_frame["tool"]["is_error"]
    first_url = google.results_for("channels release", 5)[0]["link"]
    done = frames[-1]
    assert done["type"] == "done" and done["tools"] == [tool_frame["tool"]]
    assert first_url in done["html"]

    reply = await database_sync_to_async(Message.objects.get)(public_id=done["message"])
    assert reply.content == f"Let me look that up. According to {first_url}, it shipped."
    assert reply.tool_events[0]["result"].startswith('Web search results for "channels release"')
    assert (reply.input_tokens, reply.output_tokens) == (40, 13)  # both rounds counted
    assert google.requests[0].params["q"] == "channels release"
    # The second call carried the tool's result back to the model.
    second = Researcher.requests[1]
    assert second.messages[-2].tool_calls[0].name == "search_internet"
    assert second.messages[-1].tool_results[0].call_id == "call-1"
    assert sorted(t.name for t in second.tools) == [
        "list_my_conversations",
        "read_conversation",
        "search_internet",
    ]


async def test_tools_are_not_offered_when_unconfigured(
    owner, session_cookie, models, settings
) -> None:
    settings.GOOGLE_SEARCH_API_KEY = ""
    settings.TOOLS_READ_CONVERSATION_ENABLED = False
    comm = await connected(await database_sync_to_async(session_cookie)(owner))
    await comm.send_json_to(
        {"type": "send", "conversation": None, "text": "Is it out?", "model": "researcher"}
    )
    frames = await receive_until(comm, is_final)
    await comm.disconnect()
    assert Researcher.requests[0].tools == []
    # The model asked anyway: it is told the tool is unavailable, and nothing ran.
    reply = await database_sync_to_async(Message.objects.get)(public_id=frames[-1]["message"])
    assert reply.tool_events[0]["is_error"] and "not available" in reply.tool_events[0]["result"]


async def test_the_number_of_tool_rounds_is_bounded(
    owner, session_cookie, google, models, settings
) -> None:
    settings.CHAT_MAX_TOOL_ROUNDS = 0
    comm = await connected(await database_sync_to_async(session_cookie)(owner))
    await comm.send_json_to(
        {"type": "send", "conversation": None, "text": "Is it out?", "model": "researcher"}
    )
    frames = await receive_until(comm, is_final)
    await comm.disconnect()
    reply = await database_sync_to_async(Message.objects.get)(public_id=frames[-1]["message"])
    assert reply.stop_reason == "tool_rounds_exhausted" and reply.tool_events == []
    assert len(Researcher.requests) == 1 and google.requests == []


async def test_failover_is_recorded_and_shown(owner, session_cookie, google, models) -> None:
    comm = await connected(await database_sync_to_async(session_cookie)(owner))
    await comm.send_json_to(
        {"type": "send", "conversation": None, "text": "Is it out?", "model": "flaky"}
    )
    frames = await receive_until(comm, is_final)
    await comm.disconnect()
    notice = next(f for f in frames if f["type"] == "notice")
    assert notice["text"] == "Answered by Researcher because Flaky was unavailable."
    done = frames[-1]
    assert done["type"] == "done" and done["notice"] == notice["text"]
    reply = await database_sync_to_async(Message.objects.get)(public_id=done["message"])
    assert reply.model == "flaky" and reply.answered_by == "researcher"
    assert reply.notice == notice["text"] and reply.status == "complete"


async def test_a_message_too_long_for_the_models_context_is_refused(
    owner, session_cookie, models
) -> None:
    await database_sync_to_async(AIModel.objects.filter(key="researcher").update)(
        context_window=300, max_output_tokens=100
    )
    comm = await connected(await database_sync_to_async(session_cookie)(owner))
    await comm.send_json_to(
        {"type": "send", "conversation": None, "text": "x" * 2000, "model": "researcher"}
    )
    frame = await comm.receive_json_from(timeout=5)
    await comm.disconnect()
    assert frame["code"] == "too_large" and "Researcher" in frame["reason"]
    assert Researcher.requests == []
    assert await database_sync_to_async(Message.objects.count)() == 0
