"""My usage: a person's own spend and tokens per day and per model, their API keys' spend
labelled, their budgets; never anyone else's. And the model picker's prices."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from django.test import Client
from django.utils import timezone

from accounts.api_keys import api_key_create
from conversations.models import Conversation, Message
from costs.models import Budget, CostEntry, ModelPrice
from costs.selectors import model_choices, personal_usage, price_text, prices_now
from providers.models import AIModel
from providers.registry import models_for_user

pytestmark = pytest.mark.django_db


def charge(user, *, cost: str, days_ago: int = 0, api_key=None, model: str = "demo") -> None:
    conversation = Conversation.objects.create(owner=user, title="t", model=model)
    reply = Message.objects.create(
        conversation=conversation, role="assistant", status="complete", model=model,
        api_key=api_key,
    )  # fmt: skip
    CostEntry.objects.create(
        idempotency_key=f"{reply.public_id}:0",
        created_at=timezone.now() - dt.timedelta(days=days_ago),
        user=user, conversation=conversation, message=reply, call_index=0, model=model,
        provider="demo", input_tokens=100, output_tokens=50, cost=Decimal(cost),
        currency="USD", outcome="complete",
    )  # fmt: skip


def test_only_the_persons_own_spend_per_day_model_and_key(owner, colleague) -> None:
    key, _ = api_key_create(owner=owner, name="reporting", scopes=["chat"], actor=None)
    charge(owner, cost="0.10")
    charge(owner, cost="0.05", api_key=key)
    charge(owner, cost="0.20", days_ago=3)
    charge(owner, cost="9.00", days_ago=45)  # outside the 30 days
    charge(colleague, cost="5.00")  # someone else's
    usage = personal_usage(user=owner)
    assert len(usage.days) == 30 and usage.days[-1].day == usage.until
    assert usage.total.cost == Decimal("0.35") and usage.total.calls == 3
    today = usage.days[-1]
    assert today.chat.cost == Decimal("0.10") and today.api.cost == Decimal("0.05")
    assert usage.days[-4].total.cost == Decimal("0.20")
    assert [line.model for line in usage.models] == ["demo"]
    assert usage.models[0].name == "Demo model (offline)"
    assert usage.models[0].api_cost == Decimal("0.05")
    labels = {line.label: line.usage.cost for line in usage.sources}
    assert labels["Chat"] == Decimal("0.30")
    assert labels[f"API key reporting ({key.prefix}…)"] == Decimal("0.05")


def test_budgets_show_what_is_left_and_when_they_reset_including_a_keys_own(owner) -> None:
    key, _ = api_key_create(owner=owner, name="reporting", scopes=["chat"], actor=None)
    Budget.objects.create(
        name="Mine", scope="user", user=owner, period="monthly", limit_amount=Decimal("10")
    )
    Budget.objects.create(
        name="Key cap", scope="api_key", api_key=key, period="daily", limit_amount=Decimal("1")
    )
    lines = personal_usage(user=owner).budgets
    assert [(line.status.name, line.remaining_text) for line in lines] == [
        ("Mine", "10.00"),
        ("Key cap", "1.00"),
    ]
    assert "reporting" in lines[1].applies_to
    assert lines[0].status.resets_at > timezone.now()


def test_the_page_renders_charts_tables_and_budgets_in_few_queries(
    owner, colleague, django_assert_max_num_queries
) -> None:
    charge(owner, cost="0.25")
    charge(colleague, cost="7.77")
    Budget.objects.create(
        name="Mine", scope="user", user=owner, period="daily", limit_amount=Decimal("1")
    )
    client = Client()
    client.force_login(owner)
    with django_assert_max_num_queries(14):
        page = client.get("/usage/")
    html = page.content.decode()
    assert page.status_code == 200
    assert 'id="chart-my-spend"' in html and 'role="img"' in html
    assert 'id="models-table"' in html and 'id="days-table"' in html
    assert "0.25" in html and "7.77" not in html
    assert "Mine" in html and "<meter" in html


def test_prices_in_the_picker(owner) -> None:
    demo = AIModel.objects.get(key="demo")
    ModelPrice.objects.create(
        model=demo, input_per_million=Decimal("3"), output_per_million=Decimal("15"),
        effective_from=timezone.now() - dt.timedelta(days=2),
    )  # fmt: skip
    ModelPrice.objects.create(
        model=demo, input_per_million=Decimal("99"), output_per_million=Decimal("99"),
        effective_from=timezone.now() + dt.timedelta(days=2),
    )  # fmt: skip
    assert prices_now(["demo"])["demo"].input_per_million == Decimal("3")
    [(spec, text)] = model_choices(models_for_user(owner))
    assert spec.description.startswith("Offline stand-in")
    assert text == "3.00 USD per 1M input tokens · 15.00 USD per 1M output tokens"
    assert "No price" in price_text(None)
    client = Client()
    client.force_login(owner)
    html = client.get("/").content.decode()
    assert 'aria-describedby="model-info"' in html
    assert 'id="model-info"' in html and "15.00 USD per 1M output tokens" in html
