"""The Preferences page in a real browser at 1280 px and 390 px: custom instructions saved
(CSRF form), shown again, refused with a reason when the data policy would not allow them,
and a chat reply still works with them. That the reply's system prompt carries them after the
organisation's is proven against a loopback provider in preferences/tests (the demo model
cannot reveal its prompt)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.e2e.conftest import ARTIFACTS, RestartableServer
from tests.e2e.test_browser import browser, log_in  # noqa: F401 (fixtures)
from tests.e2e.test_csp_browser import Violations

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

INSTRUCTIONS = "I work in treasury. Answer briefly, with a summary first."
READ_BACK = (
    "from accounts.models import User; from preferences.selectors import instructions_of; "
    "print(instructions_of(User.objects.get(username='e2e-admin')))"
)


@pytest.mark.parametrize(("width", "height"), [(1280, 900), (390, 844)])
def test_instructions_are_saved_refused_with_a_reason_and_used_in_chat(
    restartable_server: RestartableServer,
    browser: Any,  # noqa: F811
    width: int,
    height: int,
) -> None:
    from playwright.sync_api import expect

    server = restartable_server.server
    context = browser.new_context(viewport={"width": width, "height": height})
    page = context.new_page()
    violations = Violations(page)
    ARTIFACTS.mkdir(exist_ok=True)
    try:
        log_in(page, server)
        expect(page.locator("#connection-status")).to_have_text("Connected")
        if width > 720:
            page.click("nav.sidebar-links >> text=Preferences")
        else:  # the sidebar is another helper's drawer at this width
            page.goto(f"{server.base_url}/settings/")
        expect(page.locator("h1")).to_have_text("Preferences")
        field = page.get_by_label("Instructions for your chats")
        field.fill(INSTRUCTIONS)
        page.click("text=Save instructions")
        expect(page.locator("[role=status]")).to_have_text("Your instructions are saved.")
        expect(field).to_have_value(INSTRUCTIONS)
        assert (
            restartable_server.manage("shell", "-c", READ_BACK).strip().splitlines()[-1]
            == INSTRUCTIONS
        )
        assert page.evaluate("document.documentElement.scrollWidth") <= width + 1
        page.screenshot(path=str(ARTIFACTS / f"preferences-{width}.png"), full_page=True)

        # The data policy (flag by default) is set to block: a card number is refused, with
        # the reason, and what was typed is kept for fixing.
        restartable_server.manage(
            "shell", "-c",
            "from guardrails.models import GuardrailPolicy; p = GuardrailPolicy.current(); "
            "p.dlp_mode = 'block'; p.save()",
        )  # fmt: skip
        field.fill("Always quote my card 4111 1111 1111 1111.")
        page.click("text=Save instructions")
        error = page.locator("#instructions-error")
        expect(error).to_contain_text("payment card")
        expect(field).to_have_value("Always quote my card 4111 1111 1111 1111.")
        assert (
            restartable_server.manage("shell", "-c", READ_BACK).strip().splitlines()[-1]
            == INSTRUCTIONS
        )
        page.screenshot(path=str(ARTIFACTS / f"preferences-refused-{width}.png"), full_page=True)

        # A chat reply with the instructions in force.
        page.goto(f"{server.base_url}/")
        expect(page.locator("#connection-status")).to_have_text("Connected")
        page.fill("#composer-input", "What should I do first?")
        page.press("#composer-input", "Enter")
        reply = page.locator("article.msg-assistant").first
        expect(reply).to_have_attribute("data-status", "complete", timeout=20_000)
        assert violations.of_this_page() == [] and violations.console == []
    finally:
        context.close()
