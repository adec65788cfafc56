"""Every entry point goes through one admission path; `source` names it, and the chat list
shows the chat's own conversations only."""

from __future__ import annotations

import pytest
from django.test import Client

from audit.catalogue import AuditAction
from audit.models import AuditEvent
from conversations.errors import ChatError
from conversations.models import Conversation
from conversations.selectors import conversation_list
from conversations.services import message_send
from observability.testing import parse_samples, sample_value

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def no_dispatch(monkeypatch) -> None:
    monkeypatch.setattr("conversations.services.dispatch", lambda *a: None)


def test_a_conversation_keeps_the_entry_point_it_was_started_from(owner) -> None:
    chat = message_send(actor=owner, text="From the chat", model_key="demo")
    api = message_send(actor=owner, text="From a script", model_key="demo", source="api")
    assert chat.conversation.source == Conversation.Source.WEB
    assert api.conversation.source == Conversation.Source.API
    sent = AuditEvent.objects.filter(action=AuditAction.MESSAGE_SENT).order_by("sequence")
    assert [event.details["source"] for event in sent] == ["web", "api"]


def test_api_calls_never_clutter_the_chat_list(owner, client: Client) -> None:
    message_send(actor=owner, text="Chat about plans", model_key="demo")
    message_send(actor=owner, text="Nightly summary job", model_key="demo", source="openai")
    titles = [c.title for c in conversation_list(user=owner).conversations]
    assert titles == ["Chat about plans"]
    everything = conversation_list(user=owner, sources=tuple(Conversation.Source.values))
    assert len(everything.conversations) == 2
    client.force_login(owner)
    page = client.get("/").content.decode()
    assert "Chat about plans" in page and "Nightly summary job" not in page


def test_a_refusal_is_counted_under_its_entry_point(owner) -> None:
    before = parse_samples(Client().get("/metrics").content.decode())
    with pytest.raises(ChatError):
        message_send(actor=owner, text="Hello", model_key="no-such-model", source="api")
    after = parse_samples(Client().get("/metrics").content.decode())
    labels = {"reason": "model_not_allowed", "kind": "", "source": "api"}
    assert (
        sample_value(after, "eai_refusals_total", **labels)
        - sample_value(before, "eai_refusals_total", **labels)
        == 1
    )
