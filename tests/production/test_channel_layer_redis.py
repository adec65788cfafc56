"""The Redis channel layer as configured for production: idle sockets, drops, connections.

Run by `make test-production` against Redis on 127.0.0.1:6379.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import uuid
from typing import Any
from urllib.parse import urlparse

import pytest
from channels.db import database_sync_to_async as sync_to_async
from django.conf import settings
from redis import Redis

from conversations import streams
from conversations.models import Conversation
from enterprise_ai.channel_layers import RedisChannelLayer, drops_key
from tests.support import connected, receive_until

pytestmark = [pytest.mark.production, pytest.mark.django_db(transaction=True)]


def redis_client() -> Redis:
    return Redis.from_url(settings.REDIS_URL)


async def test_an_idle_socket_outlives_the_layers_blocking_read(owner, session_cookie) -> None:
    """redis-py's 5 s socket timeout equalled channels-redis's 5 s BZPOPMIN: an idle socket
    was closed with 1011 after about 5 s, and a model silent that long lost its socket."""
    conversation = await sync_to_async(Conversation.objects.create)(
        owner=owner, title="Idle", model="demo"
    )
    comm = await connected(await sync_to_async(session_cookie)(owner))
    await comm.send_json_to({"type": "subscribe", "conversation": str(conversation.public_id)})
    await receive_until(comm, lambda f: f["type"] == "snapshot")

    assert await comm.receive_nothing(timeout=12, interval=0.5)  # idle past two blocking reads

    event = {
        "type": "chat.notice",
        "conversation": str(conversation.public_id),
        "message": str(uuid.uuid4()),
        "text": "still here",
    }
    assert await asyncio.to_thread(streams.broadcast, conversation.public_id, event)
    frame = (await receive_until(comm, lambda f: f["type"] == "notice", timeout=5))[-1]
    await comm.disconnect()
    assert frame["text"] == "still here"


async def test_sends_over_capacity_are_dropped_counted_and_logged(caplog) -> None:
    layer = RedisChannelLayer(
        hosts=[{"address": settings.REDIS_URL}],
        prefix=f"{settings.REDIS_KEY_PREFIX}:test-capacity:{uuid.uuid4().hex[:8]}",
        capacity=2,
    )
    channel = await layer.new_channel()
    await layer.group_add("full", channel)
    counter = redis_client()
    before = int(counter.get(drops_key()) or 0)
    with caplog.at_level(logging.WARNING, logger="enterprise_ai.channel_layers"):
        for n in range(5):
            await layer.group_send("full", {"type": "chat.delta", "n": n})
    assert int(counter.get(drops_key()) or 0) - before == 3
    assert "over capacity" in caplog.text
    received = [await layer.receive(channel) for _ in range(2)]
    assert [m["n"] for m in received] == [0, 1]
    await layer.flush()


def test_sends_from_worker_threads_reuse_the_process_connections(monkeypatch) -> None:
    """Each send used to run on a new event loop with a new pool: a new Redis connection
    for every batch of deltas of every reply."""
    port = urlparse(settings.REDIS_URL).port or 6379
    conversation_id = uuid.uuid4()
    event = {"type": "chat.notice", "conversation": "x", "message": "y", "text": "z"}
    assert streams.broadcast(conversation_id, event)  # the process's pools exist now

    connects: list[object] = []
    real_connect = socket.socket.connect

    def counting_connect(sock: socket.socket, address: Any) -> Any:
        if isinstance(address, tuple) and address[1] == port:
            connects.append(address)
        return real_connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", counting_connect)

    def send_many() -> None:
        for _ in range(50):
            assert streams.broadcast(conversation_id, event)

    threads = [threading.Thread(target=send_many) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # 200 sends from 4 threads share the send loop's pool: a few connections at most.
    assert len(connects) <= 4, connects
