"""Generating a reply: failures become a stored, human-readable error; history is bounded."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from conversations.generation import reply_generate
from conversations.models import Message
from conversations.selectors import reply_history
from conversations.services import message_send
from providers import registry
from providers.base import ChatRequest, Provider, ProviderRateLimited, StreamEvent, TextDelta
from providers.models import AIModel

pytestmark = pytest.mark.django_db


class BrokenProvider(Provider):
    """Streams a little, then the service fails (a stand-in for the outside world)."""

    name = "broken"
    failure: Exception = ProviderRateLimited()

    def stream(self, request: ChatRequest) -> Iterator[StreamEvent]:
        yield TextDelta("Partial ")
        raise self.failure


@pytest.fixture
def broken_model(monkeypatch):
    monkeypatch.setitem(registry.PROVIDERS, "broken", BrokenProvider)
    AIModel.objects.create(
        key="broken",
        display_name="Broken",
        provider="broken",
        provider_model_id="b",
        available_to_everyone=True,
    )
    return "broken"


def test_provider_error_is_stored_for_the_user(owner, broken_model, monkeypatch) -> None:
    monkeypatch.setattr("conversations.services.dispatch", lambda *a: None)
    result = message_send(actor=owner, text="Hi", model_key=broken_model)
    reply_generate(reply_id=result.reply.pk)
    result.reply.refresh_from_db()
    assert result.reply.status == Message.Status.FAILED
    assert result.reply.error_code == "provider_rate_limited"
    assert result.reply.error == "The AI service is busy. Please try again shortly."
    assert result.reply.content == "Partial "


def test_unexpected_error_shows_a_generic_message_and_logs_no_details(
    owner, broken_model, monkeypatch, caplog
) -> None:
    monkeypatch.setattr("conversations.services.dispatch", lambda *a: None)
    monkeypatch.setattr(BrokenProvider, "failure", RuntimeError("api_key=sk-live-123 leaked"))
    result = message_send(actor=owner, text="Hi", model_key=broken_model)
    reply_generate(reply_id=result.reply.pk)
    result.reply.refresh_from_db()
    assert result.reply.status == Message.Status.FAILED and result.reply.error_code == "internal"
    assert "sk-live" not in result.reply.error
    assert "sk-live" not in caplog.text and "RuntimeError" in caplog.text


def test_history_is_bounded_and_skips_failed_replies(owner, settings, monkeypatch) -> None:
    monkeypatch.setattr("conversations.services.dispatch", lambda *a: None)
    settings.CHAT_HISTORY_MAX_MESSAGES = 3
    first = message_send(actor=owner, text="one", model_key="demo")
    Message.objects.filter(pk=first.reply.pk).update(status="failed", content="half")
    second = message_send(
        actor=owner, text="two", model_key="demo", conversation_id=first.conversation.public_id
    )
    Message.objects.filter(pk=second.reply.pk).update(status="complete", content="answer two")
    third = message_send(
        actor=owner, text="three", model_key="demo", conversation_id=first.conversation.public_id
    )
    turns = [(m.role, m.content) for m in reply_history(reply=third.reply)]
    assert turns == [("user", "two"), ("assistant", "answer two"), ("user", "three")]
