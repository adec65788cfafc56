"""Writes: sending, claiming, stopping and finishing replies."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import transaction
from django.utils import timezone

from conversations import services, streams
from conversations.errors import ChatError
from conversations.models import Conversation, Message
from conversations.services import message_send, reply_claim, reply_stop, title_from_text
from protection import datakeys

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize(
    ("text", "title"),
    [
        ("Plan the launch", "Plan the launch"),
        ("\n\n  Multi   spaced\tline \nsecond line", "Multi spaced line"),
        ("x" * 200, "x" * 79 + "…"),
    ],
)
def test_title_comes_from_the_first_line(text: str, title: str) -> None:
    assert title_from_text(text) == title


def test_send_stores_the_turn_and_dispatches_only_on_commit(
    owner, django_capture_on_commit_callbacks, monkeypatch
) -> None:
    dispatched: list[tuple] = []
    monkeypatch.setattr(
        services, "dispatch", lambda task, *args: dispatched.append((task.name, args))
    )
    datakeys.key_for_writing()  # this month's data key exists (it is made once a month)
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        result = message_send(actor=owner, text="Hello", model_key="demo")
    assert dispatched == []
    # The commit runs every hook (the audit trail's key cache has one too): one dispatch.
    for callback in callbacks:
        callback()
    assert dispatched == [("conversations.tasks.generate_reply", (result.reply.pk,))]
    assert result.created and result.conversation.owner == owner
    assert result.user_message.content == "Hello" and result.user_message.status == "complete"
    assert result.reply.status == "pending" and result.reply.role == "assistant"


def test_nothing_is_dispatched_when_the_transaction_rolls_back(owner, monkeypatch) -> None:
    dispatched: list = []
    monkeypatch.setattr(services, "dispatch", lambda *args: dispatched.append(args))

    class Abort(Exception):
        pass

    with pytest.raises(Abort), transaction.atomic():
        message_send(actor=owner, text="Hello", model_key="demo")
        raise Abort
    assert dispatched == [] and Message.objects.count() == 0


def test_unknown_model_is_refused_before_anything_is_stored(owner) -> None:
    with pytest.raises(ChatError) as refused:
        message_send(actor=owner, text="Hello", model_key="gpt-9")
    assert refused.value.code == "model_unavailable"
    assert Conversation.objects.count() == 0


def test_colleague_cannot_send_into_owners_conversation(owner, colleague) -> None:
    conversation = Conversation.objects.create(owner=owner, title="mine", model="demo")
    with pytest.raises(ChatError) as refused:
        message_send(
            actor=colleague, text="Hi", model_key="demo", conversation_id=conversation.public_id
        )
    assert refused.value.code == "not_found"
    assert not conversation.messages.exists()


def test_claim_is_granted_once(owner) -> None:
    result = message_send(actor=owner, text="Hello", model_key="demo")
    first = reply_claim(reply_id=result.reply.pk)
    assert first is not None and first.status == "streaming" and first.started_at
    assert reply_claim(reply_id=result.reply.pk) is None


def test_a_redelivered_task_leaves_a_live_reply_alone(owner) -> None:
    result = message_send(actor=owner, text="Hello", model_key="demo")
    reply_claim(reply_id=result.reply.pk)  # its heartbeat is fresh: the worker is alive
    assert reply_claim(reply_id=result.reply.pk) is None
    result.reply.refresh_from_db()
    assert result.reply.status == "streaming"


def test_a_redelivered_task_fails_a_reply_whose_heartbeat_stopped(owner, settings) -> None:
    result = message_send(actor=owner, text="Hello", model_key="demo")
    reply_claim(reply_id=result.reply.pk)
    Message.objects.filter(pk=result.reply.pk).update(
        heartbeat_at=timezone.now() - timedelta(seconds=settings.CHAT_HEARTBEAT_TIMEOUT_SECONDS + 1)
    )
    assert reply_claim(reply_id=result.reply.pk) is None
    result.reply.refresh_from_db()
    assert result.reply.status == "failed" and result.reply.error_code == "interrupted"
    assert "interrupted" in result.reply.error


def test_a_stale_reply_does_not_block_the_conversation_forever(owner, settings) -> None:
    first = message_send(actor=owner, text="Hello", model_key="demo")
    with pytest.raises(ChatError) as busy:
        message_send(
            actor=owner,
            text="Again",
            model_key="demo",
            conversation_id=first.conversation.public_id,
        )
    assert busy.value.code == "busy"
    Message.objects.filter(pk=first.reply.pk).update(
        created_at=timezone.now() - timedelta(seconds=settings.CHAT_REPLY_MAX_SECONDS + 1)
    )
    second = message_send(
        actor=owner, text="Again", model_key="demo", conversation_id=first.conversation.public_id
    )
    first.reply.refresh_from_db()
    assert first.reply.status == "failed"
    assert second.reply.status == "pending"


def test_stopping_a_pending_reply_cancels_it_at_once(
    owner, django_capture_on_commit_callbacks
) -> None:
    result = message_send(actor=owner, text="Hello", model_key="demo")
    with django_capture_on_commit_callbacks(execute=False):
        reply_stop(actor=owner, message_id=result.reply.public_id)
    result.reply.refresh_from_db()
    assert result.reply.status == "cancelled"
    assert reply_claim(reply_id=result.reply.pk) is None


def test_stopping_a_streaming_reply_signals_its_worker(owner) -> None:
    result = message_send(actor=owner, text="Hello", model_key="demo")
    reply_claim(reply_id=result.reply.pk)
    assert streams.stops_requested([result.reply.public_id]) == set()
    reply_stop(actor=owner, message_id=result.reply.public_id)
    assert streams.stops_requested([result.reply.public_id]) == {result.reply.public_id}


def test_colleague_cannot_stop_owners_reply(owner, colleague) -> None:
    result = message_send(actor=owner, text="Hello", model_key="demo")
    with pytest.raises(ChatError):
        reply_stop(actor=colleague, message_id=result.reply.public_id)
    result.reply.refresh_from_db()
    assert result.reply.status == "pending"
