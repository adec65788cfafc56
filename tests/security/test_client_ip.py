"""One rule for the client's address: audit trail, login rate limit and axes agree on it."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import RequestFactory

from audit import context as audit_context
from enterprise_ai.client_ip import client_ip, client_ip_from_scope, resolve


def request_from(peer: str, forwarded_for: str | None = None) -> Any:
    extra: dict[str, Any] = {"REMOTE_ADDR": peer}
    if forwarded_for is not None:
        extra["HTTP_X_FORWARDED_FOR"] = forwarded_for
    return RequestFactory().get("/", **extra)


def test_x_forwarded_for_is_ignored_unless_proxies_are_configured(settings: Any) -> None:
    settings.TRUSTED_PROXY_COUNT = 0
    request = request_from("198.51.100.7", "203.0.113.9")
    assert client_ip(request) == "198.51.100.7"
    assert audit_context.from_request(request).ip == "198.51.100.7"


def test_behind_one_proxy_the_address_it_appended_is_the_client(settings: Any) -> None:
    settings.TRUSTED_PROXY_COUNT = 1
    # The client wrote "1.2.3.4" itself; the proxy appended the address it saw.
    request = request_from("10.0.0.2", "1.2.3.4, 203.0.113.9")
    assert client_ip(request) == "203.0.113.9"
    assert audit_context.from_request(request).ip == "203.0.113.9"


def test_behind_two_proxies_the_second_entry_from_the_right_is_the_client() -> None:
    assert resolve("10.0.0.3", "6.6.6.6, 203.0.113.9, 10.0.0.2", proxy_count=2) == "203.0.113.9"


def test_a_header_shorter_than_the_proxy_chain_falls_back_to_the_peer() -> None:
    assert resolve("10.0.0.2", "203.0.113.9", proxy_count=2) == "10.0.0.2"
    assert resolve("10.0.0.2", None, proxy_count=1) == "10.0.0.2"


@pytest.mark.parametrize("garbage", ["not-an-ip", "", "1.2.3.4.5"])
def test_garbage_is_no_address(garbage: str) -> None:
    assert resolve(garbage, None, proxy_count=0) is None


def test_a_garbage_proxy_entry_is_no_address_never_the_clients_own_entry() -> None:
    assert resolve("10.0.0.2", "1.1.1.1, unknown", proxy_count=1) is None


def test_ipv6_is_normalised() -> None:
    assert resolve("2001:DB8:0:0::1", None, proxy_count=0) == "2001:db8::1"


def test_the_socket_uses_the_same_rule(settings: Any) -> None:
    scope = {
        "type": "websocket",
        "client": ("10.0.0.2", 5555),
        "headers": [(b"x-forwarded-for", b"1.2.3.4, 203.0.113.9")],
    }
    settings.TRUSTED_PROXY_COUNT = 0
    assert client_ip_from_scope(scope) == "10.0.0.2"
    assert audit_context.from_scope(scope).ip == "10.0.0.2"
    settings.TRUSTED_PROXY_COUNT = 1
    assert client_ip_from_scope(scope) == "203.0.113.9"
    assert audit_context.from_scope(scope).ip == "203.0.113.9"


def test_axes_uses_the_same_rule(settings: Any) -> None:
    from axes.helpers import get_client_ip_address

    settings.TRUSTED_PROXY_COUNT = 0
    assert get_client_ip_address(request_from("198.51.100.7", "203.0.113.9")) == "198.51.100.7"
    settings.TRUSTED_PROXY_COUNT = 1
    assert get_client_ip_address(request_from("10.0.0.2", "203.0.113.9")) == "203.0.113.9"
