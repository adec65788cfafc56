"""Per-person rate limits on sending: messages per minute and replies in flight.

The socket test drives a real provider SDK against its loopback double, so "nothing is sent
to the provider" is counted at the provider's end.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
from channels.db import database_sync_to_async as sync_to_async
from django.core.cache import cache
from django.utils import timezone

from audit.catalogue import AuditAction
from audit.models import AuditEvent
from conversations import services
from conversations.errors import ChatError
from conversations.models import Conversation, Message
from conversations.services import message_send
from tests.integration.services import Service, running_service
from tests.support import connected, early_in_a_minute, is_final, receive_until


@pytest.fixture(autouse=True)
def _fresh_counters() -> None:
    cache.clear()


@pytest.fixture
def provider(settings, monkeypatch, tmp_path) -> Iterator[Service]:
    with running_service("openai-compatible", settings, monkeypatch, tmp_path) as service:
        yield service


@pytest.mark.django_db(transaction=True)
async def test_the_message_over_the_minute_limit_gets_a_retry_time_and_reaches_no_provider(
    owner, session_cookie, settings, provider
) -> None:
    settings.CHAT_MESSAGES_PER_MINUTE = 3
    settings.CHAT_MAX_REPLIES_IN_FLIGHT = 0
    early_in_a_minute()
    comm = await connected(await sync_to_async(session_cookie)(owner))
    for n in range(3):
        await comm.send_json_to(
            {
                "type": "send",
                "conversation": None,
                "text": f"Question {n}",
                "model": "openai-compatible",
            }
        )
        frames = await receive_until(comm, is_final)
        assert frames[-1]["type"] == "done", frames
    stored = await sync_to_async(Message.objects.count)()

    for _ in range(2):  # the 4th and 5th message of the minute
        await comm.send_json_to(
            {"type": "send", "conversation": None, "text": "One more", "model": "openai-compatible"}
        )
        error = await comm.receive_json_from(timeout=10)
        assert error["type"] == "error" and error["code"] == "rate_limited", error
        assert 1 <= error["retry_after"] <= 60
        assert f"Try again in {error['retry_after']} second" in error["reason"]
    await comm.disconnect()

    assert len(provider.model_requests()) == 3
    assert await sync_to_async(Message.objects.count)() == stored
    assert await sync_to_async(Conversation.objects.count)() == 3
    # Audited once per window, however many messages the limit refused.
    events = await sync_to_async(list)(
        AuditEvent.objects.filter(action=AuditAction.MESSAGE_RATE_LIMITED)
    )
    assert len(events) == 1
    assert events[0].actor_id == owner.pk and events[0].details["limit"] == 3


@pytest.mark.django_db
def test_the_limit_is_per_person(owner, colleague, settings, monkeypatch) -> None:
    monkeypatch.setattr(services, "dispatch", lambda *args: None)
    settings.CHAT_MESSAGES_PER_MINUTE = 1
    settings.CHAT_MAX_REPLIES_IN_FLIGHT = 0
    early_in_a_minute()
    message_send(actor=owner, text="Mine", model_key="demo")
    with pytest.raises(ChatError) as refused:
        message_send(actor=owner, text="Mine again", model_key="demo")
    assert refused.value.code == "rate_limited"
    message_send(actor=colleague, text="Bob's first", model_key="demo")


@pytest.mark.django_db
def test_zero_means_no_per_minute_limit(owner, settings, monkeypatch) -> None:
    monkeypatch.setattr(services, "dispatch", lambda *args: None)
    settings.CHAT_MESSAGES_PER_MINUTE = 0
    settings.CHAT_MAX_REPLIES_IN_FLIGHT = 0
    for n in range(30):
        message_send(actor=owner, text=f"Message {n}", model_key="demo")
    assert Message.objects.filter(role="user").count() == 30


@pytest.mark.django_db
def test_replies_in_flight_are_limited_across_conversations(owner, settings, monkeypatch) -> None:
    monkeypatch.setattr(services, "dispatch", lambda *args: None)  # replies stay pending
    settings.CHAT_MESSAGES_PER_MINUTE = 0
    settings.CHAT_MAX_REPLIES_IN_FLIGHT = 2
    first = message_send(actor=owner, text="One", model_key="demo")
    message_send(actor=owner, text="Two", model_key="demo")
    stored = Message.objects.count()

    with pytest.raises(ChatError) as refused:
        message_send(actor=owner, text="Three", model_key="demo")
    assert refused.value.code == "rate_limited"
    assert refused.value.retry_after == services.IN_FLIGHT_RETRY_SECONDS
    assert "2 replies being written" in refused.value.reason
    assert Message.objects.count() == stored
    assert Conversation.objects.count() == 2

    # One finishes: there is room again.
    Message.objects.filter(pk=first.reply.pk).update(status=Message.Status.COMPLETE)
    message_send(actor=owner, text="Three", model_key="demo")


@pytest.mark.django_db
def test_a_reply_left_by_a_dead_worker_does_not_count(owner, settings, monkeypatch) -> None:
    monkeypatch.setattr(services, "dispatch", lambda *args: None)
    settings.CHAT_MESSAGES_PER_MINUTE = 0
    settings.CHAT_MAX_REPLIES_IN_FLIGHT = 1
    stale = message_send(actor=owner, text="Long ago", model_key="demo")
    Message.objects.filter(pk=stale.reply.pk).update(
        created_at=timezone.now() - timedelta(seconds=settings.CHAT_REPLY_MAX_SECONDS + 5)
    )
    message_send(actor=owner, text="Now", model_key="demo")


@pytest.mark.django_db(transaction=True)
async def test_a_flood_of_frames_is_cut_off_and_audited_once(
    owner, colleague, session_cookie, settings
) -> None:
    settings.CHAT_FRAMES_PER_MINUTE = 5
    early_in_a_minute()
    theirs = await sync_to_async(Conversation.objects.create)(
        owner=colleague, title="Bob's", model="demo"
    )
    comm = await connected(await sync_to_async(session_cookie)(owner))
    probe = {"type": "subscribe", "conversation": str(theirs.public_id)}
    for _ in range(5):
        await comm.send_json_to(probe)
        assert (await comm.receive_json_from(timeout=10))["code"] == "not_found"
    for _ in range(20):
        await comm.send_json_to(probe)
        refused = await comm.receive_json_from(timeout=10)
        assert refused["code"] == "rate_limited" and 1 <= refused["retry_after"] <= 60
    await comm.disconnect()

    def audited(action: str) -> int:
        return AuditEvent.objects.filter(action=action).count()

    # Five probes were acted on (and audited); the twenty refused ones reached no query.
    assert await sync_to_async(audited)(AuditAction.CONVERSATION_ACCESS_DENIED) == 5
    assert await sync_to_async(audited)(AuditAction.WS_RATE_LIMITED) == 1
