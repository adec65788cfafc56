"""The chat at 1280 px and 390 px: the conversation drawer, a header that fits, the theme
toggle, highlighted code with its copy button, and replies rendered while they stream.
Screenshots of each width, light and dark, are kept under test-artifacts/."""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.e2e.chat_support import (  # noqa: F401 (chat_server is a fixture)
    CODE_REPLY,
    ChatServer,
    chat_server,
    new_page,
    screenshot,
    sign_in,
)
from tests.e2e.test_browser import browser  # noqa: F401 (fixture)

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

LIGHT_BG = "rgb(246, 247, 249)"
DARK_BG = "rgb(17, 20, 24)"


def body_background(page: Any) -> str:
    return str(page.evaluate("getComputedStyle(document.documentElement).backgroundColor"))


def open_chat(page: Any, chat: ChatServer, url: str | None = None) -> None:
    from playwright.sync_api import expect

    sign_in(page, chat)
    if url:
        page.goto(url)
    expect(page.locator("#connection-status")).to_have_text("Connected")


def test_drawer_at_390_px(chat_server: ChatServer, browser: Any) -> None:  # noqa: F811
    from playwright.sync_api import expect

    page = new_page(browser, 390)
    try:
        open_chat(page, chat_server)
        sidebar = page.locator("#sidebar")
        menu = page.get_by_role("button", name="Conversations", exact=True)
        expect(sidebar).to_be_hidden()  # off-canvas and not focusable
        expect(menu).to_be_visible()
        expect(menu).to_have_attribute("aria-controls", "sidebar")
        expect(menu).to_have_attribute("aria-expanded", "false")

        # Opens with the menu button: New conversation, the list, the user and Sign out.
        menu.click()
        expect(menu).to_have_attribute("aria-expanded", "true")
        expect(sidebar).to_be_visible()
        new_chat = sidebar.get_by_role("link", name="New conversation")
        expect(new_chat).to_be_visible()
        expect(new_chat).to_be_focused()
        expect(sidebar.get_by_role("link", name="Code sample")).to_be_visible()
        expect(sidebar.get_by_role("button", name="Sign out")).to_be_visible()
        expect(sidebar.get_by_label("Theme")).to_be_visible()
        # The rest of the page is inert while it is open.
        assert page.evaluate("document.querySelector('main.chat').inert") is True
        page.wait_for_timeout(300)
        screenshot(page, "layout-drawer-390-light")

        # Esc closes it and gives focus back to the menu button.
        page.keyboard.press("Escape")
        expect(menu).to_have_attribute("aria-expanded", "false")
        expect(sidebar).to_be_hidden()
        expect(menu).to_be_focused()
        assert page.evaluate("document.querySelector('main.chat').inert") is False

        # A click on the backdrop closes it; so does its Close button.
        menu.click()
        expect(sidebar).to_be_visible()
        page.mouse.click(370, 600)
        expect(menu).to_have_attribute("aria-expanded", "false")
        menu.click()
        sidebar.get_by_role("button", name="Close conversations").click()
        expect(sidebar).to_be_hidden()

        # Following a conversation link closes it and opens the conversation.
        menu.click()
        sidebar.get_by_role("link", name="Code sample").click()
        expect(page).to_have_url(re.compile(r"/c/[0-9a-f-]{36}/$"))
        expect(page.locator("#conversation-title")).to_have_text("Code sample")
        expect(sidebar).to_be_hidden()
        expect(menu).to_have_attribute("aria-expanded", "false")

        # Widening the window shows the sidebar as a column and hides the menu button.
        menu.click()
        page.set_viewport_size({"width": 1280, "height": 860})
        expect(menu).to_be_hidden()
        expect(sidebar).to_be_visible()
        assert page.evaluate("document.querySelector('main.chat').inert") is False
    finally:
        page.context.close()


def test_sidebar_is_a_column_at_1280_px(chat_server: ChatServer, browser: Any) -> None:  # noqa: F811
    from playwright.sync_api import expect

    page = new_page(browser, 1280)
    try:
        open_chat(page, chat_server)
        expect(page.get_by_role("button", name="Conversations", exact=True)).to_be_hidden()
        sidebar = page.locator("#sidebar")
        expect(sidebar.get_by_role("link", name="New conversation")).to_be_visible()
        expect(sidebar.get_by_role("button", name="Sign out")).to_be_visible()
        expect(page.locator("#composer-input")).to_be_visible()
        screenshot(page, "layout-chat-1280-light")
    finally:
        page.context.close()


@pytest.mark.parametrize("width", [1280, 390])
def test_everything_fits_without_sideways_scrolling(
    chat_server: ChatServer,  # noqa: F811
    browser: Any,  # noqa: F811
    width: int,
) -> None:
    page = new_page(browser, width)
    try:
        open_chat(page, chat_server, chat_server.conversation_url)
        assert page.evaluate("document.documentElement.scrollWidth") <= width
        for selector in (
            "#conversation-title", "#model-picker", "#connection-status", "#composer-input",
            "#send-button", ".code-copy",
        ):  # fmt: skip
            box = page.locator(selector).first.bounding_box()
            assert box is not None, selector
            assert box["x"] >= 0 and box["x"] + box["width"] <= width + 0.5, (selector, box)
        # The composer is at the bottom of the viewport (the layout is one screen high).
        composer = page.locator("#composer").bounding_box()
        assert composer is not None
        assert composer["y"] + composer["height"] <= WIDTH_HEIGHT[width] + 0.5
    finally:
        page.context.close()


WIDTH_HEIGHT = {1280: 860, 390: 844}


@pytest.mark.parametrize("width", [1280, 390])
def test_theme_toggle_persists_and_follows_the_system(
    chat_server: ChatServer,  # noqa: F811
    browser: Any,  # noqa: F811
    width: int,
) -> None:
    from playwright.sync_api import expect

    page = new_page(browser, width, "dark")
    try:
        open_chat(page, chat_server, chat_server.conversation_url)
        html = page.locator("html")
        # No choice stored: the system's dark scheme applies, code colours included.
        expect(html).not_to_have_attribute("data-theme", re.compile(".*"))
        assert body_background(page) == DARK_BG
        keyword_colour = (
            "() => getComputedStyle(document.querySelector('.markdown code.hl span.k')).color"
        )
        dark_keyword = page.evaluate(keyword_colour)
        screenshot(page, f"layout-chat-{width}-dark")

        def pick(value: str) -> None:
            if width == 390:
                page.get_by_role("button", name="Conversations", exact=True).click()
            page.get_by_label("Theme").select_option(value)
            if width == 390:
                page.keyboard.press("Escape")

        pick("light")
        expect(html).to_have_attribute("data-theme", "light")
        assert body_background(page) == LIGHT_BG
        assert page.evaluate(keyword_colour) != dark_keyword
        screenshot(page, f"layout-chat-{width}-light")

        # Kept across a reload, applied before the first paint, and on the other pages.
        page.reload()
        expect(html).to_have_attribute("data-theme", "light")
        assert body_background(page) == LIGHT_BG
        expect(page.get_by_label("Theme")).to_have_value("light")
        for other in ("/accounts/password/", "/accounts/api-keys/"):
            page.goto(f"{chat_server.base_url}{other}")
            expect(html).to_have_attribute("data-theme", "light")
            assert body_background(page) == LIGHT_BG
        page.goto(chat_server.conversation_url)

        # Back to "System": follows the system's scheme as it changes.
        pick("system")
        expect(html).not_to_have_attribute("data-theme", re.compile(".*"))
        assert body_background(page) == DARK_BG
        page.emulate_media(color_scheme="light")
        assert body_background(page) == LIGHT_BG
        pick("dark")
        assert body_background(page) == DARK_BG  # an explicit choice beats the system
        page.reload()
        assert body_background(page) == DARK_BG
    finally:
        page.context.close()


@pytest.mark.parametrize("width", [1280, 390])
def test_code_block_is_highlighted_and_copies(
    chat_server: ChatServer,  # noqa: F811
    browser: Any,  # noqa: F811
    width: int,
) -> None:
    from playwright.sync_api import expect

    page = new_page(browser, width, permissions=["clipboard-read", "clipboard-write"])
    try:
        open_chat(page, chat_server, chat_server.conversation_url)
        code = page.locator(".markdown pre code.hl.language-python")
        expect(code).to_have_count(1)
        expect(code.locator("span.k").first).to_have_text("def")
        assert code.evaluate("node => node.querySelector('[style]')") is None
        # Coloured by code.css: a keyword is not the plain text colour.
        colours = page.evaluate(  # one atomic read (a snapshot may redraw the transcript)
            """() => { const node = document.querySelector('.markdown pre code.hl');
                       return [getComputedStyle(node).color,
                               getComputedStyle(node.querySelector('span.k')).color]; }"""
        )
        assert colours[0] != colours[1], colours

        button = page.get_by_role("button", name="Copy python code")
        expect(button).to_have_text("Copy")
        button.click()
        expect(button).to_have_text("Copied")
        expect(page.locator("#copy-status")).to_have_text("Copied")
        expect(page.locator("#copy-status")).to_have_attribute("role", "status")
        copied = page.evaluate("navigator.clipboard.readText()")
        expected = CODE_REPLY.split("```python\n", 1)[1].split("```", 1)[0]
        assert copied == expected
        expect(button).to_have_text("Copy", timeout=5_000)
    finally:
        page.context.close()


@pytest.mark.parametrize("width", [1280, 390])
def test_streaming_shows_rendered_markdown_before_done(
    chat_server: ChatServer,  # noqa: F811
    browser: Any,  # noqa: F811
    width: int,
) -> None:
    """The demo model writes `**demo model**`, a `> quote` and a numbered list, paced: the
    reply shows bold text while it is still streaming and never the raw markers."""
    from playwright.sync_api import expect

    page = new_page(browser, width, "dark" if width == 390 else "light")
    try:
        open_chat(page, chat_server)
        page.evaluate(
            """() => {
                window.__frames = [];
                const transcript = document.getElementById("transcript");
                new MutationObserver(() => {
                    const reply = transcript.querySelector("article.msg-assistant");
                    if (!reply) return;
                    const body = reply.querySelector(".msg-body");
                    window.__frames.push({
                        status: reply.dataset.status,
                        streamed: body.classList.contains("msg-streamed"),
                        text: body.textContent,
                        strong: [...body.querySelectorAll("strong")].map((n) => n.textContent),
                        quote: body.querySelectorAll("blockquote").length,
                        items: body.querySelectorAll("ol > li").length,
                        tags: [...body.querySelectorAll("*")].map((n) => n.tagName),
                    });
                }).observe(transcript, { subtree: true, childList: true, characterData: true,
                                         attributes: true });
            }"""
        )
        page.fill("#composer-input", "Streaming check")
        page.press("#composer-input", "Enter")
        reply = page.locator("article.msg-assistant").first
        expect(reply.locator(".msg-streamed strong")).to_have_text("demo model")
        expect(reply).to_have_attribute("data-status", "streaming")
        screenshot(page, f"layout-streaming-{width}")
        expect(reply).to_have_attribute("data-status", "complete", timeout=20_000)
        frames = page.evaluate("window.__frames")
    finally:
        page.context.close()

    streamed = [f for f in frames if f["streamed"] and f["status"] == "streaming"]
    assert len(streamed) > 5, frames
    assert any("demo model" in f["strong"] for f in streamed)
    assert any(f["quote"] for f in streamed) and any(f["items"] >= 2 for f in streamed)
    for frame in streamed:
        assert "**" not in frame["text"], frame
        assert "> Streaming" not in frame["text"] and "\n>" not in frame["text"], frame
        assert "1. " not in frame["text"], frame
        assert set(frame["tags"]) <= {"P", "STRONG", "EM", "CODE", "BLOCKQUOTE", "OL", "UL", "LI"}
