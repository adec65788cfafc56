"""Costs through the chat socket: refusals, the cost of a reply, warnings, what is left."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from channels.db import database_sync_to_async
from django.test import Client
from django.utils import timezone

from conversations.models import Message
from costs.models import Budget, BudgetWindow, CostEntry, ModelPrice
from costs.services import period_bounds
from providers.models import AIModel
from tests.support import connected, is_final, receive_until

pytestmark = pytest.mark.django_db(transaction=True)


def price_demo() -> None:
    ModelPrice.objects.create(
        model=AIModel.objects.get(key="demo"),
        input_per_million=Decimal("3"),
        output_per_million=Decimal("15"),
        effective_from=timezone.now() - dt.timedelta(days=1),
    )


async def test_a_reply_carries_its_cost_and_the_ledger_matches(
    owner, session_cookie, fast_demo
) -> None:
    await database_sync_to_async(price_demo)()
    comm = await connected(await database_sync_to_async(session_cookie)(owner))
    await comm.send_json_to({"type": "send", "text": "Plan a launch", "model": "demo"})
    frames = await receive_until(comm, is_final)
    await comm.disconnect()
    done = frames[-1]
    reply = await database_sync_to_async(Message.objects.get)(role="assistant")
    entries = await database_sync_to_async(list)(CostEntry.objects.filter(message=reply))
    assert len(entries) == 1
    entry = entries[0]
    expected = (Decimal(reply.input_tokens) * 3 + Decimal(reply.output_tokens) * 15) / Decimal(
        1_000_000
    )
    assert entry.cost == expected.quantize(Decimal("0.000001")) == reply.cost
    assert done["usage"]["cost"] == str(reply.cost) and done["usage"]["currency"] == "USD"
    assert entry.user_id == owner.pk and entry.request_id == reply.request_id


async def test_a_refused_request_gets_a_clear_error_and_reaches_no_provider(
    owner, session_cookie
) -> None:
    await database_sync_to_async(price_demo)()
    await database_sync_to_async(Budget.objects.create)(
        name="Pilot", scope="organisation", period="monthly", limit_amount=Decimal("0")
    )
    comm = await connected(await database_sync_to_async(session_cookie)(owner))
    await comm.send_json_to({"type": "send", "text": "Plan a launch", "model": "demo"})
    frame = await comm.receive_json_from(timeout=10)
    await comm.disconnect()
    assert frame["type"] == "error" and frame["code"] == "budget_exceeded"
    assert "Pilot" in frame["reason"] and "resets on" in frame["reason"]
    assert await database_sync_to_async(Message.objects.count)() == 0
    assert await database_sync_to_async(CostEntry.objects.count)() == 0


async def test_crossing_the_warning_threshold_shows_a_notice(
    owner, session_cookie, fast_demo
) -> None:
    await database_sync_to_async(price_demo)()
    budget = await database_sync_to_async(Budget.objects.create)(
        name="Team", scope="organisation", period="monthly", limit_amount=Decimal("1000"),
        warn_percent=80,
    )  # fmt: skip
    start, _ = period_bounds("monthly", timezone.now())
    await database_sync_to_async(BudgetWindow.objects.create)(
        budget=budget, period_start=start, spent=Decimal("799.999999")
    )
    comm = await connected(await database_sync_to_async(session_cookie)(owner))
    await comm.send_json_to({"type": "send", "text": "Plan a launch", "model": "demo"})
    frames = await receive_until(comm, is_final)
    notices = [f for f in frames if f["type"] == "notice"]
    if not notices:  # the notice may follow `done`
        notices = [await comm.receive_json_from(timeout=5)]
    await comm.disconnect()
    assert "80% of the Team budget" in notices[0]["text"]
    done = next(f for f in frames if f["type"] == "done")
    assert done["budgets"][0]["name"] == "Team"
    assert Decimal(done["budgets"][0]["remaining"]) < Decimal("200.01")


def test_the_chat_page_shows_only_the_persons_own_budgets(owner, colleague) -> None:
    Budget.objects.create(
        name="Alice's", scope="user", user=owner, period="daily", limit_amount=Decimal("5")
    )
    Budget.objects.create(
        name="Bob's", scope="user", user=colleague, period="daily", limit_amount=Decimal("7")
    )
    client = Client()
    client.force_login(owner)
    html = client.get("/").content.decode()
    assert "Alice's" in html or "Alice&#x27;s" in html
    assert "5.00 of 5.00 USD left" in html
    assert "Bob" not in html and "7.00" not in html
