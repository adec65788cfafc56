"""Ending a session closes its chat sockets through the Redis channel layer (PostgreSQL
sessions, channels-redis), as on the production path. Run by `make test-production`."""

from __future__ import annotations

import pytest
from channels.db import database_sync_to_async as sync_to_async
from channels.layers import get_channel_layer

from accounts.models import UserSession
from conversations.consumers import CLOSE_SESSION_ENDED
from conversations.models import Message
from tests.support import connected, signed_in

pytestmark = [pytest.mark.production, pytest.mark.django_db(transaction=True)]


async def test_logout_closes_the_socket_through_redis(owner) -> None:
    assert type(get_channel_layer()).__module__ == "enterprise_ai.channel_layers"
    client, cookie = await sync_to_async(signed_in)(owner)
    comm = await connected(cookie)
    response = await sync_to_async(client.post)("/accounts/logout/", secure=True)
    assert response.status_code == 302
    output = await comm.receive_output(timeout=10)
    assert output == {"type": "websocket.close", "code": CLOSE_SESSION_ENDED}
    await comm.send_json_to({"type": "send", "conversation": None, "text": "hi", "model": "demo"})
    assert await comm.receive_nothing(timeout=0.5)
    assert await sync_to_async(Message.objects.count)() == 0
    await comm.disconnect()


async def test_end_all_sessions_closes_every_socket_through_redis(owner, administrator) -> None:
    _, first_cookie = await sync_to_async(signed_in)(owner)
    _, second_cookie = await sync_to_async(signed_in)(owner)
    first, second = await connected(first_cookie), await connected(second_cookie)
    console, _ = await sync_to_async(signed_in)(administrator)
    response = await sync_to_async(console.post)(
        "/admin/accounts/user/",
        {"action": "end_all_sessions", "_selected_action": [owner.pk]},
        secure=True,
    )
    assert response.status_code == 302
    for comm in (first, second):
        output = await comm.receive_output(timeout=10)
        assert output == {"type": "websocket.close", "code": CLOSE_SESSION_ENDED}
        await comm.disconnect()
    assert not await sync_to_async(UserSession.objects.filter(user_id=owner.pk).exists)()
