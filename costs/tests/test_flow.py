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
    # After a reload the reply still shows its tokens and cost, as `done` did.
    page = await database_sync_to_async(chat_page)(owner, reply)
    tokens = reply.input_tokens + reply.output_tokens
    assert f'<p class="msg-cost">{tokens} tokens · {reply.cost} USD</p>' in page


def chat_page(user, reply: Message) -> str:
    client = Client()
    client.force_login(user)
    return client.get(f"/c/{reply.conversation.public_id}/").content.decode()


async def test_a_stopped_reply_shows_the_ledgers_estimate_also_after_a_reload(
    owner, session_cookie, slow_demo
) -> None:
    # Stopped midway, the provider reported no usage: the ledger holds an estimate, and the
    # reply shows that estimate (flagged), not "0 tokens".
    await database_sync_to_async(price_demo)()
    comm = await connected(await database_sync_to_async(session_cookie)(owner))
    await comm.send_json_to({"type": "send", "text": "Tell me a lot", "model": "demo"})
    accepted = await comm.receive_json_from(timeout=5)
    assert (await comm.receive_json_from(timeout=5))["type"] == "delta"
    await comm.send_json_to({"type": "stop", "message": accepted["message"]})
    done = (await receive_until(comm, is_final))[-1]
    await comm.send_json_to({"type": "subscribe", "conversation": accepted["conversation"]})
    snapshot = (await receive_until(comm, lambda f: f["type"] == "snapshot"))[-1]
    await comm.disconnect()

    reply = await database_sync_to_async(Message.objects.select_related("conversation").get)(
        public_id=accepted["message"]
    )
    assert reply.status == "cancelled" and reply.input_tokens is None and reply.cost_estimated
    entries = await database_sync_to_async(list)(CostEntry.objects.filter(message=reply))
    estimated_in = sum(e.input_tokens for e in entries)
    estimated_out = sum(e.output_tokens for e in entries)
    assert estimated_in > 0 and estimated_out > 0 and all(e.estimated for e in entries)
    usage = {
        "input_tokens": estimated_in,
        "output_tokens": estimated_out,
        "cost": str(reply.cost),
        "currency": "USD",
        "estimated": True,
    }
    assert done["type"] == "done" and done["usage"] == usage
    assert [m.get("usage") for m in snapshot["messages"]] == [None, usage]
    page = await database_sync_to_async(chat_page)(owner, reply)
    line = f"{estimated_in + estimated_out} tokens · {reply.cost} USD (estimated)"
    assert f'<p class="msg-cost">{line}</p>' in page


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
