"""The chat socket through the full ASGI stack, embedded mode (in-process dispatch)."""

from __future__ import annotations

import json
import uuid

import pytest
from channels.db import database_sync_to_async as sync_to_async
from django.test import override_settings

from conversations.models import Conversation, Message
from conversations.rendering import render_markdown
from providers.demo import demo_reply
from tests.support import communicator, connected, is_final, receive_until

pytestmark = pytest.mark.django_db(transaction=True)


async def message_count() -> int:
    return await sync_to_async(Message.objects.count)()


async def test_anonymous_connection_is_refused() -> None:
    comm = communicator(cookie=None)
    ok, code = await comm.connect()
    assert not ok
    assert code == 4401


async def test_foreign_origin_is_refused(owner, session_cookie) -> None:
    comm = communicator(await sync_to_async(session_cookie)(owner), origin=b"https://evil.example")
    ok, _ = await comm.connect()
    assert not ok


async def test_missing_origin_is_refused(owner, session_cookie) -> None:
    comm = communicator(await sync_to_async(session_cookie)(owner), origin=None)
    ok, _ = await comm.connect()
    assert not ok


async def test_inactive_user_is_refused(owner, session_cookie) -> None:
    cookie = await sync_to_async(session_cookie)(owner)
    owner.is_active = False
    await sync_to_async(owner.save)(update_fields=["is_active"])
    ok, _ = await communicator(cookie).connect()
    assert not ok


async def test_owner_gets_accepted_deltas_and_done_matching_stored_reply(
    owner, session_cookie, fast_demo
) -> None:
    comm = await connected(await sync_to_async(session_cookie)(owner))
    await comm.send_json_to(
        {"type": "send", "conversation": None, "text": "Plan a launch", "model": "demo"}
    )
    frames = await receive_until(comm, is_final)
    await comm.disconnect()

    accepted = frames[0]
    assert accepted["type"] == "accepted"
    assert accepted["created"] is True
    deltas = [f for f in frames if f["type"] == "delta"]
    done = frames[-1]
    assert done["type"] == "done", frames
    assert [d["seq"] for d in deltas] == list(range(1, len(deltas) + 1))
    assert all(d["message"] == accepted["message"] for d in deltas)

    reply = await sync_to_async(Message.objects.get)(public_id=accepted["message"])
    assert reply.status == Message.Status.COMPLETE
    assert reply.content == "".join(d["text"] for d in deltas) == demo_reply("Plan a launch")
    assert done["html"] == render_markdown(reply.content)
    assert done["status"] == "complete"
    assert done["usage"] == {
        "input_tokens": reply.input_tokens,
        "output_tokens": reply.output_tokens,
        "cost": str(reply.cost),  # the demo model has no price: zero, still recorded
        "currency": "USD",
        "estimated": False,
    }
    assert reply.output_tokens and reply.input_tokens
    assert reply.time_to_first_token_ms is not None and reply.duration_ms is not None
    assert done["timings"]["duration_ms"] == reply.duration_ms

    conversation = await sync_to_async(Conversation.objects.get)(public_id=accepted["conversation"])
    assert conversation.owner_id == owner.pk
    assert conversation.title == "Plan a launch"


async def test_deltas_are_batched_not_one_per_token(owner, session_cookie, settings) -> None:
    from conftest import set_demo_speed

    # A model far faster than the flush interval: many tokens must share a frame.
    set_demo_speed(settings, first_token_delay_ms=0, tokens_per_second=2000)
    settings.CHAT_DELTA_FLUSH_MS = 200
    comm = await connected(await sync_to_async(session_cookie)(owner))
    await comm.send_json_to(
        {"type": "send", "conversation": None, "text": "hello", "model": "demo"}
    )
    frames = await receive_until(comm, is_final)
    await comm.disconnect()
    deltas = [f for f in frames if f["type"] == "delta"]
    reply = await sync_to_async(Message.objects.get)(public_id=frames[0]["message"])
    assert 1 <= len(deltas) < reply.output_tokens / 4


async def test_follow_up_goes_into_the_same_conversation_with_history(
    owner, session_cookie, fast_demo
) -> None:
    comm = await connected(await sync_to_async(session_cookie)(owner))
    await comm.send_json_to(
        {"type": "send", "conversation": None, "text": "first", "model": "demo"}
    )
    first = await receive_until(comm, is_final)
    conversation_id = first[0]["conversation"]
    await comm.send_json_to(
        {"type": "send", "conversation": conversation_id, "text": "second", "model": "demo"}
    )
    second = await receive_until(comm, is_final)
    await comm.disconnect()
    assert second[0]["type"] == "accepted" and second[0]["created"] is False
    assert second[0]["conversation"] == conversation_id
    reply = await sync_to_async(Message.objects.get)(public_id=second[0]["message"])
    # The demo counts the whole window as input: the second turn sees the first.
    first_reply = await sync_to_async(Message.objects.get)(public_id=first[0]["message"])
    assert reply.input_tokens > first_reply.input_tokens


async def test_sending_into_another_users_conversation_is_refused_and_stores_nothing(
    owner, outsider, session_cookie, fast_demo
) -> None:
    theirs = await sync_to_async(Conversation.objects.create)(
        owner=owner, title="Private", model="demo"
    )
    before = await message_count()
    comm = await connected(await sync_to_async(session_cookie)(outsider))
    await comm.send_json_to(
        {"type": "send", "conversation": str(theirs.public_id), "text": "hi", "model": "demo"}
    )
    frame = await comm.receive_json_from(timeout=5)
    assert frame["type"] == "error" and frame["code"] == "not_found"
    # Nor may the outsider subscribe to read it.
    await comm.send_json_to({"type": "subscribe", "conversation": str(theirs.public_id)})
    frame = await comm.receive_json_from(timeout=5)
    assert frame["type"] == "error" and frame["code"] == "not_found"
    await comm.disconnect()
    assert await message_count() == before


async def test_stop_mid_stream_cancels_and_keeps_partial_text(
    owner, session_cookie, slow_demo
) -> None:
    comm = await connected(await sync_to_async(session_cookie)(owner))
    await comm.send_json_to(
        {"type": "send", "conversation": None, "text": "Tell me a lot", "model": "demo"}
    )
    accepted = await comm.receive_json_from(timeout=5)
    first_delta = await comm.receive_json_from(timeout=5)
    assert first_delta["type"] == "delta"
    await comm.send_json_to({"type": "stop", "message": accepted["message"]})
    frames = [first_delta, *await receive_until(comm, is_final)]
    await comm.disconnect()

    done = frames[-1]
    assert done["type"] == "done" and done["status"] == "cancelled"
    reply = await sync_to_async(Message.objects.get)(public_id=accepted["message"])
    assert reply.status == Message.Status.CANCELLED
    streamed = "".join(f["text"] for f in frames if f["type"] == "delta")
    full = demo_reply("Tell me a lot")
    assert reply.content == streamed
    assert reply.content and full.startswith(reply.content) and len(reply.content) < len(full)


async def test_stopping_someone_elses_reply_is_refused(
    owner, outsider, session_cookie, fast_demo
) -> None:
    conversation = await sync_to_async(Conversation.objects.create)(
        owner=owner, title="t", model="demo"
    )
    reply = await sync_to_async(Message.objects.create)(
        conversation=conversation, role="assistant", status="pending", model="demo"
    )
    comm = await connected(await sync_to_async(session_cookie)(outsider))
    await comm.send_json_to({"type": "stop", "message": str(reply.public_id)})
    frame = await comm.receive_json_from(timeout=5)
    await comm.disconnect()
    assert frame["type"] == "error" and frame["code"] == "not_found"
    await sync_to_async(reply.refresh_from_db)()
    assert reply.status == Message.Status.PENDING


@override_settings(CHAT_MAX_MESSAGE_CHARS=100)
async def test_message_over_the_size_limit_is_refused_and_stores_nothing(
    owner, session_cookie
) -> None:
    comm = await connected(await sync_to_async(session_cookie)(owner))
    await comm.send_json_to(
        {"type": "send", "conversation": None, "text": "x" * 101, "model": "demo"}
    )
    frame = await comm.receive_json_from(timeout=5)
    await comm.disconnect()
    assert frame["type"] == "error" and frame["code"] == "too_large"
    assert "100" in frame["reason"]
    assert await message_count() == 0
    assert await sync_to_async(Conversation.objects.count)() == 0


@override_settings(CHAT_MAX_FRAME_BYTES=2048)
async def test_oversized_frame_is_refused_before_parsing(owner, session_cookie) -> None:
    comm = await connected(await sync_to_async(session_cookie)(owner))
    await comm.send_to(text_data=json.dumps({"type": "send", "text": "é" * 2000}))
    frame = await comm.receive_json_from(timeout=5)
    await comm.disconnect()
    assert frame["type"] == "error" and frame["code"] == "too_large"
    assert await message_count() == 0


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        ("{not json", "bad_json"),
        ("[1, 2]", "bad_frame"),
        ('{"type": "launch"}', "unknown_type"),
        ('{"type": "send", "text": "   "}', "invalid"),
        ('{"type": "send", "text": 42}', "invalid"),
        # PostgreSQL cannot store a NUL: refused as invalid, never an internal error.
        ('{"type": "send", "text": "a\\u0000b", "model": "demo"}', "invalid"),
        ('{"type": "send", "text": "hi", "model": "demo\\u0000"}', "invalid"),
        # Half a surrogate pair: refused with the frame, never an internal error.
        ('{"type": "send", "text": "a\\ud800b", "model": "demo"}', "bad_json"),
        ('{"type": "send", "text": "hi", "model": "demo\\udfff"}', "bad_json"),
        ('{"type": "send", "text": "hi", "model": "gpt-unknown"}', "model_unavailable"),
        ('{"type": "send", "text": "hi", "conversation": "not-a-uuid"}', "invalid"),
        ('{"type": "stop", "message": null}', "invalid"),
    ],
)
async def test_bad_frames_get_an_error_and_the_socket_stays_usable(
    owner, session_cookie, fast_demo, raw, code
) -> None:
    comm = await connected(await sync_to_async(session_cookie)(owner))
    await comm.send_to(text_data=raw)
    frame = await comm.receive_json_from(timeout=5)
    assert frame == {"type": "error", "code": code, "reason": frame["reason"]}
    assert frame["reason"] and "Traceback" not in frame["reason"]
    assert await message_count() == 0

    await comm.send_json_to(
        {"type": "send", "conversation": None, "text": "still there?", "model": "demo"}
    )
    frames = await receive_until(comm, is_final)
    await comm.disconnect()
    assert frames[0]["type"] == "accepted" and frames[-1]["type"] == "done"


async def test_a_second_send_while_a_reply_streams_is_refused(
    owner, session_cookie, slow_demo
) -> None:
    comm = await connected(await sync_to_async(session_cookie)(owner))
    await comm.send_json_to({"type": "send", "conversation": None, "text": "one", "model": "demo"})
    accepted = await comm.receive_json_from(timeout=5)
    await comm.send_json_to(
        {"type": "send", "conversation": accepted["conversation"], "text": "two", "model": "demo"}
    )
    frames = await receive_until(comm, lambda f: f["type"] == "error")
    assert frames[-1]["code"] == "busy"
    contents = await sync_to_async(
        lambda: list(Message.objects.values_list("content", flat=True))
    )()
    assert "two" not in contents
    await comm.send_json_to({"type": "stop", "message": accepted["message"]})
    await receive_until(comm, is_final)
    await comm.disconnect()


async def test_subscribe_mid_stream_gets_a_snapshot_and_then_the_rest(
    owner, session_cookie, slow_demo
) -> None:
    cookie = await sync_to_async(session_cookie)(owner)
    writer = await connected(cookie)
    await writer.send_json_to(
        {"type": "send", "conversation": None, "text": "watch me", "model": "demo"}
    )
    accepted = await writer.receive_json_from(timeout=5)
    await receive_until(writer, lambda f: f["type"] == "delta" and f["seq"] >= 2)

    # A second tab (or a reconnect) subscribes while the reply is being written.
    reader = await connected(cookie)
    await reader.send_json_to({"type": "subscribe", "conversation": accepted["conversation"]})
    snapshot = await reader.receive_json_from(timeout=5)
    assert snapshot["type"] == "snapshot"
    user_turn, reply = snapshot["messages"]
    assert user_turn == {
        "id": accepted["user_message"],
        "role": "user",
        "status": "complete",
        "model": "demo",
        "text": "watch me",
        "created_at": accepted["user_created_at"],
    }
    assert reply["id"] == accepted["message"] and reply["status"] == "streaming"
    assert reply["seq"] >= 2

    text, seq = reply["text"], reply["seq"]
    first_new = seq + 1
    for frame in await receive_until(
        reader, lambda f: f["type"] == "delta" and f["seq"] >= first_new
    ):
        if frame["type"] == "delta" and frame["seq"] > seq:
            assert frame["seq"] == seq + 1, "a subscriber must not miss a delta after its snapshot"
            text, seq = text + frame["text"], frame["seq"]
    await writer.send_json_to({"type": "stop", "message": accepted["message"]})
    for frame in await receive_until(reader, is_final):
        if frame["type"] == "delta":
            assert frame["seq"] == seq + 1
            text, seq = text + frame["text"], frame["seq"]
    await reader.disconnect()
    await receive_until(writer, is_final)
    await writer.disconnect()
    stored = await sync_to_async(Message.objects.get)(public_id=accepted["message"])
    assert stored.content == text


async def test_unknown_conversation_and_foreign_one_get_the_same_answer(
    owner, outsider, session_cookie
) -> None:
    theirs = await sync_to_async(Conversation.objects.create)(owner=owner, title="t", model="demo")
    comm = await connected(await sync_to_async(session_cookie)(outsider))
    answers = []
    for conversation in (str(theirs.public_id), str(uuid.uuid4())):
        await comm.send_json_to({"type": "subscribe", "conversation": conversation})
        answers.append(await comm.receive_json_from(timeout=5))
    await comm.disconnect()
    assert answers[0] == answers[1]
    assert answers[0]["code"] == "not_found"
