"""Live state of replies being generated, shared by web and worker processes.

* The conversation's channel-layer group carries deltas and `done` to every socket watching.
* The cache holds each streaming reply's text so far and its last sequence number, so that
  a socket that (re)subscribes mid-reply starts from an exact snapshot and misses nothing.
* The cache also carries stop requests from the web process to the worker.
"""

from __future__ import annotations

from typing import Any, TypedDict, cast
from uuid import UUID

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings
from django.core.cache import cache


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
    cache.set(
        _snapshot_key(message_id), {"seq": seq, "text": text}, settings.CHAT_REPLY_MAX_SECONDS
    )


def snapshot_get(message_id: UUID) -> StreamSnapshot | None:
    value = cache.get(_snapshot_key(message_id))
    return cast(StreamSnapshot, value) if isinstance(value, dict) else None


def stop_request(message_id: UUID) -> None:
    cache.set(_stop_key(message_id), True, settings.CHAT_REPLY_MAX_SECONDS)


def stop_requested(message_id: UUID) -> bool:
    return bool(cache.get(_stop_key(message_id)))


def stream_forget(message_id: UUID) -> None:
    cache.delete_many([_snapshot_key(message_id), _stop_key(message_id)])


def broadcast(conversation_id: UUID, event: dict[str, Any]) -> None:
    """Send an event to every socket subscribed to the conversation (from sync code).

    `event["type"]` names the consumer handler (`chat.delta` → `chat_delta`).
    """
    layer = get_channel_layer()
    if layer is None:  # pragma: no cover - CHANNEL_LAYERS is always configured
        return
    async_to_sync(layer.group_send)(conversation_group(conversation_id), event)
