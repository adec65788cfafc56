"""Replies whose worker died: heartbeats, the sweeper, and stop requests read per process.

A dead worker is simulated by dispatching to a Celery broker nobody consumes (the embedded
configuration's `memory://`), then claiming the reply as a worker would and letting its
heartbeat age.
"""

from __future__ import annotations

import datetime as dt
import time
from decimal import Decimal

import pytest
from channels.db import database_sync_to_async as sync_to_async
from django.utils import timezone

from audit.models import AuditEvent
from conversations import inflight, streams
from conversations.models import Message
from conversations.services import message_send, replies_sweep, reply_claim
from costs.models import Budget, CostEntry, ModelPrice, Reservation
from providers.models import AIModel
from tests.support import connected, receive_until

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def dead_worker(settings) -> None:
    """Tasks go to a broker no worker reads: replies stay pending until claimed here."""
    settings.TASK_DISPATCH = "celery"


def priced_and_budgeted(owner) -> Budget:
    ModelPrice.objects.create(
        model=AIModel.objects.get(key="demo"),
        input_per_million=Decimal("3"),
        output_per_million=Decimal("15"),
        effective_from=timezone.now() - dt.timedelta(days=1),
    )
    return Budget.objects.create(
        name="Mine", scope="user", user=owner, period="daily", limit_amount=Decimal("5")
    )


def streaming_reply(owner, *, text: str = "", silent_for: float = 0) -> Message:
    """A reply claimed by a worker that streamed `text`, then went silent `silent_for` s ago."""
    result = message_send(actor=owner, text="Tell me a story", model_key="demo")
    reply = reply_claim(reply_id=result.reply.pk)
    assert reply is not None
    if text:
        streams.snapshot_save(reply.public_id, seq=1, text=text)
    Message.objects.filter(pk=reply.pk).update(
        heartbeat_at=timezone.now() - dt.timedelta(seconds=silent_for)
    )
    return reply


async def test_a_reply_whose_worker_died_is_failed_and_its_socket_told(
    owner, session_cookie, dead_worker, settings
) -> None:
    await sync_to_async(priced_and_budgeted)(owner)
    reply = await sync_to_async(streaming_reply)(
        owner, text="Once upon a time", silent_for=settings.CHAT_HEARTBEAT_TIMEOUT_SECONDS + 1
    )
    assert await sync_to_async(Reservation.objects.filter(status="held").count)() == 1
    comm = await connected(await sync_to_async(session_cookie)(owner))
    conversation = str(reply.conversation.public_id)
    await comm.send_json_to({"type": "subscribe", "conversation": conversation})
    await receive_until(comm, lambda f: f["type"] == "snapshot")

    assert await sync_to_async(replies_sweep)() == 1

    error = (await receive_until(comm, lambda f: f["type"] == "error", timeout=5))[-1]
    await comm.disconnect()
    assert error == {
        "type": "error",
        "conversation": conversation,
        "message": str(reply.public_id),
        "code": "interrupted",
        "reason": error["reason"],
        "usage": error["usage"],
    }
    assert "interrupted" in error["reason"]
    await sync_to_async(reply.refresh_from_db)()
    # The estimate it was charged is shown with the error, as after a reload.
    assert error["usage"]["cost"] == str(reply.cost) and error["usage"]["estimated"] is True
    assert reply.status == "failed" and reply.error_code == "interrupted"
    # No hold left behind; the text that had streamed is charged once, as an estimate.
    assert await sync_to_async(Reservation.objects.filter(status="held").count)() == 0
    entries = await sync_to_async(list)(CostEntry.objects.filter(message=reply))
    assert len(entries) == 1 and entries[0].estimated and entries[0].output_tokens > 0
    assert reply.cost == entries[0].cost and reply.cost_estimated
    assert await sync_to_async(
        AuditEvent.objects.filter(action="reply.failed", target_id=conversation).exists
    )()
    # Swept once: a second sweep (another worker, beat) finds nothing.
    assert await sync_to_async(replies_sweep)() == 0
    assert await sync_to_async(CostEntry.objects.filter(message=reply).count)() == 1


def test_the_conversation_takes_a_new_message_after_the_sweep(owner, dead_worker, settings):
    reply = streaming_reply(owner, silent_for=settings.CHAT_HEARTBEAT_TIMEOUT_SECONDS + 1)
    replies_sweep()
    again = message_send(
        actor=owner,
        text="Again",
        model_key="demo",
        conversation_id=reply.conversation.public_id,
    )
    assert again.reply.status == "pending"
    # Nothing had streamed: nothing charged.
    assert not CostEntry.objects.filter(message=reply).exists()


def test_a_live_reply_is_never_swept_however_silent_its_model(owner, dead_worker, settings):
    reply = streaming_reply(owner, silent_for=settings.CHAT_HEARTBEAT_TIMEOUT_SECONDS - 5)
    assert replies_sweep() == 0
    reply.refresh_from_db()
    assert reply.status == "streaming"


def test_a_reply_never_picked_up_is_failed_after_the_reply_deadline(
    owner, dead_worker, settings
) -> None:
    result = message_send(actor=owner, text="Hello", model_key="demo")
    assert replies_sweep() == 0  # queued behind others: give it time
    Message.objects.filter(pk=result.reply.pk).update(
        created_at=timezone.now() - dt.timedelta(seconds=settings.CHAT_REPLY_MAX_SECONDS + 1)
    )
    assert replies_sweep() == 1
    result.reply.refresh_from_db()
    assert result.reply.status == "failed" and result.reply.error_code == "interrupted"


def beat_recently(reply: Message) -> bool:
    return reply.heartbeat_at is not None and reply.heartbeat_at > timezone.now() - dt.timedelta(
        seconds=2
    )


def test_heartbeats_come_from_the_process_while_the_model_is_silent(
    owner, dead_worker, settings
) -> None:
    settings.CHAT_HEARTBEAT_SECONDS = 0.2
    reply = streaming_reply(owner, silent_for=60)
    with inflight.tracking(pk=reply.pk, public_id=reply.public_id):
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            reply.refresh_from_db()
            if beat_recently(reply):
                break
            time.sleep(0.1)
    assert beat_recently(reply)
    assert replies_sweep() == 0


def test_stop_requests_reach_only_the_reply_asked_to_stop(owner, colleague, dead_worker):
    first = streaming_reply(owner)
    second = streaming_reply(colleague)
    with (
        inflight.tracking(pk=first.pk, public_id=first.public_id) as one,
        inflight.tracking(pk=second.pk, public_id=second.public_id) as other,
    ):
        streams.stop_request(first.public_id)
        deadline = time.monotonic() + 5
        while not one.stopped() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)  # a few more polls
        assert one.stopped()
        assert not other.stopped()


def test_batches_stretch_when_a_process_streams_many_replies(settings) -> None:
    """Every batch is a message a web process must read and relay: a process's replies
    together send at most CHAT_DELTA_SENDS_PER_SECOND (at 200 replies a web process's
    inbox overflowed at the 50 ms interval)."""
    import uuid
    from contextlib import ExitStack

    from conversations.generation import flush_interval_ms

    settings.CHAT_DELTA_FLUSH_MS = 50
    settings.CHAT_DELTA_SENDS_PER_SECOND = 1000
    assert flush_interval_ms() == 50
    with ExitStack() as stack:
        for pk in range(1, 201):
            stack.enter_context(inflight.tracking(pk=-pk, public_id=uuid.uuid4()))
        assert inflight.active() == 200
        assert flush_interval_ms() == 200  # 200 replies x 5 batches/s = 1,000 sends/s
    assert flush_interval_ms() == 50
