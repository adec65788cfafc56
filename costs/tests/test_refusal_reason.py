"""A budget refusal explains itself: the worst case reserved up front, its amount, what is
left and what would fit (docs/costs.md, "Why a request is refused")."""

from __future__ import annotations

import datetime as dt
import re
from decimal import Decimal

import pytest
from django.utils import timezone

from conversations.errors import ChatError
from conversations.services import message_send
from costs.models import Budget, BudgetWindow, ModelPrice
from costs.services import period_bounds
from providers.models import AIModel

pytestmark = pytest.mark.django_db


@pytest.fixture
def priced_demo(db: None) -> AIModel:
    model = AIModel.objects.get(key="demo")
    model.max_output_tokens = 1000
    model.save(update_fields=["max_output_tokens"])
    ModelPrice.objects.create(
        model=model,
        input_per_million=Decimal("3.00"),
        output_per_million=Decimal("15.00"),
        effective_from=timezone.now() - dt.timedelta(days=1),
    )
    return model


def refuse(owner) -> str:
    with pytest.raises(ChatError) as refused:
        message_send(actor=owner, text="Plan a launch for the new product line", model_key="demo")
    assert refused.value.code == "budget_exceeded"  # the machine code is unchanged
    return refused.value.reason


def test_refusal_explains_the_reserved_worst_case_and_what_would_fit(owner, priced_demo) -> None:
    # 1,000 output tokens at 15/M = 0.015 worst case; 0.005 left fits ~330 output tokens.
    Budget.objects.create(
        name="Alice's allowance", scope="user", user=owner, period="daily",
        limit_amount=Decimal("0.005"),
    )  # fmt: skip
    reason = refuse(owner)
    assert "worst case is reserved" in reason
    assert "1,000 tokens" in reason  # the longest reply the model may write
    reserved = re.search(r"For this request that is ([0-9.]+) USD", reason)
    assert reserved and Decimal(reserved[1]) > Decimal("0.015")
    assert "0.005 USD is left" in reason
    fits = re.search(r"a reply capped at ([0-9,]+) output tokens", reason)
    assert fits, reason
    assert 300 < int(fits[1].replace(",", "")) < 334
    assert "a model with a lower price" in reason
    assert "It resets on" in reason


def test_refusal_when_nothing_is_left_says_so(owner, priced_demo) -> None:
    budget = Budget.objects.create(
        name="Spent", scope="user", user=owner, period="daily", limit_amount=Decimal("0.01")
    )
    start, _ = period_bounds(budget.period, timezone.now())
    BudgetWindow.objects.create(budget=budget, period_start=start, spent=Decimal("0.01"))
    reason = refuse(owner)
    assert "0.01 USD is used" in reason and "0 USD is left" in reason
    assert "Nothing is left in this budget" in reason


def test_refusal_when_even_the_input_does_not_fit(owner, priced_demo) -> None:
    Budget.objects.create(
        name="Tiny", scope="user", user=owner, period="daily", limit_amount=Decimal("0.000003")
    )
    reason = refuse(owner)
    assert "Even the conversation alone costs more than is left" in reason


def test_per_request_cap_explains_the_worst_case(owner, priced_demo, settings) -> None:
    settings.COSTS_MAX_REQUEST_COST = Decimal("0.001")
    reason = refuse(owner)
    assert "worst case is reserved" in reason and "allowed for a single request" in reason
