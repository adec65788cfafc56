"""The Content-Security-Policy in a real browser: nothing the pages need is refused.

Chromium reports every CSP refusal as a console error ("Refused to ..." in older versions,
"... violates the following Content Security Policy directive" in newer ones) and fires a
`securitypolicyviolation` event; both are collected on every page. A deliberate violation
first proves that the policy is enforced and that the collector sees refusals.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.e2e.conftest import Server
from tests.e2e.test_browser import browser, log_in, page  # noqa: F401 (fixtures)

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

COLLECT_VIOLATIONS = """
window.__cspViolations = [];
document.addEventListener("securitypolicyviolation", (event) => {
  window.__cspViolations.push(`${event.violatedDirective} ${event.blockedURI}`);
});
"""


class Violations:
    def __init__(self, tab: Any) -> None:
        self.page = tab
        self.console: list[str] = []
        self.all: list[str] = []
        tab.on("console", self._on_console)
        tab.add_init_script(COLLECT_VIOLATIONS)

    def _on_console(self, message: Any) -> None:
        text = message.text
        self.all.append(text)
        if "Refused to" in text or "Content Security Policy" in text:
            self.console.append(f"{self.page.url}: {text}")

    def of_this_page(self) -> list[str]:
        events = self.page.evaluate("window.__cspViolations || []")
        return [f"{self.page.url}: {event}" for event in events]


def test_pages_work_under_the_policy_without_violations(
    embedded_server: Server,
    page: Any,  # noqa: F811
) -> None:
    from playwright.sync_api import expect

    violations = Violations(page)
    response = page.goto(f"{embedded_server.base_url}/accounts/login/")
    assert "script-src 'self'" in response.headers["content-security-policy"]
    assert violations.of_this_page() == []

    # The chat: the socket connects (connect-src) and a reply streams and renders.
    log_in(page, embedded_server)
    expect(page.locator("#connection-status")).to_have_text("Connected")
    page.fill("#composer-input", "Hello under a strict policy")
    page.press("#composer-input", "Enter")
    reply = page.locator("article.msg-assistant").first
    expect(reply).to_have_attribute("data-status", "complete", timeout=20_000)
    expect(reply.locator(".markdown strong")).to_have_text("demo model")
    found = violations.of_this_page()

    # Positive control: a remote image (as a model might write one) is refused and seen.
    page.evaluate(
        """() => { const img = document.createElement("img");
                   img.src = "http://203.0.113.1/pixel.png"; document.body.append(img); }"""
    )
    page.wait_for_function("window.__cspViolations.length > 0", timeout=5_000)
    assert any("img-src" in v for v in violations.of_this_page())
    for _ in range(50):  # console messages arrive on their own schedule
        if violations.console:
            break
        page.wait_for_timeout(100)
    assert any("203.0.113.1/pixel.png" in text for text in violations.console), violations.all
    violations.console.clear()

    # The console: the audit list, the spend report with its chart, lists and change forms.
    base = embedded_server.base_url
    for path, ready in [
        ("/admin/", "#content-main"),
        ("/admin/audit/auditevent/", "#result_list"),
        ("/admin/costs/costentry/report/", "svg.spend-chart rect.spend-bar"),
        ("/admin/providers/aimodel/", "#result_list"),
        ("/admin/costs/budget/add/", "form#budget_form"),
    ]:
        page.goto(f"{base}{path}")
        expect(page.locator(ready).first).to_be_attached()
        page.wait_for_load_state("load")
        found += violations.of_this_page()

    # A change form, reached the way an administrator would.
    page.goto(f"{base}/admin/providers/aimodel/")
    page.locator("#result_list tbody th a").first.click()
    expect(page).to_have_url(re.compile(r"/admin/providers/aimodel/\d+/change/"))
    expect(page.locator("input[name=_save]")).to_be_visible()
    page.wait_for_load_state("load")
    found += violations.of_this_page()

    # Not found: the error page is under the policy too.
    response = page.goto(f"{base}/no/such/page/")
    assert response.status == 404 and "content-security-policy" in response.headers
    found += violations.of_this_page()

    assert found == []
    assert violations.console == []
