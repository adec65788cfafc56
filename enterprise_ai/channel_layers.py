"""The channel layers: the embedded default's in-memory one, and production's Redis one.

Channels' `InMemoryChannelLayer` keeps one `asyncio.Queue` per channel, which belongs to the
server's event loop. The embedded dispatcher generates replies on background threads, whose
`async_to_sync(group_send)` runs on a different loop: putting into the server loop's queue
from there would not wake the consumer waiting on it. This layer remembers the loop its
consumers receive on and hands sends from any other loop over to it, thread-safely.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

import channels_redis.core
import redis.asyncio
from channels.layers import InMemoryChannelLayer
from django.conf import settings

logger = logging.getLogger(__name__)


class ThreadSafeInMemoryChannelLayer(InMemoryChannelLayer):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._home_loop: asyncio.AbstractEventLoop | None = None

    def _remember_loop(self) -> None:
        self._home_loop = asyncio.get_running_loop()

    async def _on_home_loop(self, call: Callable[..., Coroutine[Any, Any, Any]], *args: Any) -> Any:
        home = self._home_loop
        if (
            home is None
            or home is asyncio.get_running_loop()
            or home.is_closed()
            or not home.is_running()
        ):
            return await call(*args)
        future: concurrent.futures.Future[Any] = asyncio.run_coroutine_threadsafe(call(*args), home)
        return await asyncio.wrap_future(future)

    async def receive(self, channel: str) -> dict[str, Any]:
        self._remember_loop()
        return await super().receive(channel)

    async def group_add(self, group: str, channel: str) -> None:
        self._remember_loop()
        await super().group_add(group, channel)

    async def send(self, channel: str, message: dict[str, Any]) -> None:
        await self._on_home_loop(super().send, channel, message)

    async def group_send(self, group: str, message: dict[str, Any]) -> None:
        await self._on_home_loop(super().group_send, group, message)


# --- The production channel layer ------------------------------------------------------------

_GROUP_SEND = """
local expiry = tonumber(ARGV[#ARGV])
local now = tonumber(ARGV[#ARGV - 1])
local dropped = 0
for i = 1, #KEYS - 1 do
    redis.call('ZREMRANGEBYSCORE', KEYS[i], 0, now - expiry)
    if redis.call('ZCOUNT', KEYS[i], '-inf', '+inf') < tonumber(ARGV[i + #KEYS - 1]) then
        redis.call('ZADD', KEYS[i], now, ARGV[i])
        redis.call('EXPIRE', KEYS[i], expiry)
    else
        dropped = dropped + 1
    end
end
if dropped > 0 then
    redis.call('INCRBY', KEYS[#KEYS], dropped)
end
return dropped
"""


class RedisChannelLayer(channels_redis.core.RedisChannelLayer):
    """channels-redis with bounded waiting pools, fewer round trips and counted drops.

    * Connection pools block (up to their timeout) when all connections are busy, instead
      of raising MaxConnectionsError: a thousand sockets closing at once wait their turn.
    * `group_send` takes two round trips instead of four (membership in one pipeline, then
      one script that expires, checks capacity and adds), since it runs for every batch of
      every reply.
    * A message dropped because a channel is over capacity is logged as a WARNING and
      counted in Redis (`<REDIS_KEY_PREFIX>:stats:channel_layer_drops`), so that operators
      see it; the library only logs it at INFO. The socket's client repairs the gap from
      the stored reply (docs/websocket-protocol.md).
    """

    def create_pool(self, index: int) -> Any:
        host = dict(self.hosts[index])
        address = host.pop("address")
        return redis.asyncio.BlockingConnectionPool.from_url(address, **host)

    async def group_send(self, group: str, message: dict[str, Any]) -> None:
        if not self.require_valid_group_name(group):
            raise TypeError(f"Group name not valid: {group!r}")
        key = self._group_key(group)
        connection = self.connection(self.consistent_hash(group))
        pipe = connection.pipeline(transaction=False)
        pipe.zremrangebyscore(key, min=0, max=int(time.time()) - self.group_expiry)
        pipe.zrange(key, 0, -1)
        _, members = await pipe.execute()
        channel_names = [name.decode("utf8") for name in members]
        if not channel_names:
            return
        by_connection, messages, capacities = self._map_channel_keys_to_connection(
            channel_names, message
        )
        dropped = 0
        for index, channel_keys in by_connection.items():
            args = [messages[k] for k in channel_keys] + [capacities[k] for k in channel_keys]
            dropped += await self.connection(index).eval(
                _GROUP_SEND,
                len(channel_keys) + 1,
                *channel_keys,
                drops_key(),
                *args,
                time.time(),
                self.expiry,
            )
        if dropped:
            logger.warning(
                "channel layer over capacity: %d of %d channels of a group dropped a message",
                dropped,
                len(channel_names),
            )


def drops_key() -> str:
    """The Redis key counting messages dropped because a channel was over capacity."""
    return f"{settings.REDIS_KEY_PREFIX}:stats:channel_layer_drops"
