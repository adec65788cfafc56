"""The chat socket's `regenerate` and `edit` frames, through the full ASGI stack."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from channels.db import database_sync_to_async as sync_to_async

from audit.catalogue import AuditAction
from audit.models import AuditEvent
from conversations.models import Message
from costs.models import CostEntry
from tests.support import connected, is_final, receive_until

pytestmark = pytest.mark.django_db(transaction=True)


async def first_turn(comm: Any, text: str = "Plan a launch") -> dict[str, Any]:
    await comm.send_json_to({"type": "send", "conversation": None, "text": text, "model": "demo"})
    frames = await receive_until(comm, is_final)
    assert frames[-1]["type"] == "done", frames
    return frames[0]


async def test_regenerate_streams_a_new_reply_and_keeps_the_old_one(
    owner, session_cookie, fast_demo
) -> None:
    comm = await connected(await sync_to_async(session_cookie)(owner))
    accepted = await first_turn(comm)
    await comm.send_json_to(
        {
            "type": "regenerate",
            "conversation": accepted["conversation"],
            "message": accepted["message"],
            "model": "demo",
        }
    )
    frames = await receive_until(comm, is_final)
    again = frames[0]
    assert again["type"] == "accepted" and again["revision"] == "regenerate"
    assert again["replaces"] == accepted["message"]
    assert again["user_message"] == accepted["user_message"]
    assert again["message"] != accepted["message"] and again["created"] is False
    done = frames[-1]
    assert done["type"] == "done" and done["message"] == again["message"]
    new = await sync_to_async(Message.objects.get)(public_id=again["message"])
    assert done["text"] == new.content  # the raw Markdown, for copying

    await comm.send_json_to({"type": "subscribe", "conversation": accepted["conversation"]})
    snapshot = (await receive_until(comm, lambda f: f["type"] == "snapshot"))[-1]
    await comm.disconnect()
    messages = snapshot["messages"]
    assert [m["id"] for m in messages] == [accepted["user_message"], again["message"]]
    assert messages[1]["version"] == 2
    assert [v["id"] for v in messages[1]["versions"]] == [accepted["message"]]
    assert all(m["created_at"] for m in messages)
    assert await sync_to_async(CostEntry.objects.count)() == 2


async def test_edit_sends_the_new_text_and_keeps_the_old_turn(
    owner, session_cookie, fast_demo
) -> None:
    comm = await connected(await sync_to_async(session_cookie)(owner))
    accepted = await first_turn(comm)
    await comm.send_json_to(
        {
            "type": "edit",
            "conversation": accepted["conversation"],
            "message": accepted["user_message"],
            "text": "Plan a product launch",
        }
    )
    frames = await receive_until(comm, is_final)
    await comm.disconnect()
    edited = frames[0]
    assert edited["type"] == "accepted" and edited["revision"] == "edit"
    assert edited["replaces"] == accepted["user_message"]
    assert edited["user_message"] != accepted["user_message"]
    assert frames[-1]["type"] == "done"
    new = await sync_to_async(Message.objects.get)(public_id=edited["user_message"])
    old = await sync_to_async(Message.objects.get)(public_id=accepted["user_message"])
    assert new.content == "Plan a product launch" and old.superseded_by_id == new.pk
    assert (
        await sync_to_async(AuditEvent.objects.filter(action=AuditAction.MESSAGE_EDITED).count)()
        == 1
    )


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ({"type": "regenerate"}, "invalid"),
        ({"type": "regenerate", "message": 42, "conversation": "x"}, "invalid"),
        ({"type": "regenerate", "message": "not-an-id"}, "invalid"),
        ({"type": "edit", "message": str(uuid.uuid4()), "conversation": None}, "invalid"),
        ({"type": "regenerate", "message": str(uuid.uuid4()), "conversation": "CONV"}, "not_found"),
        ({"type": "edit", "message": "REPLY", "conversation": "CONV", "text": "x"}, "not_found"),
        ({"type": "edit", "message": "USER", "conversation": "CONV", "text": ""}, "invalid"),
        ({"type": "edit", "message": "USER", "conversation": "CONV", "text": ["x"]}, "invalid"),
        ({"type": "regenerate", "message": "REPLY", "conversation": "CONV", "model": 7}, "invalid"),
        ({"type": "regenerate", "message": "REPLY", "conversation": "CONV", "model": "gpt-9"},
         "model_unavailable"),
    ],
)  # fmt: skip
async def test_bad_revision_frames_get_a_reason_and_change_nothing(
    owner, session_cookie, fast_demo, frame, code
) -> None:
    comm = await connected(await sync_to_async(session_cookie)(owner))
    accepted = await first_turn(comm)
    ids = {
        "CONV": accepted["conversation"],
        "REPLY": accepted["message"],
        "USER": accepted["user_message"],
    }
    await comm.send_json_to(
        {k: ids.get(v, v) if isinstance(v, str) else v for k, v in frame.items()}
    )
    answer = await comm.receive_json_from(timeout=5)
    await comm.disconnect()
    assert answer["type"] == "error" and answer["code"] == code, answer
    assert answer["reason"] and "Traceback" not in answer["reason"]
    assert await sync_to_async(Message.objects.count)() == 2
    assert await sync_to_async(Message.objects.filter(superseded_by__isnull=False).count)() == 0


async def test_regenerate_while_a_reply_streams_is_busy(owner, session_cookie, slow_demo) -> None:
    comm = await connected(await sync_to_async(session_cookie)(owner))
    await comm.send_json_to({"type": "send", "conversation": None, "text": "Hi", "model": "demo"})
    accepted = await comm.receive_json_from(timeout=5)
    await comm.send_json_to(
        {
            "type": "regenerate",
            "conversation": accepted["conversation"],
            "message": accepted["message"],
        }
    )
    frames = await receive_until(comm, lambda f: f["type"] == "error")
    error = frames[-1]
    assert error["code"] == "busy" and "message" not in error
    await comm.send_json_to({"type": "stop", "message": accepted["message"]})
    await receive_until(comm, is_final)
    await comm.disconnect()


async def test_another_persons_reply_cannot_be_regenerated_over_the_socket(
    owner, colleague, session_cookie, fast_demo
) -> None:
    mine = await connected(await sync_to_async(session_cookie)(owner))
    accepted = await first_turn(mine)
    await mine.disconnect()
    theirs = await connected(await sync_to_async(session_cookie)(colleague))
    for frame in (
        {"type": "regenerate", "message": accepted["message"]},
        {"type": "edit", "message": accepted["user_message"], "text": "Mine now"},
    ):
        await theirs.send_json_to({**frame, "conversation": accepted["conversation"]})
        answer = await theirs.receive_json_from(timeout=5)
        assert answer["type"] == "error" and answer["code"] == "not_found"
    await theirs.disconnect()
    assert await sync_to_async(Message.objects.count)() == 2
    denials = await sync_to_async(
        AuditEvent.objects.filter(
            action=AuditAction.CONVERSATION_ACCESS_DENIED, actor_id=colleague.pk
        ).count
    )()
    assert denials == 2
