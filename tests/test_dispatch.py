"""The embedded dispatcher and channel layer: work on a background thread, events reach the loop."""

from __future__ import annotations

import asyncio
import threading
import time

from asgiref.sync import async_to_sync

from enterprise_ai.celery import app
from enterprise_ai.channel_layers import ThreadSafeInMemoryChannelLayer
from enterprise_ai.dispatch import dispatch

ran = threading.Event()
ran_on: list[str] = []


@app.task(name="tests.record_thread")
def record_thread(value: str) -> None:
    ran_on.append(f"{value}:{threading.current_thread().name}")
    ran.set()


def test_thread_dispatch_runs_the_task_in_the_background(settings) -> None:
    settings.TASK_DISPATCH = "thread"
    ran.clear()
    dispatch(record_thread, "x")
    assert ran.wait(5)
    assert ran_on[-1].startswith("x:dispatch")


async def test_group_send_from_a_worker_thread_wakes_the_consumer_loop() -> None:
    layer = ThreadSafeInMemoryChannelLayer()
    channel = await layer.new_channel()
    await layer.group_add("conversation.test", channel)
    receiving = asyncio.ensure_future(layer.receive(channel))
    await asyncio.sleep(0)  # the receiver is now waiting on this loop

    sender = threading.Thread(
        target=lambda: async_to_sync(layer.group_send)(
            "conversation.test", {"type": "chat.delta", "n": 1}
        )
    )
    started = time.monotonic()
    sender.start()
    message = await asyncio.wait_for(receiving, timeout=10)
    waited = time.monotonic() - started
    await asyncio.to_thread(sender.join, 5)
    assert not sender.is_alive()
    assert message == {"type": "chat.delta", "n": 1}
    # Channels' plain in-memory layer delivers only when something else wakes the loop
    # (here: the 10 s timeout). Delivery must not wait for that.
    assert waited < 5, f"delivered only after {waited:.1f}s: the loop was not woken"
