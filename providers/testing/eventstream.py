"""An encoder for the AWS event-stream binary framing (`application/vnd.amazon.eventstream`).

Streaming AWS APIs such as Bedrock's ConverseStream send their events in this framing; the
Bedrock double (`providers.testing.bedrock_server`) uses this module to produce bytes that
botocore's own decoder (`botocore.eventstream.EventStreamBuffer`) reads.

A message is::

    prelude:  total length (uint32) | headers length (uint32) | CRC32 of those 8 bytes
    headers:  repeated: name length (uint8) | name (UTF-8) | type (uint8) | value
    payload:  bytes
    trailer:  CRC32 of everything before it (prelude and its CRC included)

All integers are big-endian. Only string headers (type 7: uint16 length, then UTF-8) are
written, which is all Bedrock uses.
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Mapping
from typing import Any

#: Header value type for a UTF-8 string (uint16 length prefix).
STRING_HEADER_TYPE = 7

_PRELUDE_LENGTH = 12
_CRC_LENGTH = 4


def _crc32(data: bytes, start: int = 0) -> int:
    return zlib.crc32(data, start) & 0xFFFFFFFF


def encode_headers(headers: Mapping[str, str]) -> bytes:
    """Encode `headers` as event-stream string headers, in the mapping's order.

    Raises ValueError when a name is longer than 255 bytes or a value longer than 65535 bytes.
    """
    out = bytearray()
    for name, value in headers.items():
        raw_name = name.encode("utf-8")
        raw_value = value.encode("utf-8")
        if len(raw_name) > 0xFF:
            raise ValueError("An event-stream header name is at most 255 bytes.")
        if len(raw_value) > 0xFFFF:
            raise ValueError("An event-stream string header value is at most 65535 bytes.")
        out += struct.pack(">B", len(raw_name)) + raw_name
        out += struct.pack(">BH", STRING_HEADER_TYPE, len(raw_value)) + raw_value
    return bytes(out)


def encode_message(headers: Mapping[str, str], payload: bytes) -> bytes:
    """One complete event-stream message: prelude, prelude CRC, headers, payload, message CRC.

    Raises ValueError for headers `encode_headers` cannot encode.
    """
    raw_headers = encode_headers(headers)
    total_length = _PRELUDE_LENGTH + len(raw_headers) + len(payload) + _CRC_LENGTH
    prelude = struct.pack(">II", total_length, len(raw_headers))
    prelude_crc = _crc32(prelude)
    body = prelude + struct.pack(">I", prelude_crc) + raw_headers + payload
    return body + struct.pack(">I", _crc32(body))


def event_message(event_type: str, payload: Mapping[str, Any]) -> bytes:
    """An `event` message of `event_type` (e.g. `contentBlockDelta`) with a JSON payload."""
    return encode_message(
        {
            ":event-type": event_type,
            ":content-type": "application/json",
            ":message-type": "event",
        },
        json.dumps(payload, separators=(",", ":")).encode("utf-8"),
    )


def exception_message(exception_type: str, message: str) -> bytes:
    """An in-stream `exception` message (e.g. `throttlingException`) with `{"message": ...}`."""
    return encode_message(
        {
            ":exception-type": exception_type,
            ":content-type": "application/json",
            ":message-type": "exception",
        },
        json.dumps({"message": message}).encode("utf-8"),
    )


def corrupt(message: bytes) -> bytes:
    """`message` with one payload (or header) byte flipped, so its message CRC no longer matches.

    The prelude is left intact, so a decoder reads the whole message and then rejects it
    (botocore raises `ChecksumMismatch`).

    Raises ValueError when `message` has nothing after its prelude to corrupt.
    """
    position = len(message) - _CRC_LENGTH - 1
    if position < _PRELUDE_LENGTH:
        raise ValueError("The message has no headers or payload to corrupt.")
    damaged = bytearray(message)
    damaged[position] ^= 0xFF
    return bytes(damaged)
