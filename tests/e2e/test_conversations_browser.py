"""Conversations in a real browser, at desktop (1280 px) and phone (390 px) widths: rename
from the title, export as Markdown, delete with a confirmation dialog (keyboard only), a
held conversation saying why it cannot be deleted, and the sidebar's search finding a word
of an older message and opening it. Screenshots are kept under test-artifacts/.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.e2e.conftest import ARTIFACTS, RestartableServer
from tests.e2e.test_browser import browser, log_in  # noqa: F401 (fixtures)
from tests.e2e.test_csp_browser import Violations

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

VIEWPORTS = {"desktop": (1280, 900), "phone": (390, 844)}
HOLD = (
    "from conversations.models import Conversation; "
    "Conversation.objects.filter(public_id='{id}').update(legal_hold={held})"
)


def chat(page: Any, text: str) -> None:
    from playwright.sync_api import expect

    replies = page.locator("article.msg-assistant")
    before = replies.count()
    page.fill("#composer-input", text)
    page.press("#composer-input", "Enter")
    expect(replies).to_have_count(before + 1)
    expect(replies.nth(before)).to_have_attribute("data-status", "complete", timeout=20_000)


def conversation_id(page: Any) -> str:
    match = re.search(r"/c/([0-9a-f-]{36})/", page.url)
    assert match, page.url
    return match.group(1)


def shot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"conversations-{name}.png"))


def open_sidebar(page: Any) -> None:
    """Make the sidebar reachable: always there at desktop width; at phone width through the
    menu button, which opens it as a drawer."""
    from playwright.sync_api import expect

    sidebar = page.locator("nav.sidebar")
    if not sidebar.is_visible():
        page.click("#menu-button")
        expect(sidebar).to_be_visible()


@pytest.mark.parametrize("viewport", list(VIEWPORTS))
def test_rename_export_delete_and_search(
    restartable_server: RestartableServer,
    browser: Any,  # noqa: F811
    viewport: str,
) -> None:
    from playwright.sync_api import expect

    server = restartable_server.server
    width, height = VIEWPORTS[viewport]
    context = browser.new_context(
        viewport={"width": width, "height": height}, accept_downloads=True
    )
    page = context.new_page()
    violations = Violations(page)
    try:
        log_in(page, server)
        expect(page.locator("#connection-status")).to_have_text("Connected")
        expect(page.locator("#conversation-actions")).to_be_hidden()  # nothing to act on yet

        # Conversation A: the word is in its first (older) message; then B, about something else.
        chat(page, "Plan the zanzibar offsite for the whole team")
        expect(page.locator("#conversation-actions")).to_be_visible()
        first = conversation_id(page)
        chat(page, "And what about the budget?")
        page.goto(f"{server.base_url}/")
        chat(page, "Quarterly numbers, please")
        other = conversation_id(page)

        # --- Search (the sidebar; at phone width inside the drawer) ------------------------
        open_sidebar(page)
        page.fill("#search-input", "zanzibar OFFSITE")
        results = page.locator("#search-results a.search-hit")
        expect(results).to_have_count(1)
        expect(results.first).to_contain_text("Plan the zanzibar offsite")
        expect(page.locator("#search-status")).to_have_text("1 conversation found")
        expect(page.locator("#conversation-list")).to_be_hidden()
        shot(page, f"search-{viewport}")
        page.fill("#search-input", "zanzibar quarterly")  # every word must match
        expect(page.locator("#search-status")).to_have_text("No conversation matches every word.")
        page.fill("#search-input", "zanzibar")
        expect(results).to_have_count(1)
        results.first.click()
        expect(page).to_have_url(re.compile(rf"/c/{first}/#m-[0-9a-f-]{{36}}$"))
        found = page.locator("article.msg-found")
        expect(found).to_have_count(1)
        expect(found).to_contain_text("zanzibar")
        expect(found).to_be_in_viewport()
        expect(page.locator("#conversation-title")).to_have_text(
            "Plan the zanzibar offsite for the whole team"
        )

        # --- Rename from the title: Enter saves, Escape cancels --------------------------
        page.click("#rename-button")
        title_input = page.locator("#conversation-title input")
        expect(title_input).to_be_focused()
        title_input.fill("Something else")
        title_input.press("Escape")
        expect(page.locator("#conversation-title")).to_have_text(
            "Plan the zanzibar offsite for the whole team"
        )
        page.click("#rename-button")
        page.locator("#conversation-title input").fill("  Zanzibar   trip  ")
        shot(page, f"rename-{viewport}")
        page.locator("#conversation-title input").press("Enter")
        expect(page.locator("#conversation-title")).to_have_text("Zanzibar trip")
        expect(page).to_have_title("Zanzibar trip · Enterprise AI")
        page.reload()
        expect(page.locator("#conversation-title")).to_have_text("Zanzibar trip")
        if viewport == "desktop":
            expect(page.locator(f'#conversation-list a[data-id="{first}"]')).to_have_text(
                "Zanzibar trip"
            )
        page.click("#rename-button")
        page.locator("#conversation-title input").fill("")
        page.locator("#conversation-title input").press("Enter")
        expect(page.locator("#error-banner")).to_have_text("The title is empty.")
        expect(page.locator("#conversation-title")).to_have_text("Zanzibar trip")

        # --- Export as Markdown ----------------------------------------------------------
        with page.expect_download() as download_info:
            page.click("#export-link")
        download = download_info.value
        assert re.fullmatch(r"zanzibar-trip-\d{4}-\d{2}-\d{2}\.md", download.suggested_filename)
        with open(download.path(), encoding="utf-8") as exported:
            text = exported.read()
        assert text.startswith("# Zanzibar trip\n")
        assert "## You · " in text and "Plan the zanzibar offsite" in text
        assert "## Assistant (demo) · " in text

        # --- Delete refused under legal hold: the dialog says why ------------------------
        restartable_server.manage("shell", "-c", HOLD.format(id=first, held=True))
        page.click("#delete-button")
        dialog = page.locator("#delete-dialog")
        expect(dialog).to_be_visible()
        expect(page.locator("#delete-dialog-name")).to_have_text("Zanzibar trip")
        expect(page.locator("#delete-cancel")).to_be_focused()
        page.click("#delete-confirm")
        error = page.locator("#delete-dialog-error")
        expect(error).to_contain_text("under legal hold, so it cannot be deleted")
        expect(page.locator("#delete-confirm")).to_be_disabled()
        shot(page, f"delete-held-{viewport}")
        page.keyboard.press("Escape")
        expect(dialog).to_be_hidden()
        page.reload()
        expect(page.locator("#conversation-title")).to_have_text("Zanzibar trip")

        # --- Delete with confirmation, keyboard only --------------------------------------
        restartable_server.manage("shell", "-c", HOLD.format(id=first, held=False))
        page.focus("#delete-button")
        page.keyboard.press("Enter")
        expect(dialog).to_be_visible()
        expect(page.locator("#delete-dialog-error")).to_be_hidden()
        shot(page, f"delete-confirm-{viewport}")
        page.keyboard.press("Tab")
        expect(page.locator("#delete-confirm")).to_be_focused()
        page.keyboard.press("Enter")
        expect(page).to_have_url(f"{server.base_url}/")
        expect(page.locator("#conversation-title")).to_have_text("New conversation")
        expect(page.locator(f'#conversation-list a[data-id="{first}"]')).to_have_count(0)
        expect(page.locator(f'#conversation-list a[data-id="{other}"]')).to_have_count(1)
        response = page.request.get(f"{server.base_url}/c/{first}/")
        assert response.status == 404
        open_sidebar(page)
        page.fill("#search-input", "zanzibar")
        expect(page.locator("#search-status")).to_have_text("No conversation matches every word.")
        shot(page, f"after-delete-{viewport}")
        assert violations.of_this_page() == [] and violations.console == []
    finally:
        context.close()
