"""Per-message tools in a real browser, at a desktop and a phone width: timestamps, copy as
Markdown, regenerate the last reply (the earlier version kept and shown), edit and resend
the last message, each reply's tokens and cost after a reload, stop with Esc.

Needs /usr/bin/chromium. Screenshots land in test-artifacts/ (messages-*.png).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.conftest import ARTIFACTS, Server
from tests.e2e.test_browser import browser, log_in  # noqa: F401  (the browser fixture)

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

VIEWPORTS = {"desktop": (1280, 860), "phone": (390, 844)}
ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d")
COST = re.compile(r"^\d+ tokens · \d+\.\d+ USD$")


@pytest.fixture(params=list(VIEWPORTS))
def chat(request: pytest.FixtureRequest, browser: Any, embedded_server: Server) -> Iterator[Any]:  # noqa: F811
    width, height = VIEWPORTS[request.param]
    context = browser.new_context(
        viewport={"width": width, "height": height},
        permissions=["clipboard-read", "clipboard-write"],
    )
    page = context.new_page()
    page.viewport_name = request.param
    log_in(page, embedded_server)
    from playwright.sync_api import expect

    expect(page.locator("#connection-status")).to_have_text("Connected")
    yield page
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / f"{request.node.name}.png"), full_page=True)
    context.close()


def shot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"messages-{name}-{page.viewport_name}.png"))


def send(page: Any, text: str) -> None:
    page.fill("#composer-input", text)
    page.press("#composer-input", "Enter")


def test_regenerate_edit_copy_and_what_a_reload_shows(chat: Any) -> None:
    from playwright.sync_api import expect

    page = chat
    send(page, "Hello versions")
    reply = page.locator("#transcript > article.msg-assistant")
    expect(reply).to_have_attribute("data-status", "complete", timeout=20_000)

    # Timestamps: a <time datetime> on every message, shown as local time.
    times = page.locator("#transcript > article.msg > .msg-head time")
    expect(times).to_have_count(2)
    for index in range(2):
        assert ISO.match(times.nth(index).get_attribute("datetime") or "")
        assert re.search(r"\d\d?:\d\d", times.nth(index).inner_text())
    expect(reply.locator(".msg-cost")).to_have_text(COST)
    first_cost = reply.locator(".msg-cost").inner_text()

    # Copy the reply: the clipboard holds its Markdown, not the rendered text.
    reply.locator(".act-copy").click()
    expect(reply.locator(".act-copy")).to_have_text("Copied")
    copied = page.evaluate("navigator.clipboard.readText()")
    assert "This is the **demo model**" in copied and "> Hello versions" in copied
    user = page.locator("#transcript > article.msg-user")
    user.locator(".act-copy").click()
    assert page.evaluate("navigator.clipboard.readText()") == "Hello versions"

    # Regenerate: a new reply streams; the earlier one is kept as version 1.
    old_id = reply.get_attribute("data-id")
    expect(user.locator(".act-regenerate")).to_have_count(0)
    reply.locator(".act-regenerate").click()
    expect(reply).not_to_have_attribute("data-id", old_id or "", timeout=10_000)
    expect(reply).to_have_attribute("data-status", re.compile("pending|streaming"))
    expect(reply.locator(".act-regenerate")).to_have_count(0)  # not while it streams
    expect(user.locator(".act-edit")).to_have_count(0)
    expect(reply).to_have_attribute("data-status", "complete", timeout=20_000)
    expect(page.locator("#transcript > article.msg")).to_have_count(2)
    expect(reply.locator(".msg-version")).to_have_text("Version 2 of 2")
    versions = reply.locator(".msg-versions")
    expect(versions.locator("summary")).to_have_text("1 earlier version")
    versions.locator("summary").click()
    earlier = versions.locator(".version-item")
    expect(earlier).to_have_attribute("data-id", old_id or "")
    expect(earlier.locator(".version-cost")).to_have_text(first_cost)
    expect(reply.locator(".msg-cost")).to_have_text(COST)
    shot(page, "regenerated")

    # Edit and resend the last message: the new text is answered, the old turn kept.
    user.locator(".act-edit").click()
    editor = user.locator(".msg-edit textarea")
    expect(editor).to_be_focused()
    expect(editor).to_have_value("Hello versions")
    shot(page, "editing")
    editor.fill("Hello, edited")
    editor.press("Enter")
    expect(user.locator(":scope > .msg-body")).to_have_text("Hello, edited", timeout=10_000)
    expect(user.locator(".msg-version")).to_have_text("Version 2 of 2")
    expect(reply).to_have_attribute("data-status", "complete", timeout=20_000)
    expect(reply.locator(":scope > .msg-body blockquote")).to_have_text("Hello, edited")
    expect(reply.locator(".msg-version")).to_have_text("Version 3 of 3")
    expect(page.locator("#transcript > article.msg")).to_have_count(2)
    cost_before_reload = reply.locator(".msg-cost").inner_text()

    # After a reload: times, versions, and each reply's tokens and cost are all there.
    page.reload()
    expect(page.locator("#connection-status")).to_have_text("Connected")
    expect(page.locator("#transcript > article.msg")).to_have_count(2)
    expect(times).to_have_count(2)
    expect(reply.locator(".msg-cost")).to_have_text(cost_before_reload)
    expect(reply.locator(".msg-versions summary")).to_have_text("2 earlier versions")
    expect(user.locator(".msg-versions .version-body")).to_have_text("Hello versions")
    reply.locator(".msg-versions summary").click()
    expect(reply.locator(".version-cost")).to_have_count(2)
    expect(reply.locator(".version-cost").first).to_have_text(first_cost)
    expect(reply.locator(".act-regenerate")).to_be_visible()
    expect(user.locator(".act-edit")).to_be_visible()
    shot(page, "reloaded")


def test_escape_and_the_keyboard_stop_a_streaming_reply(chat: Any) -> None:
    from playwright.sync_api import expect

    page = chat
    send(page, "Stop me with Esc")
    reply = page.locator("#transcript > article.msg-assistant").last
    expect(reply).to_have_attribute("data-status", "streaming", timeout=10_000)
    shot(page, "streaming")
    page.keyboard.press("Escape")
    expect(reply).to_have_attribute("data-status", "cancelled", timeout=10_000)
    expect(reply.locator(".msg-note")).to_have_text("Stopped.")

    # The Stop button is reached with Tab from the composer and pressed with Enter.
    send(page, "Stop me with the keyboard")
    second = page.locator("#transcript > article.msg-assistant").last
    expect(second).to_have_attribute("data-status", "streaming", timeout=10_000)
    page.focus("#composer-input")
    page.keyboard.press("Tab")
    expect(page.locator("#stop-button")).to_be_focused()
    page.keyboard.press("Enter")
    expect(second).to_have_attribute("data-status", "cancelled", timeout=10_000)
    # A stopped reply can be regenerated like any other.
    expect(second.locator(".act-regenerate")).to_be_visible()
