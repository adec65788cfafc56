"""The embedded default's channel layer.

Channels' `InMemoryChannelLayer` keeps one `asyncio.Queue` per channel, which belongs to the
server's event loop. The embedded dispatcher generates replies on background threads, whose
`async_to_sync(group_send)` runs on a different loop: putting into the server loop's queue
from there would not wake the consumer waiting on it. This layer remembers the loop its
consumers receive on and hands sends from any other loop over to it, thread-safely.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable, Coroutine
from typing import Any

from channels.layers import InMemoryChannelLayer


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
