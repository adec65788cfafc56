"""Live state of replies being generated, shared by web and worker processes.

* The conversation's channel-layer group carries deltas and `done` to every socket watching.
* The cache holds each streaming reply's text so far and its last sequence number, so that
  a socket that (re)subscribes mid-reply starts from an exact snapshot and misses nothing.
* The cache also carries stop requests from the web process to the worker (read for all of
  a process's replies at once by `conversations.inflight`).

Sends from synchronous code (worker threads, the embedded dispatcher's threads) go through
one event loop per process that lives as long as the process (`_SendLoop`), so the channel
layer keeps its Redis connections instead of opening new ones for every batch of deltas.
A send that fails (Redis restarting) is logged and dropped, never raised into the reply:
the reply is still stored, and a socket that reconnects reads it from its snapshot.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import pickle
import threading
from collections.abc import Coroutine, Sequence
from typing import Any, TypedDict, cast
from uuid import UUID

from channels.layers import get_channel_layer
from django.conf import settings
from django.core.cache import cache

from enterprise_ai.channel_layers import RedisChannelLayer
from enterprise_ai.logging import Throttled
from observability import metrics

logger = logging.getLogger(__name__)
# Outages repeat the same failure for every batch of every reply: one line every 10 s.
warn = Throttled(logger)

# How long a synchronous caller waits for one channel-layer send before giving up on it.
SEND_TIMEOUT_SECONDS = 10.0


class StreamSnapshot(TypedDict):
    seq: int
    text: str


def conversation_group(conversation_id: UUID) -> str:
    return f"conversation.{conversation_id.hex}"


def _snapshot_key(message_id: UUID) -> str:
    return f"reply:{message_id.hex}:snapshot"


def _stop_key(message_id: UUID) -> str:
    return f"reply:{message_id.hex}:stop"


def snapshot_save(message_id: UUID, *, seq: int, text: str) -> None:
    try:
        cache.set(
            _snapshot_key(message_id), {"seq": seq, "text": text}, settings.CHAT_REPLY_MAX_SECONDS
        )
    except Exception as exc:  # Redis unavailable: late subscribers get the stored text
        warn.warning("reply snapshot not saved: %s", type(exc).__name__)


def snapshot_get(message_id: UUID) -> StreamSnapshot | None:
    value = cache.get(_snapshot_key(message_id))
    return cast(StreamSnapshot, value) if isinstance(value, dict) else None


def stop_request(message_id: UUID) -> None:
    cache.set(_stop_key(message_id), True, settings.CHAT_REPLY_MAX_SECONDS)


def stops_requested(message_ids: Sequence[UUID]) -> set[UUID]:
    """Which of these replies have been asked to stop: one cache round trip for all."""
    keys = {_stop_key(message_id): message_id for message_id in message_ids}
    found = cache.get_many(list(keys))
    return {keys[key] for key, value in found.items() if value}


def stream_forget(message_id: UUID) -> None:
    try:
        cache.delete_many([_snapshot_key(message_id), _stop_key(message_id)])
    except Exception as exc:  # they expire on their own
        warn.warning("reply stream state not removed: %s", type(exc).__name__)


class _SendLoop:
    """An event loop on a daemon thread, for channel-layer sends from synchronous code.

    `async_to_sync` would run every send on a new event loop, and channels-redis keeps its
    connection pools per loop: each batch of deltas then opened a new Redis connection.
    Sends submitted from one thread run in submission order (each waits for the previous).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pid = 0

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            # After a fork (Celery's prefork pool) the parent's loop thread does not exist.
            if self._loop is None or self._pid != os.getpid() or self._loop.is_closed():
                loop = asyncio.new_event_loop()
                threading.Thread(
                    target=loop.run_forever, name="channel-layer-sends", daemon=True
                ).start()
                self._loop, self._pid = loop, os.getpid()
            return self._loop

    def run(self, coroutine: Coroutine[Any, Any, Any]) -> Any:
        future = asyncio.run_coroutine_threadsafe(coroutine, self._running_loop())
        try:
            return future.result(timeout=SEND_TIMEOUT_SECONDS)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise


_send_loop = _SendLoop()


def publish_delta(
    conversation_id: UUID, event: dict[str, Any], *, message_id: UUID, seq: int, text: str
) -> bool:
    """Save the reply's snapshot (`text` so far, `seq`) and send `event`, the delta that
    brings a subscriber to it; never raises (see `broadcast`).

    On the production layer both happen in one Redis round trip, in one script, so the
    snapshot and the delta are never seen apart; elsewhere the snapshot is saved first.
    """
    layer = get_channel_layer()
    if isinstance(layer, RedisChannelLayer) and layer.ring_size == 1:
        also_set = (
            cache.make_and_validate_key(_snapshot_key(message_id)),
            # The cache's own format (django.core.cache.backends.redis.RedisSerializer), so
            # that `snapshot_get` reads it through the cache as before.
            pickle.dumps({"seq": seq, "text": text}, pickle.HIGHEST_PROTOCOL),
            settings.CHAT_REPLY_MAX_SECONDS,
        )
        group = conversation_group(conversation_id)
        return _send(layer.group_send(group, event, also_set=also_set), event)
    snapshot_save(message_id, seq=seq, text=text)
    return broadcast(conversation_id, event)


def broadcast(conversation_id: UUID, event: dict[str, Any]) -> bool:
    """Send an event to every socket subscribed to the conversation (from sync code).

    `event["type"]` names the consumer handler (`chat.delta` → `chat_delta`). Returns False,
    with a warning logged, when the channel layer could not take it (the sockets then
    repair the gap from the stored reply); never raises.
    """
    layer = get_channel_layer()
    if layer is None:  # pragma: no cover - CHANNEL_LAYERS is always configured
        return False
    return _send(layer.group_send(conversation_group(conversation_id), event), event)


def _send(coroutine: Coroutine[Any, Any, Any], event: dict[str, Any]) -> bool:
    try:
        _send_loop.run(coroutine)
    except Exception as exc:
        metrics.channel_send_failed()
        warn.warning("channel layer send failed (%s): %s", event.get("type"), type(exc).__name__)
        return False
    return True
