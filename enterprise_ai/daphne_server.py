"""Daphne with a limit on the size of what a WebSocket client may send.

The chat consumer refuses frames over CHAT_MAX_FRAME_BYTES, but only after the server has
received and buffered them whole; daphne's own limit is 1 MiB. `manage.py serve` runs the
server defined here instead, which refuses earlier, from the frame headers alone:

* a frame whose header announces more than `incoming_limit()` bytes closes the connection
  with 1009 (message too big) before its payload is read and buffered (autobahn's
  maxFramePayloadSize, passed as daphne's --websocket-max-frame-size);
* a message fragmented into many small frames closes it the same way as soon as the frames
  so far add up to more than the limit (autobahn's maxMessagePayloadSize would do this, but
  it also caps what the server sends, and replies may legitimately be larger: so the check
  is made here, for incoming messages only);
* a compressed message (permessage-deflate, below) closes it the same way as soon as what
  it inflates to exceeds the limit.

The limit is CHAT_MAX_FRAME_BYTES plus a margin, so a frame just over the limit still gets
the consumer's explanatory `too_large` error instead of a closed socket.

It also accepts the permessage-deflate extension (RFC 7692) that every browser offers: a
reply streams as many small frames that repeat the same envelope (ids, type, sequence), and
with the compression context kept between messages those repeats cost a few bytes each,
and the rendered HTML in `done` mostly repeats text the client has just received. The
window is kept small (8 KiB, memLevel 5: about 50 KiB per socket that has received
anything; nothing for an idle one, since zlib state is created on first use).

Its access log goes through logging (the `daphne.access` logger) instead of straight to
stdout, so that the same filters (credentials masked) and formatter (JSON lines, newlines
escaped) apply to it as to every other line (enterprise_ai/logging.py).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from autobahn.websocket.compress import (
    PerMessageDeflateOffer,
    PerMessageDeflateOfferAccept,
)
from daphne.access import AccessLogGenerator
from daphne.cli import CommandLineInterface
from daphne.server import Server
from daphne.ws_protocol import WebSocketFactory, WebSocketProtocol
from django.conf import settings

MARGIN_BYTES = 4096
# permessage-deflate: LZ77 window (2**13 bytes) and zlib memory level, both directions.
DEFLATE_WINDOW_BITS = 13
DEFLATE_MEM_LEVEL = 5


def accept_deflate(offers: list[Any]) -> PerMessageDeflateOfferAccept | None:
    """Accept the client's first permessage-deflate offer, with a bounded window."""
    for offer in offers:
        if isinstance(offer, PerMessageDeflateOffer):
            return PerMessageDeflateOfferAccept(
                offer,
                request_max_window_bits=DEFLATE_WINDOW_BITS if offer.accept_max_window_bits else 0,
                window_bits=DEFLATE_WINDOW_BITS,
                mem_level=DEFLATE_MEM_LEVEL,
            )
    return None


def incoming_limit() -> int:
    """Largest WebSocket frame or message (bytes) the server reads from a client."""
    return int(settings.CHAT_MAX_FRAME_BYTES) + MARGIN_BYTES


class BoundedWebSocketProtocol(WebSocketProtocol):
    def onMessageBegin(self, isBinary: bool) -> None:
        self.inflated_total = 0
        super().onMessageBegin(isBinary)

    def onMessageFrameData(self, payload: bytes) -> None:
        # A compressed frame announces its compressed length only: the limit applies to
        # what it inflates to as well (autobahn bounds inflation to daphne's 1 MiB first).
        self.inflated_total = getattr(self, "inflated_total", 0) + len(payload)
        limit = self.factory.max_incoming_message_bytes
        if not self.failedByMe and 0 < limit < self.inflated_total:
            self.wasMaxMessagePayloadSizeExceeded = True
            self._max_message_size_exceeded(
                self.inflated_total,
                limit,
                f"received WebSocket message size {self.inflated_total} exceeds payload "
                f"limit of {limit} octets",
            )
            return
        super().onMessageFrameData(payload)

    def onMessageFrameBegin(self, length: int) -> None:
        super().onMessageFrameBegin(length)
        limit = self.factory.max_incoming_message_bytes
        if not self.failedByMe and 0 < limit < self.message_data_total_length:
            self.wasMaxMessagePayloadSizeExceeded = True
            self._max_message_size_exceeded(
                self.message_data_total_length,
                limit,
                f"received WebSocket message size {self.message_data_total_length} exceeds "
                f"payload limit of {limit} octets",
            )


class LoggedAccessLog(AccessLogGenerator):
    """daphne's access log entries (requests, WebSocket connections) as log records of
    `daphne.access` at INFO: `client "METHOD path" status size`, with those as fields too."""

    logger = logging.getLogger("daphne.access")

    def __init__(self) -> None:
        super().__init__(stream=None)

    def write_entry(
        self,
        host: str | None,
        date: Any,
        request: str,
        status: int | None = None,
        length: int | None = None,
        ident: str | None = None,
        user: str | None = None,
    ) -> None:
        self.logger.info(
            '%s "%s" %s %s',
            host or "-",
            request,
            status or "-",
            length if length is not None else "-",
            extra={"client": host or "", "status": status, "size": length},
        )


class BoundedServer(Server):
    """daphne's Server whose WebSocket factory builds `BoundedWebSocketProtocol`s.

    `Server.run` creates the factory and starts the reactor in one method; assigning
    `ws_factory` is the one point between the two, so the factory is adjusted there.
    """

    max_incoming_message_bytes = 0  # set by `command_line_interface`
    # Called once, when the first endpoint listens (manage.py serve prints its last lines).
    on_listening: Callable[[], None] | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # The access log is written through logging, whatever daphne's CLI chose (stdout).
        kwargs["action_logger"] = LoggedAccessLog()
        super().__init__(*args, **kwargs)
        self._announced = False

    def listen_success(self, port: Any) -> None:
        super().listen_success(port)
        if self.on_listening is not None and not self._announced:
            self._announced = True
            type(self).on_listening()  # type: ignore[misc]

    @property
    def ws_factory(self) -> WebSocketFactory:
        return self._bounded_ws_factory

    @ws_factory.setter
    def ws_factory(self, factory: WebSocketFactory) -> None:
        factory.protocol = BoundedWebSocketProtocol
        factory.max_incoming_message_bytes = self.max_incoming_message_bytes
        # Answer a refused frame with a close frame (1009, and the limit in the reason), so
        # that clients learn why; autobahn's default drops the TCP connection silently. A
        # client that keeps sending is dropped after the close handshake timeout anyway.
        factory.setProtocolOptions(failByDrop=False, perMessageCompressionAccept=accept_deflate)
        self._bounded_ws_factory = factory


def command_line_interface(
    max_incoming_bytes: int, *, on_listening: Callable[[], None] | None = None
) -> tuple[CommandLineInterface, list[str]]:
    """daphne's CLI running a BoundedServer, and the arguments that set its limits.

    Sockets stay open as long as their session does (the consumer closes them when it
    ends): no maximum age. Pings every WEBSOCKET_PING_SECONDS keep proxies and NAT from
    dropping an idle socket and find dead clients. The opening handshake may take
    WEBSOCKET_CONNECT_TIMEOUT_SECONDS: daphne's 5 s dropped handshakes under load.
    """

    class _Server(BoundedServer):
        max_incoming_message_bytes = max_incoming_bytes

    _Server.on_listening = staticmethod(on_listening) if on_listening else None

    cli: Any = CommandLineInterface()
    cli.server_class = _Server
    return cli, [
        "--websocket-max-frame-size",
        str(max_incoming_bytes),
        "--websocket_timeout",
        "-1",
        "--websocket_connect_timeout",
        str(settings.WEBSOCKET_CONNECT_TIMEOUT_SECONDS),
        "--ping-interval",
        str(settings.WEBSOCKET_PING_SECONDS),
        "--ping-timeout",
        str(settings.WEBSOCKET_PING_TIMEOUT_SECONDS),
    ]
