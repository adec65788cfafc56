"""Content-Security-Policy and the other security headers, on every kind of HTML page."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

from conversations.models import Conversation
from tests.support import early_in_a_minute

pytestmark = pytest.mark.django_db

ROOT = Path(__file__).resolve().parents[2]


def directives(response: Any) -> dict[str, list[str]]:
    policy = response["Content-Security-Policy"]
    return {
        name: values
        for name, *values in (part.split() for part in policy.split(";") if part.strip())
    }


def assert_security_headers(response: Any) -> None:
    csp = directives(response)
    assert csp["default-src"] == ["'self'"]
    assert csp["script-src"] == ["'self'"]
    assert csp["style-src"] == ["'self'"]
    assert csp["img-src"] == ["'self'", "data:"]
    assert csp["object-src"] == ["'none'"]
    assert csp["base-uri"] == ["'none'"]
    assert csp["frame-ancestors"] == ["'none'"]
    assert csp["form-action"] == ["'self'"]
    assert csp["connect-src"] == ["'self'", "ws://testserver"]
    assert "unsafe-inline" not in response["Content-Security-Policy"]
    assert "unsafe-eval" not in response["Content-Security-Policy"]
    assert response["X-Frame-Options"] == "DENY"
    assert response["X-Content-Type-Options"] == "nosniff"
    assert response["Referrer-Policy"] == "same-origin"
    assert response["Cross-Origin-Opener-Policy"] == "same-origin"
    assert "camera=()" in response["Permissions-Policy"]
    assert "microphone=()" in response["Permissions-Policy"]


class InlineFinder(HTMLParser):
    """Collects what a strict CSP would block: inline scripts, styles and handlers."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []
        self._in_script: dict[str, str | None] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        names = dict(attrs)
        if tag == "style":
            self.found.append("<style>")
        if "style" in names:
            self.found.append(f"style attribute on <{tag}>")
        self.found.extend(f"{name} on <{tag}>" for name in names if name.startswith("on"))
        if any((value or "").strip().lower().startswith("javascript:") for value in names.values()):
            self.found.append(f"javascript: URL on <{tag}>")
        if tag == "script":
            self._in_script = names

    def handle_data(self, data: str) -> None:
        script = self._in_script
        if script is not None and data.strip() and script.get("type") != "application/json":
            self.found.append(f"inline <script>: {data.strip()[:40]}")

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_script = None


def inline_code(html: str) -> list[str]:
    finder = InlineFinder()
    finder.feed(html)
    return finder.found


def test_chat_page(client: Client, owner: Any) -> None:
    client.force_login(owner)
    response = client.get("/")
    assert response.status_code == 200
    assert_security_headers(response)
    assert inline_code(response.content.decode()) == []


def test_pages_for_a_signed_in_person_are_not_cached(client: Client, owner: Any) -> None:
    conversation = Conversation.objects.create(owner=owner, title="Plans", model="demo")
    client.force_login(owner)
    for url in ("/", f"/c/{conversation.public_id}/"):
        cache_control = client.get(url)["Cache-Control"]
        assert "no-store" in cache_control and "private" in cache_control
    # Static files keep their own caching.
    assert "no-store" not in client.get("/static/css/app.css").get("Cache-Control", "")


def test_login_page(client: Client) -> None:
    response = client.get(reverse("login"))
    assert response.status_code == 200
    assert_security_headers(response)
    assert inline_code(response.content.decode()) == []


def test_rate_limited_login_page(client: Client, settings: Any) -> None:
    settings.LOGIN_RATE_LIMIT_PER_MINUTE = 1
    early_in_a_minute()  # both posts in one window
    client.post(reverse("login"), {"username": "x", "password": "y"})
    response = client.post(reverse("login"), {"username": "x", "password": "y"})
    assert response.status_code == 429
    assert_security_headers(response)


@pytest.mark.parametrize(
    "url",
    [
        "/admin/",
        "/admin/audit/auditevent/",
        "/admin/costs/costentry/report/",
        "/admin/providers/aimodel/",
        "/admin/providers/aimodel/add/",
        "/admin/costs/budget/add/",
    ],
)
def test_console_pages(client: Client, administrator: Any, url: str) -> None:
    client.force_login(administrator)
    response = client.get(url)
    assert response.status_code == 200, url
    assert_security_headers(response)
    assert inline_code(response.content.decode()) == []


def test_not_found_page(client: Client, owner: Any) -> None:
    client.force_login(owner)
    response = client.get("/no/such/page/")
    assert response.status_code == 404
    assert_security_headers(response)


def test_csrf_failure_page_has_no_inline_style(owner: Any) -> None:
    client = Client(enforce_csrf_checks=True)
    response = client.post(reverse("login"), {"username": "alice", "password": "x"})
    assert response.status_code == 403
    assert_security_headers(response)
    assert inline_code(response.content.decode()) == []


def test_an_https_page_names_the_wss_origin(client: Client, owner: Any) -> None:
    client.force_login(owner)
    response = client.get("/", secure=True)
    assert directives(response)["connect-src"] == ["'self'", "wss://testserver"]


def test_a_foreign_host_gets_the_base_policy(client: Client) -> None:
    response = client.get(reverse("login"), HTTP_HOST="evil.example")
    assert response.status_code == 400
    assert directives(response)["connect-src"] == ["'self'"]


def test_no_template_carries_inline_code() -> None:
    offenders = {
        str(path.relative_to(ROOT)): found
        for path in (ROOT / "templates").rglob("*.html")
        if (found := inline_code(re.sub(r"{%.*?%}|{{.*?}}", "", path.read_text())))
    }
    assert offenders == {}


def test_session_cookie_is_http_only_and_lax(client: Client, owner: Any) -> None:
    client.post(reverse("login"), {"username": "alice", "password": "correct horse battery staple"})
    cookie = client.cookies["sessionid"]
    assert cookie["httponly"] is True
    assert cookie["samesite"] == "Lax"
