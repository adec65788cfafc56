"""The usage dashboard in a real browser: its charts are drawn, readable, and CSP-clean.

A reply is chatted through the UI (so the figures include a real one); a day of history with
failures is added through `manage.py shell`. Screenshots at desktop and phone widths are kept
under test-artifacts/ for a person to look at.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.e2e.conftest import ARTIFACTS, RestartableServer
from tests.e2e.test_browser import browser, log_in  # noqa: F401 (fixtures)
from tests.e2e.test_csp_browser import Violations

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

# Forty replies over the last day on two models, one in eight failed, each with a ledger row.
SEED = """
import datetime as dt
from decimal import Decimal
from django.utils import timezone
from accounts.models import User
from conversations.models import Conversation, Message
from costs.models import CostEntry

admin = User.objects.get(username="e2e-admin")
conversation = Conversation.objects.create(owner=admin, title="History", model="demo")
now = timezone.now()
for n in range(39, -1, -1):  # oldest first, as time goes
    failed = n % 8 == 3
    reply = Message.objects.create(
        conversation=conversation, role="assistant", model=("demo", "gpt-x")[n % 2],
        status="failed" if failed else "complete",
        time_to_first_token_ms=200 + 37 * n, duration_ms=None if failed else 1500 + 311 * n,
        error_code="rate_limited" if failed else "", request_id=f"req-history-{n}",
    )
    when = now - dt.timedelta(minutes=35 * n + 5)
    Message.objects.filter(pk=reply.pk).update(created_at=when)
    if not failed:
        CostEntry.objects.create(
            idempotency_key=f"history:{n}", created_at=when, user=admin,
            conversation=conversation, message=reply, call_index=0, model=reply.model,
            provider="demo", input_tokens=800 + 10 * n, output_tokens=300 + 5 * n,
            cost=Decimal("0.004") * (n + 1), currency="USD", outcome="complete",
        )
"""


def test_dashboard_draws_its_charts(restartable_server: RestartableServer, browser: Any) -> None:  # noqa: F811
    from playwright.sync_api import expect

    server = restartable_server.server
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    try:
        log_in(page, server)
        expect(page.locator("#connection-status")).to_have_text("Connected")
        page.fill("#composer-input", "Hello, dashboard")
        page.press("#composer-input", "Enter")
        reply = page.locator("article.msg-assistant").first
        expect(reply).to_have_attribute("data-status", "complete", timeout=20_000)
        restartable_server.manage("shell", "-c", SEED)

        violations = Violations(page)
        page.goto(f"{server.base_url}/admin/")
        page.click("text=Usage dashboard")
        expect(page).to_have_url(re.compile(r"/admin/usage/$"))
        expect(page.locator("h1")).to_have_text("Usage dashboard")
        # 40 seeded replies and the one chatted just now.
        expect(page.locator("#usage-requests")).to_have_text("41")
        charts = page.locator("svg.usage-chart")
        expect(charts).to_have_count(5)
        for key in ("requests", "ttft", "duration", "tokens", "spend"):
            chart = page.locator(f'svg[data-chart="{key}"]')
            expect(chart).to_be_visible()
            box = chart.bounding_box()
            assert box is not None and box["width"] > 400 and box["height"] > 140, (key, box)
            marks = chart.locator("rect.usage-bar, polyline.usage-line, circle.usage-dot")
            assert marks.count() > 0, key
        expect(
            page.locator('svg[data-chart="requests"] rect[fill="#ba2121"]').first
        ).to_be_attached()
        expect(page.locator("#usage-models tbody tr")).to_have_count(2)
        expect(page.locator("#usage-failed")).to_contain_text("rate_limited")
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "usage-dashboard-1280.png"), full_page=True)

        page.click("text=Last hour")
        expect(page).to_have_url(re.compile(r"period=hour"))
        expect(page.locator('svg[data-chart="requests"] rect.usage-bar').first).to_be_attached()

        # A phone: the charts stay readable (they scroll sideways rather than shrink).
        page.set_viewport_size({"width": 390, "height": 844})
        page.goto(f"{server.base_url}/admin/usage/?period=week")
        chart = page.locator('svg[data-chart="requests"]')
        expect(chart).to_be_visible()
        box = chart.bounding_box()
        assert box is not None and box["width"] >= 380, box
        page.screenshot(path=str(ARTIFACTS / "usage-dashboard-390.png"), full_page=True)
        assert violations.of_this_page() == []
        assert violations.console == []
    finally:
        context.close()
