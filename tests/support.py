"""Helpers for socket tests: open the real ASGI application, collect frames."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.test import Client

from enterprise_ai.asgi import application

ALLOWED_ORIGIN = b"http://localhost"


def early_in_a_minute(*, latest_second: float = 45) -> None:
    """Wait, if need be, until a new minute starts, so that a test's hits all fall in one
    fixed one-minute rate-limit window (windows are aligned to whole minutes)."""
    into_minute = time.time() % 60
    if into_minute > latest_second:
        time.sleep(60 - into_minute + 0.1)


def signed_in(user: Any) -> tuple[Client, str]:
    """A browser signed in as `user`: its client and the Cookie header for its socket."""
    client = Client()
    client.force_login(user)
    key = client.cookies[settings.SESSION_COOKIE_NAME].value
    return client, f"{settings.SESSION_COOKIE_NAME}={key}"


def communicator(
    cookie: str | None, origin: bytes | None = ALLOWED_ORIGIN
) -> WebsocketCommunicator:
    """A client of the full ASGI stack (origin check, session auth, routing, consumer)."""
    headers: list[tuple[bytes, bytes]] = [(b"host", b"localhost")]
    if origin is not None:
        headers.append((b"origin", origin))
    if cookie is not None:
        headers.append((b"cookie", cookie.encode()))
    return WebsocketCommunicator(application, "/ws/chat/", headers=headers)


async def connected(cookie: str) -> WebsocketCommunicator:
    """An open socket for the session in `cookie` (fails the test if refused)."""
    comm = communicator(cookie)
    ok, code = await comm.connect()
    assert ok, f"socket refused with close code {code}"
    return comm


async def receive_until(
    comm: WebsocketCommunicator,
    stop: Callable[[dict[str, Any]], bool],
    *,
    timeout: float = 15,
) -> list[dict[str, Any]]:
    """Frames received up to and including the first one for which `stop` is true."""
    frames: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"no final frame within {timeout}s; got {frames!r}")
        frame = await comm.receive_json_from(timeout=remaining)
        frames.append(frame)
        if stop(frame):
            return frames


def is_final(frame: dict[str, Any]) -> bool:
    return frame["type"] in {"done", "error"}
