"""A refused message over the chat socket: an `error` frame naming the data, nothing stored,
the socket still usable."""

from __future__ import annotations

import pytest
from channels.db import database_sync_to_async as sync_to_async

from audit.catalogue import AuditAction
from audit.models import AuditEvent
from conversations.models import Message
from guardrails.models import GuardrailPolicy
from tests.support import connected, is_final, receive_until

pytestmark = pytest.mark.django_db(transaction=True)


def block_cards() -> None:
    policy = GuardrailPolicy.current()
    policy.dlp_mode = "block"
    policy.save()


async def test_a_blocked_message_gets_an_error_frame_and_nothing_is_stored(
    owner, session_cookie, fast_demo
) -> None:
    await sync_to_async(block_cards)()
    comm = await connected(await sync_to_async(session_cookie)(owner))
    await comm.send_json_to(
        {"type": "send", "conversation": None, "text": "card 4111 1111 1111 1111", "model": "demo"}
    )
    frame = await comm.receive_json_from(timeout=5)
    assert frame == {
        "type": "error",
        "code": "guardrail_blocked",
        "reason": "This message looks like it contains a payment card number. "
        "Remove it and try again.",
    }
    assert await sync_to_async(Message.objects.count)() == 0
    blocked = await sync_to_async(AuditEvent.objects.get)(action=AuditAction.PII_BLOCKED)
    assert blocked.request_id  # the socket frame's request id

    await comm.send_json_to(
        {"type": "send", "conversation": None, "text": "card ending 1111", "model": "demo"}
    )
    frames = await receive_until(comm, is_final)
    await comm.disconnect()
    assert frames[0]["type"] == "accepted" and frames[-1]["type"] == "done"


async def test_a_redacted_message_is_accepted_with_a_notice_naming_the_kinds(
    owner, session_cookie, fast_demo
) -> None:
    def redact() -> None:
        policy = GuardrailPolicy.current()
        policy.dlp_mode = "redact"
        policy.save()

    await sync_to_async(redact)()
    comm = await connected(await sync_to_async(session_cookie)(owner))
    await comm.send_json_to(
        {"type": "send", "conversation": None, "text": "Mail ann@example.com", "model": "demo"}
    )
    frames = await receive_until(comm, is_final)
    accepted = frames[0]
    assert accepted["type"] == "accepted"
    assert accepted["notice"] == (
        "Your organisation's data policy: the model sees a placeholder instead of an e-mail "
        "address in this message. Your conversation keeps the original."
    )
    assert "ann@example.com" not in accepted["notice"]

    # Without a finding there is no notice.
    await comm.send_json_to(
        {
            "type": "send",
            "conversation": accepted["conversation"],
            "text": "Thanks",
            "model": "demo",
        }
    )
    frames = await receive_until(comm, is_final)
    await comm.disconnect()
    assert frames[0]["type"] == "accepted" and "notice" not in frames[0]
