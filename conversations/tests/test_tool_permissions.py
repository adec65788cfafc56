"""Tool permissions end to end: a model that asks to read someone else's conversation.

The model is a scripted provider; everything else is real — the socket, the reply task,
the tool registry, read_conversation and the audit trail.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from channels.db import database_sync_to_async

from audit.models import AuditEvent
from conversations.models import Conversation, Message
from providers import registry
from providers.base import (
    ChatRequest,
    Finish,
    Provider,
    StopReason,
    StreamEvent,
    TextDelta,
    ToolCall,
    Usage,
)
from providers.models import AIModel
from tests.support import connected, is_final, receive_until

pytestmark = pytest.mark.django_db(transaction=True)

SECRET = "The merger with Initech closes on the 14th."


class Snoop(Provider):
    """Asks to read each conversation in `targets`, then repeats what the tools returned."""

    name = "snoop"
    targets: list[str] = []
    requests: list[ChatRequest] = []

    def stream(self, request: ChatRequest) -> Iterator[StreamEvent]:
        type(self).requests.append(request)
        results = [r for m in request.messages for r in m.tool_results]
        if not results:
            for n, target in enumerate(self.targets):
                yield ToolCall(f"call-{n}", "read_conversation", {"conversation_id": target})
            yield Usage(10, 5)
            yield Finish(StopReason.TOOL_USE)
            return
        yield TextDelta(" | ".join(r.content for r in results))
        yield Usage(30, 8)
        yield Finish(StopReason.END_TURN)


@pytest.fixture
def snoop(monkeypatch, settings) -> type[Snoop]:
    monkeypatch.setitem(registry.PROVIDERS, "snoop", Snoop)
    Snoop.requests = []
    settings.GOOGLE_SEARCH_API_KEY = ""
    AIModel.objects.create(
        key="snoop", display_name="Snoop", provider="snoop", provider_model_id="s",
        available_to_everyone=True,
    )  # fmt: skip
    return Snoop


def conversation_with(user: Any, title: str, text: str) -> Conversation:
    conversation = Conversation.objects.create(owner=user, title=title, model="demo")
    Message.objects.create(
        conversation=conversation, role="user", content=text, status="complete", model="demo"
    )
    return conversation


async def test_a_model_cannot_read_another_users_conversation(
    owner, colleague, session_cookie, snoop
) -> None:
    theirs = await database_sync_to_async(conversation_with)(colleague, "Board minutes", SECRET)
    mine = await database_sync_to_async(conversation_with)(owner, "Lunch", "Pizza on Friday?")
    snoop.targets = [str(theirs.public_id), str(mine.public_id)]

    comm = await connected(await database_sync_to_async(session_cookie)(owner))
    await comm.send_json_to(
        {"type": "send", "conversation": None, "text": "What did we say?", "model": "snoop"}
    )
    frames = await receive_until(comm, is_final)
    await comm.disconnect()

    refused, allowed = [f["tool"] for f in frames if f["type"] == "tool"]
    assert refused["name"] == "read_conversation" and refused["is_error"]
    assert refused["result"] == "No such conversation."
    assert not allowed["is_error"] and "Pizza on Friday?" in allowed["result"]
    # Nothing of the other conversation reached the model, the socket or the stored reply.
    done = frames[-1]
    assert done["type"] == "done", frames
    second = snoop.requests[1]
    assert SECRET not in repr(second) and "Board minutes" not in repr(second)
    assert "Pizza on Friday?" in repr(second)
    assert all(SECRET not in repr(frame) for frame in frames)
    reply = await database_sync_to_async(Message.objects.get)(public_id=done["message"])
    assert SECRET not in reply.content and SECRET not in repr(reply.tool_events)

    events = await database_sync_to_async(list)(
        AuditEvent.objects.filter(action="tool.refused").order_by("sequence")
    )
    assert len(events) == 1, [(e.action, e.details) for e in events]
    [event] = events
    assert event.actor_id == owner.pk and event.outcome == "denied"
    assert (event.target_type, event.target_id) == ("conversation", str(theirs.public_id))
    assert event.details == {"tool": "read_conversation", "reason": "not_owner"}
    # Tied to the request that asked for the reply (generation binds the audit context).
    assert reply.request_id and event.request_id == reply.request_id
