"""A person's view: Debian's chromium, driven by Playwright, against the embedded server.

Needs /usr/bin/chromium (`.ci/run` installs it). A screenshot of a failing page is saved
under test-artifacts/.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from typing import Any

import pytest

from conftest import service_missing
from tests.e2e.conftest import ARTIFACTS, Server

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not os.access(CHROMIUM, os.X_OK):
        service_missing(f"chromium is not installed at {CHROMIUM} (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Any, request: pytest.FixtureRequest) -> Iterator[Any]:
    context = browser.new_context()
    page = context.new_page()
    yield page
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / f"{request.node.name}.png"), full_page=True)
    context.close()


def test_log_in_chat_stop_and_reload(embedded_server: Server, page: Any) -> None:
    from playwright.sync_api import expect

    page.goto(f"{embedded_server.base_url}/")
    expect(page).to_have_url(re.compile(r"/accounts/login/"))
    page.fill("#id_username", embedded_server.username)
    page.fill("#id_password", embedded_server.password)
    page.click("button[type=submit]")

    expect(page.locator("#connection-status")).to_have_text("Connected")
    expect(page.locator("#demo-notice")).to_be_visible()

    # Send with Enter; the reply streams in as text, then becomes rendered Markdown.
    page.fill("#composer-input", "Hello from the browser")
    page.press("#composer-input", "Enter")
    reply = page.locator("article.msg-assistant").first
    expect(reply).to_have_attribute("data-status", "streaming")
    expect(page.locator("#stop-button")).to_be_visible()
    expect(page.locator("#send-button")).to_be_hidden()
    expect(reply).to_have_attribute("data-status", "complete", timeout=20_000)
    expect(reply.locator(".markdown strong")).to_have_text("demo model")
    expect(page.locator("#send-button")).to_be_visible()
    expect(page.locator("#stop-button")).to_be_hidden()
    expect(page).to_have_url(re.compile(r"/c/[0-9a-f-]{36}/$"))
    expect(page.locator("#conversation-list a[aria-current=page]")).to_have_text(
        "Hello from the browser"
    )

    # Shift+Enter adds a line instead of sending.
    page.fill("#composer-input", "First line")
    page.press("#composer-input", "Shift+Enter")
    page.type("#composer-input", "second line")
    expect(page.locator("#composer-input")).to_have_value("First line\nsecond line")
    expect(page.locator("article.msg-user")).to_have_count(1)

    # Send it and stop the reply while it streams.
    page.press("#composer-input", "Enter")
    second = page.locator("article.msg-assistant").nth(1)
    expect(second).to_have_attribute("data-status", "streaming")
    page.click("#stop-button")
    expect(second).to_have_attribute("data-status", "cancelled", timeout=10_000)
    expect(second.locator(".msg-note")).to_have_text("Stopped.")
    partial = second.locator(".msg-body").inner_text()
    assert partial and "An administrator can connect" not in partial

    # After a reload the stored conversation is shown as it was left.
    page.reload()
    expect(page.locator("#connection-status")).to_have_text("Connected")
    expect(page.locator("article.msg-user")).to_have_count(2)
    expect(page.locator("article.msg-user .msg-body").nth(1)).to_have_text(
        "First line\nsecond line"
    )
    expect(page.locator("article.msg-assistant").nth(0)).to_have_attribute(
        "data-status", "complete"
    )
    expect(page.locator("article.msg-assistant").nth(1)).to_have_attribute(
        "data-status", "cancelled"
    )
    expect(page.locator("article.msg-assistant .msg-note")).to_have_text("Stopped.")


def log_in(page: Any, server: Server) -> None:
    page.goto(f"{server.base_url}/accounts/login/")
    page.fill("#id_username", server.username)
    page.fill("#id_password", server.password)
    page.click("button[type=submit]")


def test_reconnects_after_a_server_restart_and_follows_other_tabs(
    restartable_server: Any, browser: Any
) -> None:
    from playwright.sync_api import expect

    server = restartable_server.server
    context = browser.new_context()
    tab_a, tab_b = context.new_page(), context.new_page()
    try:
        log_in(tab_a, server)
        expect(tab_a.locator("#connection-status")).to_have_text("Connected")
        tab_a.fill("#composer-input", "Kept across restarts")
        tab_a.press("#composer-input", "Enter")
        expect(tab_a.locator("article.msg-assistant")).to_have_attribute(
            "data-status", "complete", timeout=20_000
        )
        conversation_url = tab_a.url

        restartable_server.stop()
        expect(tab_a.locator("#connection-status")).to_have_text("Reconnecting…")
        restartable_server.start()
        expect(tab_a.locator("#connection-status")).to_have_text("Connected", timeout=30_000)
        expect(tab_a.locator("article.msg")).to_have_count(2)

        # Tab A re-subscribed on reconnect: a message sent from tab B streams into it.
        tab_b.goto(conversation_url)
        expect(tab_b.locator("#connection-status")).to_have_text("Connected")
        tab_b.fill("#composer-input", "Sent from the other tab")
        tab_b.press("#composer-input", "Enter")
        expect(tab_a.locator("article.msg-user .msg-body").nth(1)).to_have_text(
            "Sent from the other tab"
        )
        expect(tab_a.locator("article.msg-assistant").nth(1)).to_have_attribute(
            "data-status", "complete", timeout=20_000
        )
        expect(tab_a.locator("article.msg")).to_have_count(4)
    except Exception:
        ARTIFACTS.mkdir(exist_ok=True)
        tab_a.screenshot(path=str(ARTIFACTS / "reconnect-tab-a.png"), full_page=True)
        raise
    finally:
        context.close()


def test_a_password_change_elsewhere_sends_the_open_chat_to_sign_in(
    restartable_server: Any, browser: Any
) -> None:
    """Two browsers signed in as one person; a password change in one closes the other's
    socket (4440) and its page goes to the sign-in page by itself."""
    from playwright.sync_api import expect

    server = restartable_server.server
    laptop, phone = browser.new_context(), browser.new_context()
    chat, settings_page = laptop.new_page(), phone.new_page()
    try:
        log_in(chat, server)
        expect(chat.locator("#connection-status")).to_have_text("Connected")
        log_in(settings_page, server)
        settings_page.click(".sidebar-foot a")  # the user name links to the password page
        expect(settings_page).to_have_url(re.compile(r"/accounts/password/$"))
        settings_page.fill("#id_old_password", server.password)
        settings_page.fill("#id_new_password1", "a brand new passphrase 42")
        settings_page.fill("#id_new_password2", "a brand new passphrase 42")
        settings_page.click("button[type=submit]")
        expect(settings_page.locator("h1")).to_have_text("Password changed")

        # The other browser is sent to sign in, without anyone touching it.
        expect(chat).to_have_url(re.compile(r"/accounts/login/"), timeout=10_000)
        # The browser that changed the password is still signed in.
        settings_page.goto(f"{server.base_url}/")
        expect(settings_page.locator("#connection-status")).to_have_text("Connected")
    except Exception:
        ARTIFACTS.mkdir(exist_ok=True)
        chat.screenshot(path=str(ARTIFACTS / "password-change-chat.png"), full_page=True)
        raise
    finally:
        laptop.close()
        phone.close()


CATALOGUE = """
from providers.models import AIModel
demo = AIModel.objects.get(key="demo")
AIModel.objects.create(key="gpt-test", display_name="GPT test", provider="openai",
    provider_model_id="gpt-test", available_to_everyone=True, position=1)
AIModel.objects.create(key="flaky", display_name="Flaky model", provider="openai",
    provider_model_id="gpt-flaky", available_to_everyone=True, position=2, fallback=demo)
"""


def test_tool_use_and_failover_are_shown(browser: Any, tmp_path: Any) -> None:
    from playwright.sync_api import expect

    from providers.testing.google_search import GoogleSearchDouble
    from providers.testing.openai_server import Fault, OpenAIDouble
    from tests.e2e.conftest import RestartableServer

    with OpenAIDouble() as openai_double, GoogleSearchDouble() as google:
        server = RestartableServer(
            tmp_path,
            {
                "OPENAI_API_KEY": "sk-e2e",
                "OPENAI_BASE_URL": openai_double.base_url,
                "GOOGLE_SEARCH_API_KEY": google.api_key,
                "GOOGLE_SEARCH_ENGINE_ID": google.engine_id,
                "GOOGLE_SEARCH_ENDPOINT": google.endpoint,
                "PROVIDER_RETRY_BASE_SECONDS": "0",
            },
        )
        server.manage("shell", "-c", CATALOGUE)
        server.start()
        context = browser.new_context()
        page = context.new_page()
        try:
            log_in(page, server.server)
            expect(page.locator("#connection-status")).to_have_text("Connected")
            page.select_option("#model-picker", "gpt-test")
            expect(page.locator("#demo-notice")).to_be_hidden()

            openai_double.script_tool_call("search_internet", {"query": "quarterly results"})
            page.fill("#composer-input", "How did the quarter go?")
            page.press("#composer-input", "Enter")
            reply = page.locator("article.msg-assistant").first
            expect(reply).to_have_attribute("data-status", "complete", timeout=20_000)
            tool = reply.locator("details.tool-use")
            expect(tool.locator("summary")).to_have_text("Used tool: search_internet")
            expect(tool).not_to_have_attribute("open", "")
            tool.locator("summary").click()
            expect(tool.locator("pre")).to_contain_text(
                google.results_for("quarterly results", 1)[0]["link"]
            )

            for _ in range(3):
                openai_double.inject(Fault.SERVER_ERROR)
            page.select_option("#model-picker", "flaky")
            page.fill("#composer-input", "And next quarter?")
            page.press("#composer-input", "Enter")
            second = page.locator("article.msg-assistant").nth(1)
            expect(second).to_have_attribute("data-status", "complete", timeout=20_000)
            notice = "Answered by Demo model (offline) because Flaky model was unavailable."
            expect(second.locator(".msg-notice")).to_have_text(notice)

            page.reload()
            expect(page.locator("article.msg-assistant details.tool-use summary")).to_have_text(
                "Used tool: search_internet"
            )
            expect(page.locator("article.msg-assistant .msg-notice")).to_have_text(notice)
        except Exception:
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "tool-and-failover.png"), full_page=True)
            raise
        finally:
            context.close()
            server.stop()


def test_a_lost_delta_is_repaired_from_the_stored_reply_before_done(
    embedded_server: Server, page: Any
) -> None:
    """The server drops a delta it cannot deliver in time (a full channel): the page sees the
    sequence gap, asks for the stored state at once and shows the whole text so far, without
    waiting for `done`. The loss is made here, between the server and the page."""
    import json
    import time

    from playwright.sync_api import expect

    events: list[tuple[float, str]] = []
    dropped: dict[str, int] = {}

    def route(ws: Any) -> None:
        server = ws.connect_to_server()

        def from_server(message: str | bytes) -> None:
            frame = json.loads(message)
            if frame.get("type") == "delta" and frame.get("seq") == 3 and not dropped:
                dropped["seq"] = 3
                events.append((time.monotonic(), "dropped"))
                return
            if frame.get("type") in {"snapshot", "done"}:
                events.append((time.monotonic(), frame["type"]))
            ws.send(message)

        def from_page(message: str | bytes) -> None:
            if json.loads(message).get("type") == "subscribe":
                events.append((time.monotonic(), "subscribe"))
            server.send(message)

        server.on_message(from_server)
        ws.on_message(from_page)

    page.route_web_socket(re.compile(r"/ws/chat/$"), route)
    page.goto(f"{embedded_server.base_url}/")
    page.fill("#id_username", embedded_server.username)
    page.fill("#id_password", embedded_server.password)
    page.click("button[type=submit]")
    expect(page.locator("#connection-status")).to_have_text("Connected")

    page.fill("#composer-input", "Tell me about the gap")
    page.press("#composer-input", "Enter")
    reply = page.locator("article.msg-assistant").first
    expect(reply).to_have_attribute("data-status", "complete", timeout=20_000)

    kinds = [kind for _, kind in events]
    assert dropped == {"seq": 3}
    # dropped → subscribe → snapshot, all before the reply's `done`.
    assert kinds.index("dropped") < kinds.index("subscribe") < kinds.index("snapshot")
    assert kinds.index("snapshot") < kinds.index("done"), kinds
    expect(reply.locator(".markdown strong")).to_have_text("demo model")
