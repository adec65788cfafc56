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

from enterprise_ai.logging import Throttled

logger = logging.getLogger(__name__)
# A flood drops many messages the same way: one line every 10 s (the counter has them all).
warn = Throttled(logger)


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

# KEYS: the n channel keys, the drop counter, and optionally a key to SET.
# ARGV: n, the n messages, the n capacities, now, expiry, and optionally the value and its TTL.
_GROUP_SEND = """
local n = tonumber(ARGV[1])
local now = tonumber(ARGV[2 + 2 * n])
local expiry = tonumber(ARGV[3 + 2 * n])
local dropped = 0
for i = 1, n do
    redis.call('ZREMRANGEBYSCORE', KEYS[i], 0, now - expiry)
    if redis.call('ZCOUNT', KEYS[i], '-inf', '+inf') < tonumber(ARGV[1 + n + i]) then
        redis.call('ZADD', KEYS[i], now, ARGV[1 + i])
        redis.call('EXPIRE', KEYS[i], expiry)
    else
        dropped = dropped + 1
    end
end
if dropped > 0 then
    redis.call('INCRBY', KEYS[n + 1], dropped)
end
if #KEYS > n + 1 then
    redis.call('SET', KEYS[n + 2], ARGV[4 + 2 * n], 'EX', ARGV[5 + 2 * n])
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

    async def group_send(
        self,
        group: str,
        message: dict[str, Any],
        *,
        also_set: tuple[str, bytes, int] | None = None,
    ) -> None:
        """Send `message` to every channel of `group`; with `also_set` (key, value, seconds),
        SET that key in the same script, so that a reply's snapshot and the delta that
        matches it are written together in one round trip (conversations/streams.py)."""
        if not self.require_valid_group_name(group):
            raise TypeError(f"Group name not valid: {group!r}")
        key = self._group_key(group)
        group_index = self.consistent_hash(group)
        pipe = self.connection(group_index).pipeline(transaction=False)
        pipe.zremrangebyscore(key, min=0, max=int(time.time()) - self.group_expiry)
        pipe.zrange(key, 0, -1)
        _, members = await pipe.execute()
        channel_names = [name.decode("utf8") for name in members]
        by_connection: dict[int, list[Any]] = {}
        messages: dict[Any, bytes] = {}
        capacities: dict[Any, int] = {}
        if channel_names:
            by_connection, messages, capacities = self._map_channel_keys_to_connection(
                channel_names, message
            )
        pending_set = also_set
        if pending_set is not None and group_index not in by_connection:
            # Nobody on the group's shard is listening: the snapshot still has to be kept.
            set_key, value, seconds = pending_set
            await self.connection(group_index).set(set_key, value, ex=seconds)
            pending_set = None
        dropped = 0
        for index, channel_keys in by_connection.items():
            keys = [*channel_keys, drops_key()]
            args: list[Any] = [len(channel_keys)]
            args += [messages[k] for k in channel_keys] + [capacities[k] for k in channel_keys]
            args += [time.time(), self.expiry]
            if pending_set is not None and index == group_index:
                keys.append(pending_set[0])
                args += [pending_set[1], pending_set[2]]
                pending_set = None
            dropped += await self.connection(index).eval(_GROUP_SEND, len(keys), *keys, *args)
        if dropped:
            warn.warning(
                "channel layer over capacity: %d of %d channels of a group dropped a message",
                dropped,
                len(channel_names),
            )


def drops_key() -> str:
    """The Redis key counting messages dropped because a channel was over capacity."""
    return f"{settings.REDIS_KEY_PREFIX}:stats:channel_layer_drops"
