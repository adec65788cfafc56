"""The axe-core check (tests/e2e/axe.py) on the sign-in and chat pages: no serious or
critical violations, in light and dark, at 1280 px and 390 px; and the page is usable with
the keyboard alone. Screenshots of each state are kept under test-artifacts/."""

from __future__ import annotations

from typing import Any

import pytest

from tests.e2e.axe import assert_no_serious_violations, axe_violations
from tests.e2e.chat_support import ChatServer, chat_server, new_page, screenshot, sign_in  # noqa: F401
from tests.e2e.test_browser import browser  # noqa: F401 (fixture)

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

VIEWS = [(width, scheme) for width in (1280, 390) for scheme in ("light", "dark")]


@pytest.mark.parametrize(("width", "scheme"), VIEWS)
def test_sign_in_and_chat_pages_have_no_serious_violations(
    chat_server: ChatServer,  # noqa: F811
    browser: Any,  # noqa: F811
    width: int,
    scheme: str,
) -> None:
    from playwright.sync_api import expect

    page = new_page(browser, width, scheme)
    try:
        page.goto(f"{chat_server.base_url}/accounts/login/")
        assert_no_serious_violations(page)
        screenshot(page, f"a11y-sign-in-{width}-{scheme}")

        sign_in(page, chat_server)
        expect(page.locator("#connection-status")).to_have_text("Connected")
        expect(page.locator("h1")).to_have_text("New conversation")
        assert_no_serious_violations(page)
        screenshot(page, f"a11y-chat-empty-{width}-{scheme}")

        # A conversation with a highlighted code block (and its copy button).
        page.goto(chat_server.conversation_url)
        expect(page.locator("#connection-status")).to_have_text("Connected")
        expect(page.locator(".markdown code.hl span.k").first).to_be_visible()
        expect(page.get_by_role("button", name="Copy python code")).to_be_visible()
        assert_no_serious_violations(page)
        screenshot(page, f"a11y-chat-code-{width}-{scheme}")

        if width == 390:
            page.get_by_role("button", name="Conversations", exact=True).click()
            expect(page.locator("#sidebar")).to_be_visible()
            page.wait_for_timeout(300)  # the slide-in transition
            assert_no_serious_violations(page)
            screenshot(page, f"a11y-chat-drawer-{width}-{scheme}")
    finally:
        page.context.close()


def test_the_check_fails_on_a_serious_violation(
    chat_server: ChatServer,  # noqa: F811
    browser: Any,  # noqa: F811
) -> None:
    """Positive control: a button without a name and low-contrast text are found."""
    page = new_page(browser, 1280)
    try:
        page.goto(f"{chat_server.base_url}/accounts/login/")
        page.evaluate(
            """() => {
                 const button = document.createElement("button");
                 document.querySelector("main").append(button);
               }"""
        )
        ids = {violation["id"] for violation in axe_violations(page)}
        assert "button-name" in ids
        with pytest.raises(AssertionError, match="button-name"):
            assert_no_serious_violations(page)
    finally:
        page.context.close()


@pytest.mark.parametrize("width", [1280, 390])
def test_keyboard_only_chat(
    chat_server: ChatServer,  # noqa: F811
    browser: Any,  # noqa: F811
    width: int,
) -> None:
    from playwright.sync_api import expect

    page = new_page(browser, width)
    try:
        sign_in(page, chat_server)
        expect(page.locator("#connection-status")).to_have_text("Connected")

        # The first Tab stop is the skip link; following it lands in the message box.
        page.keyboard.press("Tab")
        skip = page.get_by_role("link", name="Skip to the message box")
        expect(skip).to_be_focused()
        expect(skip).to_be_visible()
        page.keyboard.press("Enter")
        expect(page.locator("#composer-input")).to_be_focused()

        # Enter sends, Shift+Enter adds a line.
        page.keyboard.type("Line one")
        page.keyboard.press("Shift+Enter")
        page.keyboard.type("line two")
        expect(page.locator("#composer-input")).to_have_value("Line one\nline two")
        page.keyboard.press("Enter")
        reply = page.locator("article.msg-assistant").first
        expect(reply).to_have_attribute("data-status", "complete", timeout=20_000)

        # Every control is reachable with Tab, in a sensible order, with a visible focus.
        reached = []
        for _ in range(40):
            page.keyboard.press("Tab")
            info = page.evaluate(
                """() => { const a = document.activeElement;
                           const style = getComputedStyle(a);
                           const name = a.getAttribute('aria-label') || a.textContent || '';
                           return { id: a.id, text: name.trim(), tag: a.tagName,
                                    outline: style.outlineStyle }; }"""
            )
            reached.append(info)
            if info["tag"] != "BODY":
                assert info["outline"] != "none", info
        texts = [item["text"] for item in reached]
        ids = [item["id"] for item in reached]
        assert "model-picker" in ids and "composer-input" in ids
        if width == 1280:
            assert "New conversation" in texts and "Sign out" in texts
            assert "theme-picker" in ids
        else:
            # On a phone the list is in the drawer: the menu button opens it from the keyboard.
            assert "Sign out" not in texts
            menu = page.get_by_role("button", name="Conversations", exact=True)
            menu.focus()
            page.keyboard.press("Enter")
            expect(menu).to_have_attribute("aria-expanded", "true")
            inside = []
            for _ in range(12):
                page.keyboard.press("Tab")
                inside.append(
                    page.evaluate(
                        "() => [document.activeElement.closest('#sidebar') !== null,"
                        " (document.activeElement.textContent || '').trim()]"
                    )
                )
            assert all(flag for flag, _ in inside), inside  # focus stays in the drawer
            assert "Sign out" in [text for _, text in inside]
            assert "New conversation" in [text for _, text in inside]
            page.keyboard.press("Escape")
            expect(menu).to_have_attribute("aria-expanded", "false")
            expect(menu).to_be_focused()
    finally:
        page.context.close()


@pytest.mark.parametrize(("width", "scheme"), [(1280, "dark"), (390, "dark"), (390, "light")])
def test_account_and_error_pages_have_no_serious_violations(
    chat_server: ChatServer,  # noqa: F811
    browser: Any,  # noqa: F811
    width: int,
    scheme: str,
) -> None:
    page = new_page(browser, width, scheme)
    try:
        sign_in(page, chat_server)
        pages = {
            "password": "/accounts/password/",
            "api-keys": "/accounts/api-keys/",
            "not-found": "/c/00000000-0000-4000-8000-000000000000/",
        }
        for name, path in pages.items():
            page.goto(f"{chat_server.base_url}{path}")
            assert_no_serious_violations(page)
            screenshot(page, f"a11y-{name}-{width}-{scheme}")
    finally:
        page.context.close()
