"""The chat socket's Origin check (audit/websocket.py): the full origin, scheme, host and port,
against the request's own, and every refusal audited."""

from __future__ import annotations

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator

from audit.catalogue import AuditAction
from audit.models import AuditEvent
from audit.websocket import origin_allowed, request_is_secure
from enterprise_ai.asgi import application


@pytest.fixture(autouse=True)
def _hosts(settings) -> None:
    settings.ALLOWED_HOSTS = ["localhost", "127.0.0.1", "[::1]", "ai.example.com"]
    settings.CSRF_TRUSTED_ORIGINS = []


@pytest.mark.parametrize(
    ("origin", "host", "secure"),
    [
        ("http://localhost", "localhost", False),
        ("http://localhost:80", "localhost", False),  # the default port, spelled out
        ("http://localhost:8000", "localhost:8000", False),  # `make run`
        ("http://127.0.0.1:8000", "127.0.0.1:8000", False),
        ("http://[::1]:8000", "[::1]:8000", False),
        # Behind a TLS-terminating proxy that passes the public Host on, told (X-Forwarded-Proto)
        # or not that the request came over TLS.
        ("https://ai.example.com", "ai.example.com", True),
        ("https://ai.example.com", "ai.example.com", False),
        ("https://ai.example.com", "ai.example.com:443", True),
    ],
)
def test_the_apps_own_origin_is_allowed(origin: str, host: str, secure: bool) -> None:
    assert origin_allowed(origin, host=host, secure=secure)


@pytest.mark.parametrize(
    ("origin", "host", "secure"),
    [
        ("chrome-extension://localhost", "localhost", False),  # another scheme
        ("ws://localhost", "localhost", False),
        ("http://localhost:1", "localhost", False),  # another port on the same host
        ("http://localhost:1", "localhost:8000", False),
        ("http://localhost", "localhost:8000", False),  # port 80 is not the app on 8000
        ("https://localhost", "localhost:8000", False),
        ("http://ai.example.com", "ai.example.com", True),  # plain HTTP page, TLS socket
        ("https://evil.example", "evil.example", False),  # a host not in ALLOWED_HOSTS
        ("https://evil.example", "ai.example.com", False),
        ("http://127.0.0.1:8000", "localhost:8000", False),  # another allowed host's page
        ("http://localhost", None, False),  # no Host header to compare with
        ("null", "localhost", False),  # sandboxed frames, file:// pages
        ("", "localhost", False),
        (None, "localhost", False),
        ("http://localhost/", "localhost", False),  # not an origin: it has a path
        ("http://user@localhost", "localhost", False),
        ("http://localhost:99999999999999999999", "localhost:99999999999999999999", False),
        ("http://local\x00host", "localhost", False),
    ],
)
def test_any_other_origin_is_refused(origin: str | None, host: str | None, secure: bool) -> None:
    assert not origin_allowed(origin, host=host, secure=secure)


def test_csrf_trusted_origins_are_allowed_for_a_proxy_that_rewrites_the_host(settings) -> None:
    # A proxy on a public port of its own that passes the Host on without it ($host in
    # nginx), and one that passes the app's internal address on: Django needs the public
    # origin in CSRF_TRUSTED_ORIGINS for form posts, and the socket trusts the same list.
    settings.CSRF_TRUSTED_ORIGINS = ["https://ai.example.com:8443", "https://*.example.org"]
    assert origin_allowed("https://ai.example.com:8443", host="ai.example.com", secure=True)
    assert origin_allowed("https://chat.example.org", host="app:8000", secure=False)
    assert not origin_allowed("http://chat.example.org", host="app:8000", secure=False)
    assert not origin_allowed("https://ai.example.com:8444", host="ai.example.com", secure=True)
    assert not origin_allowed("https://chat.example.org.evil", host="app:8000", secure=False)


def test_only_a_trusted_proxy_can_say_the_request_came_over_tls(settings) -> None:
    scope = {"type": "websocket", "scheme": "ws", "headers": [(b"x-forwarded-proto", b"https")]}
    settings.SECURE_PROXY_SSL_HEADER = None  # TRUSTED_PROXY_COUNT=0: the header is ignored
    assert not request_is_secure(scope)
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    assert request_is_secure(scope)
    assert not request_is_secure({**scope, "headers": [(b"x-forwarded-proto", b"http")]})
    assert request_is_secure({"type": "websocket", "scheme": "wss", "headers": []})


# --- Through the ASGI application ---------------------------------------------------------------


def handshake(origin: bytes, *, host: bytes, cookie: str) -> WebsocketCommunicator:
    headers = [(b"host", host), (b"origin", origin), (b"cookie", cookie.encode())]
    return WebsocketCommunicator(application, "/ws/chat/", headers=headers)


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("origin", "host"),
    [
        (b"chrome-extension://localhost", b"localhost"),
        (b"http://localhost:1", b"localhost"),
        (b"http://localhost", b"localhost:8000"),
    ],
)
async def test_a_refused_origin_never_reaches_the_consumer_and_is_audited(
    owner, session_cookie, origin: bytes, host: bytes
) -> None:
    comm = handshake(origin, host=host, cookie=await database_sync_to_async(session_cookie)(owner))
    connected, _ = await comm.connect()
    assert not connected
    refusals = await database_sync_to_async(list)(
        AuditEvent.objects.filter(action=AuditAction.WS_REFUSED).values_list("details", flat=True)
    )
    assert refusals == [{"reason": "origin_not_allowed", "origin": origin.decode()}]
    assert not await database_sync_to_async(
        AuditEvent.objects.filter(action=AuditAction.WS_CONNECT).exists
    )()


@pytest.mark.django_db(transaction=True)
async def test_the_page_of_a_server_on_its_own_port_connects(owner, session_cookie) -> None:
    cookie = await database_sync_to_async(session_cookie)(owner)
    comm = handshake(b"http://localhost:8000", host=b"localhost:8000", cookie=cookie)
    connected, _ = await comm.connect()
    await comm.disconnect()
    assert connected
    assert not await database_sync_to_async(
        AuditEvent.objects.filter(action=AuditAction.WS_REFUSED).exists
    )()


@pytest.mark.django_db(transaction=True)
async def test_a_refused_origin_with_control_characters_is_audited_printably(
    owner, session_cookie
) -> None:
    cookie = await database_sync_to_async(session_cookie)(owner)
    connected, _ = await handshake(b"http://a\x00b", host=b"localhost", cookie=cookie).connect()
    assert not connected
    event = await database_sync_to_async(AuditEvent.objects.get)(action=AuditAction.WS_REFUSED)
    assert event.details["origin"] == "http://a\ufffdb"
