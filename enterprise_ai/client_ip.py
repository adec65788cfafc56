"""The client's IP address, one rule for the whole app (audit trail, rate limits, axes).

By default the client is the peer of the TCP connection (`REMOTE_ADDR`, or the ASGI scope's
`client`) and `X-Forwarded-For` is ignored: any client can write that header. Behind
reverse proxies, `TRUSTED_PROXY_COUNT` says how many there are; each appends the address it
received the request from to `X-Forwarded-For`, so the client is the entry that many places
from the right. Entries further left were written by the client and are never trusted.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Any

from django.conf import settings


def valid_ip(value: str | None) -> str | None:
    """`value` as a normalised IP address, or None when it is not one."""
    if not value:
        return None
    try:
        return str(ipaddress.ip_address(value.strip()))
    except ValueError:
        return None


def resolve(peer: str | None, forwarded_for: str | None, *, proxy_count: int) -> str | None:
    """The client address, given the connection's peer and the X-Forwarded-For header.

    With `proxy_count` 0 only the peer counts. With N proxies the N-th entry from the right
    of X-Forwarded-For is the client; a header with fewer entries than N means the request
    did not come through all of them, and the peer is used.
    """
    if proxy_count > 0 and forwarded_for:
        entries = [entry.strip() for entry in forwarded_for.split(",") if entry.strip()]
        if len(entries) >= proxy_count:
            return valid_ip(entries[-proxy_count])
    return valid_ip(peer)


def client_ip(request: Any) -> str | None:
    """The client address of an HTTP request (also axes' AXES_CLIENT_IP_CALLABLE)."""
    return resolve(
        request.META.get("REMOTE_ADDR"),
        request.META.get("HTTP_X_FORWARDED_FOR"),
        proxy_count=settings.TRUSTED_PROXY_COUNT,
    )


def client_ip_from_scope(scope: dict[str, Any]) -> str | None:
    """The client address of an ASGI connection (the chat socket)."""
    client = scope.get("client") or (None, None)
    headers: Iterable[tuple[bytes, bytes]] = scope.get("headers") or []
    forwarded = b",".join(value for name, value in headers if name.lower() == b"x-forwarded-for")
    return resolve(
        client[0],
        forwarded.decode("latin-1") or None,
        proxy_count=settings.TRUSTED_PROXY_COUNT,
    )
