"""The chat socket's Origin check, with refusals recorded in the audit trail.

A browser names the page that opens a socket in the `Origin` header: scheme, host and port.
The session cookie goes with every handshake to this host, whichever page asks (cookies
ignore ports, and `SameSite=Lax` ignores them too), so the origin is what tells our own
page from another one. A socket is accepted from:

- the app's own origin, as Django's CSRF check sees it for a form post: an `http` or `https`
  origin whose host is the request's `Host` (itself in `ALLOWED_HOSTS`) and whose port is the
  one the `Host` header names (the scheme's default when it names none). Behind a
  TLS-terminating proxy that passes the public `Host` on, the page is `https://host` and the
  `Host` header names no port (or 443): accepted. When the request is known to have come over
  TLS (`wss`, or `X-Forwarded-Proto: https` from a trusted proxy, `TRUSTED_PROXY_COUNT`), only
  `https` is: a plain-HTTP page on the same host could have been written by anyone on the
  network path;
- an origin listed in `CSRF_TRUSTED_ORIGINS` (exactly, or `https://*.example.com`), for a proxy
  that rewrites the `Host` header or a public port other than the one the app sees. Django
  trusts the same list for form posts, which such a deployment needs anyway.

Everything else is refused: no Origin, `null`, another scheme (`chrome-extension://`), another
port or another host. Channels' own OriginValidator compares hosts only.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from channels.db import database_sync_to_async
from channels.security.websocket import WebsocketDenier
from django.conf import settings
from django.http.request import split_domain_port, validate_host
from django.utils.http import is_same_domain

from audit import context as audit_context
from audit.catalogue import AuditAction, AuditOutcome, TargetType
from audit.services import audit_record

DEFAULT_PORTS = {"http": 80, "https": 443}


def _header(scope: dict[str, Any], name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return str(value.decode("latin-1"))
    return None


def _printable(text: str) -> str:
    # A handshake need not come from a browser: keep control characters (a NUL, which
    # PostgreSQL cannot store) out of the audit trail.
    return "".join(ch if ch.isprintable() else "\ufffd" for ch in text)


def request_is_secure(scope: dict[str, Any]) -> bool:
    """Whether the handshake came over TLS: `wss`, or the trusted proxy says so (the header
    Django's `request.is_secure()` reads, `SECURE_PROXY_SSL_HEADER`)."""
    if scope.get("scheme") == "wss":
        return True
    proxy_header = getattr(settings, "SECURE_PROXY_SSL_HEADER", None)
    if not proxy_header:
        return False
    meta_name, secure_value = proxy_header
    name = meta_name.removeprefix("HTTP_").lower().replace("_", "-").encode("latin-1")
    value = _header(scope, name)
    return value is not None and value.split(",", 1)[0].strip() == secure_value


def _trusted_origin(origin: str, scheme: str, netloc: str) -> bool:
    """Listed in CSRF_TRUSTED_ORIGINS, exactly or as `scheme://*.domain` (Django's rules)."""
    for trusted in settings.CSRF_TRUSTED_ORIGINS:
        if "*" not in trusted:
            if origin == trusted:
                return True
            continue
        pattern = urlsplit(trusted)
        if pattern.scheme == scheme and is_same_domain(netloc, pattern.netloc.lstrip("*")):
            return True
    return False


def origin_allowed(origin: str | None, *, host: str | None, secure: bool) -> bool:
    """Whether a socket may be opened from the page `origin` (see the module's docstring).

    `host` is the request's Host header; `secure` whether the request came over TLS.
    """
    if not origin:
        return False
    try:
        parsed = urlsplit(origin)
    except ValueError:
        return False
    scheme, netloc = parsed.scheme, parsed.netloc
    # A serialised origin is scheme://host[:port]: nothing else, no user, no path.
    if scheme not in DEFAULT_PORTS or "@" in netloc or origin != f"{scheme}://{netloc}":
        return False
    if _trusted_origin(origin, scheme, netloc):
        return True
    if secure and scheme != "https":
        return False
    origin_domain, origin_port = split_domain_port(netloc)
    host_domain, host_port = split_domain_port(host or "")
    if not origin_domain or origin_domain != host_domain:
        return False
    if not validate_host(host_domain, settings.ALLOWED_HOSTS):
        return False
    default = DEFAULT_PORTS[scheme]
    port = int(origin_port or default)
    return port <= 65535 and port == int(host_port or default)


class AuditedOriginValidator:
    """ASGI middleware: a socket from an allowed origin reaches `application`; any other is
    refused (HTTP 403 at the handshake) and the refusal audited with the origin it named."""

    def __init__(self, application: Any) -> None:
        self.application = application

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        if scope["type"] != "websocket":
            raise ValueError("AuditedOriginValidator only guards WebSocket connections")
        origin = _header(scope, b"origin")
        host = _header(scope, b"host")
        if origin_allowed(origin, host=host, secure=request_is_secure(scope)):
            return await self.application(scope, receive, send)
        await database_sync_to_async(audit_record)(
            action=AuditAction.WS_REFUSED,
            actor=None,
            target=(TargetType.SOCKET, scope.get("path", "")[:64]),
            outcome=AuditOutcome.DENIED,
            details={"reason": "origin_not_allowed", "origin": _printable((origin or "")[:200])},
            context=audit_context.from_scope(scope),
        )
        return await WebsocketDenier()(scope, receive, send)


def allowed_hosts_origin_validator(application: Any) -> AuditedOriginValidator:
    return AuditedOriginValidator(application)
