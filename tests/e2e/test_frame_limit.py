"""The server itself (daphne via `manage.py serve`) refuses oversized WebSocket frames.

Before this limit, daphne buffered any frame up to 1 MiB and the consumer refused it after
the fact. Now a frame or message over CHAT_MAX_FRAME_BYTES plus a margin closes the socket
with 1009 from the frame headers alone, and the server carries on serving everyone else.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import struct
import time
import urllib.request
from collections.abc import AsyncIterator
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.typing import Origin

from enterprise_ai.daphne_server import MARGIN_BYTES
from tests.e2e.conftest import Server
from tests.e2e.test_embedded_server import login

pytestmark = pytest.mark.e2e

FRAME_LIMIT = 131_072  # CHAT_MAX_FRAME_BYTES's default, which the embedded server runs with
SERVER_LIMIT = FRAME_LIMIT + MARGIN_BYTES


def socket_to(server: Server, cookie: str) -> Any:
    return connect(
        server.base_url.replace("http://", "ws://") + "/ws/chat/",
        origin=Origin(server.origin),
        additional_headers={"Cookie": cookie},
        open_timeout=10,
        max_size=None,
    )


def send_frame(text: str) -> str:
    return json.dumps({"type": "send", "conversation": None, "text": text, "model": "demo"})


async def closed_code(socket: ClientConnection, timeout: float = 10) -> tuple[int, str]:
    """Wait for the server to close the socket; its close code and reason."""
    with pytest.raises(ConnectionClosed) as closed:
        async with asyncio.timeout(timeout):
            while True:
                await socket.recv()
    assert closed.value.rcvd is not None, "the server closed without a close frame"
    return closed.value.rcvd.code, closed.value.rcvd.reason


def conversation_count(server: Server, cookie: str) -> int:
    request = urllib.request.Request(f"{server.base_url}/", headers={"Cookie": cookie})
    with urllib.request.urlopen(request, timeout=10) as response:
        page = response.read().decode()
    return len(re.findall(r'<li><a href="/c/[0-9a-f-]+/" data-id=', page))


async def complete_reply(socket: ClientConnection, text: str) -> dict[str, Any]:
    await socket.send(send_frame(text))
    deadline = time.monotonic() + 30
    while True:
        assert time.monotonic() < deadline
        frame = json.loads(await socket.recv())
        if frame["type"] in {"done", "error"}:
            return frame


async def test_an_oversized_message_closes_the_socket_with_1009(embedded_server: Server) -> None:
    cookie = login(embedded_server)
    before = conversation_count(embedded_server, cookie)
    async with socket_to(embedded_server, cookie) as bystander:
        async with socket_to(embedded_server, cookie) as socket:
            # Compressed (permessage-deflate), 512 KiB of one letter is a frame of a few
            # hundred bytes: the limit applies to what it inflates to.
            extensions = socket.response.headers.get("Sec-WebSocket-Extensions", "")
            assert "permessage-deflate" in extensions
            await socket.send(send_frame("x" * (512 * 1024)))
            code, reason = await closed_code(socket)
        assert code == 1009
        assert f"limit of {SERVER_LIMIT} octets" in reason
        async with socket_to(embedded_server, cookie) as socket:
            await socket.send(send_frame("x" * (4 * 1024 * 1024)))  # over daphne's own 1 MiB
            code, _ = await closed_code(socket)
        assert code == 1009

        # Nothing of it was stored, and the socket next to it still works.
        assert conversation_count(embedded_server, cookie) == before
        done = await complete_reply(bystander, "Still here")
        assert done["type"] == "done"
    assert conversation_count(embedded_server, cookie) == before + 1


async def test_a_frame_is_refused_from_its_header_before_its_payload_arrives(
    embedded_server: Server,
) -> None:
    """Announce 512 KiB, send 64 KiB of it: the 1009 comes without waiting for the rest."""
    cookie = login(embedded_server)
    async with socket_to(embedded_server, cookie) as socket:
        mask = os.urandom(4)
        header = bytes([0x81, 0x80 | 127]) + struct.pack("!Q", 512 * 1024) + mask
        chunk = bytes(b ^ mask[i % 4] for i, b in enumerate(b"x" * 65_536))
        socket.transport.write(header + chunk)
        code, reason = await closed_code(socket, timeout=5)
    assert code == 1009
    assert f"frame size {512 * 1024} exceeds payload limit of {SERVER_LIMIT}" in reason


async def test_a_message_in_many_small_frames_is_refused_too(embedded_server: Server) -> None:
    cookie = login(embedded_server)

    async def fragments() -> AsyncIterator[str]:
        yield send_frame("y" * 16_000)[:-2]
        for _ in range(40):  # 40 × 16 000 bytes, each frame far under the limit
            yield "y" * 16_000
        yield '"}'

    async with socket_to(embedded_server, cookie) as socket:
        with contextlib.suppress(ConnectionClosed):  # closed while still sending
            await socket.send(fragments())
        code, reason = await closed_code(socket)
    assert code == 1009
    assert f"exceeds payload limit of {SERVER_LIMIT} octets" in reason


async def test_just_over_the_chat_limit_gets_the_consumers_explanation(
    embedded_server: Server,
) -> None:
    """Within the margin, the consumer's `too_large` error explains; the socket stays open."""
    cookie = login(embedded_server)
    async with socket_to(embedded_server, cookie) as socket:
        await socket.send(send_frame("z" * (FRAME_LIMIT + 100)))
        error = json.loads(await asyncio.wait_for(socket.recv(), 10))
        assert error["type"] == "error" and error["code"] == "too_large"
        done = await complete_reply(socket, "And a normal one")
        assert done["type"] == "done"
