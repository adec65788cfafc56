"""My usage, the model picker's description and price, and an explained budget refusal, in a
real browser at 1280 px and 390 px. Screenshots go to test-artifacts/ for a person to look
at; axe-core checks the usage page for serious or critical violations."""

from __future__ import annotations

from typing import Any

import pytest

from tests.e2e.axe import assert_no_serious_violations
from tests.e2e.conftest import ARTIFACTS, RestartableServer
from tests.e2e.test_browser import browser, log_in  # noqa: F401 (fixtures)
from tests.e2e.test_csp_browser import Violations

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

PRICE = """
import datetime as dt
from decimal import Decimal
from django.utils import timezone
from costs.models import ModelPrice
from providers.models import AIModel
demo = AIModel.objects.get(key="demo")
ModelPrice.objects.create(model=demo, input_per_million=Decimal("3"),
    output_per_million=Decimal("15"), effective_from=timezone.now() - dt.timedelta(days=1))
"""

BUDGET = """
from decimal import Decimal
from accounts.models import User
from costs.models import Budget
admin = User.objects.get(username="e2e-admin")
Budget.objects.create(name="My allowance", scope="user", user=admin, period="monthly",
    limit_amount=Decimal("{limit}"))
"""

WIDTHS = [(1280, 900), (390, 844)]


@pytest.mark.parametrize(("width", "height"), WIDTHS)
def test_usage_page_picker_and_explained_refusal(
    restartable_server: RestartableServer,
    browser: Any,  # noqa: F811
    width: int,
    height: int,
) -> None:
    from playwright.sync_api import expect

    restartable_server.manage("shell", "-c", PRICE)
    server = restartable_server.server
    context = browser.new_context(viewport={"width": width, "height": height})
    page = context.new_page()
    violations = Violations(page)
    ARTIFACTS.mkdir(exist_ok=True)
    try:
        log_in(page, server)
        expect(page.locator("#connection-status")).to_have_text("Connected")

        # The picker describes the selected model and its price, for screen readers too.
        info = page.locator("#model-info")
        expect(info).to_contain_text("Offline stand-in")
        expect(info).to_contain_text("3.00 USD per 1M input tokens")
        expect(info).to_contain_text("15.00 USD per 1M output tokens")
        assert page.locator("#model-picker").get_attribute("aria-describedby") == "model-info"
        box = info.bounding_box()
        assert box and box["x"] >= 0 and box["x"] + box["width"] <= width + 1

        page.fill("#composer-input", "Hello, usage page")
        page.press("#composer-input", "Enter")
        reply = page.locator("article.msg-assistant").first
        expect(reply).to_have_attribute("data-status", "complete", timeout=20_000)
        page.screenshot(path=str(ARTIFACTS / f"chat-model-info-{width}.png"))

        restartable_server.manage("shell", "-c", BUDGET.format(limit="5"))
        if width > 720:
            page.click("nav.sidebar-links >> text=My usage")
        else:  # the sidebar is another helper's drawer at this width
            page.goto(f"{server.base_url}/usage/")
        expect(page.locator("h1")).to_have_text("My usage")
        expect(page.locator("#usage-total-tokens")).not_to_have_text("0")
        expect(page.locator('svg[data-chart="my-spend"]')).to_be_visible()
        expect(page.locator('svg[data-chart="my-tokens"]')).to_be_visible()
        expect(page.locator("#models-table")).to_contain_text("Demo model (offline)")
        expect(page.locator("#days-table tbody tr")).to_have_count(1)
        expect(page.locator("#sources-table")).to_contain_text("Chat")
        budgets = page.locator("#budgets-table")
        expect(budgets).to_contain_text("My allowance")
        expect(budgets).to_contain_text("5.00")
        expect(budgets.locator("time")).to_have_count(1)
        # Nothing wider than the screen but the scrollable tables and charts.
        assert page.evaluate("document.documentElement.scrollWidth") <= width + 1
        page.screenshot(path=str(ARTIFACTS / f"my-usage-{width}.png"), full_page=True)
        assert_no_serious_violations(page)

        # A budget too small for the call's worst case: the refusal explains it.
        restartable_server.manage(
            "shell", "-c", "from costs.models import Budget; Budget.objects.all().delete()"
        )
        restartable_server.manage("shell", "-c", BUDGET.format(limit="0.005"))
        page.goto(f"{server.base_url}/")
        expect(page.locator("#connection-status")).to_have_text("Connected")
        page.fill("#composer-input", "Another question")
        page.press("#composer-input", "Enter")
        banner = page.locator("#error-banner")
        expect(banner).to_be_visible(timeout=10_000)
        expect(banner).to_contain_text("worst case is reserved")
        expect(banner).to_contain_text("is left")
        expect(banner).to_contain_text("What would fit")
        page.screenshot(path=str(ARTIFACTS / f"budget-refusal-{width}.png"))
        assert violations.of_this_page() == [] and violations.console == []
    finally:
        context.close()
