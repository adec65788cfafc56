"""Input PostgreSQL cannot store, through the real socket: refused as `invalid`, not `internal`.

SQLite stores a NUL character in text; PostgreSQL refuses it (text and jsonb alike), so
only this run shows whether such a frame reaches the database.
"""

from __future__ import annotations

import logging

import pytest
from channels.db import database_sync_to_async

from audit.models import AuditEvent
from audit.services import audit_chain_flush
from conversations.models import Message
from tests.support import connected

pytestmark = [pytest.mark.production, pytest.mark.django_db(transaction=True)]


@pytest.mark.parametrize(
    "frame",
    [
        {"type": "send", "conversation": None, "text": "salary\x00table", "model": "demo"},
        {"type": "send", "conversation": None, "text": "hello", "model": "demo\x00"},
    ],
    ids=["text", "model"],
)
async def test_a_nul_character_is_refused_as_invalid_and_stores_nothing(
    owner, session_cookie, caplog, frame
) -> None:
    # The socket's own events (ws.connect, written just after the handshake) are left out.
    not_socket = AuditEvent.objects.exclude(action__startswith="ws.")
    comm = await connected(await database_sync_to_async(session_cookie)(owner))
    await database_sync_to_async(audit_chain_flush)()
    events_before = await database_sync_to_async(not_socket.count)()
    with caplog.at_level(logging.ERROR):
        await comm.send_json_to(frame)
        answer = await comm.receive_json_from(timeout=10)
    await database_sync_to_async(audit_chain_flush)()  # chained just after their commits
    events_after = await database_sync_to_async(not_socket.count)()
    await comm.disconnect()

    assert answer["type"] == "error" and answer["code"] == "invalid", answer
    assert "NUL" in answer["reason"]
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert await database_sync_to_async(Message.objects.count)() == 0
    # Refused before the model lookup: no `model.refused` event carrying the NUL.
    assert events_after == events_before
