"""Prices, reservation before a call and settlement after it, on the embedded database.

The same guarantees under 50 concurrent callers on PostgreSQL are in
tests/production/test_costs_postgres.py.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import pytest
from django.contrib.auth.models import Group
from django.utils import timezone

from audit.models import AuditEvent
from conversations.errors import ChatError
from conversations.models import Conversation, Message
from conversations.services import message_send
from costs.models import MICRO, Budget, BudgetWindow, CostEntry, ModelPrice, Reservation
from costs.services import (
    BudgetExceeded,
    CallUsage,
    Estimate,
    budget_reserve,
    call_cost,
    estimate_max,
    ledger_settle,
    period_bounds,
    price_at,
    reservations_release_expired,
)
from providers.models import AIModel

pytestmark = pytest.mark.django_db

UTC = dt.UTC


@pytest.fixture
def priced_model(db: None) -> AIModel:
    model = AIModel.objects.get(key="demo")
    ModelPrice.objects.create(
        model=model,
        input_per_million=Decimal("3.00"),
        output_per_million=Decimal("15.00"),
        cached_input_per_million=Decimal("0.30"),
        effective_from=timezone.now() - dt.timedelta(days=30),
    )
    return model


def reply_for(user: Any, model: str = "demo") -> Message:
    conversation = Conversation.objects.create(owner=user, title="t", model=model)
    Message.objects.create(conversation=conversation, role="user", content="hi", status="complete")
    return Message.objects.create(
        conversation=conversation, role="assistant", status="streaming", model=model
    )


def window(budget: Budget) -> BudgetWindow:
    start, _ = period_bounds(budget.period, timezone.now())
    return BudgetWindow.objects.get(budget=budget, period_start=start)


# --- Arithmetic and price history -------------------------------------------------------------


def test_call_cost_is_exact_decimal_arithmetic(priced_model) -> None:
    price = price_at("demo", timezone.now())
    # 1,000 uncached input at 3/M, 500 cached at 0.30/M, 2,000 output at 15/M.
    cost = call_cost(price, input_tokens=1500, cached_input_tokens=500, output_tokens=2000)
    assert cost == Decimal("0.003000") + Decimal("0.000150") + Decimal("0.030000")
    assert isinstance(cost, Decimal) and cost.as_tuple().exponent == -6


def test_cost_rounds_half_up_to_a_micro_unit(priced_model) -> None:
    price = price_at("demo", timezone.now())
    # 1 output token at 15/M = 0.000015; 1 input token at 3/M = 0.000003; 1 cached: 0.0000003
    assert call_cost(price, input_tokens=1, cached_input_tokens=1, output_tokens=0) == Decimal(
        "0.000000"
    )
    assert call_cost(price, input_tokens=5, cached_input_tokens=5, output_tokens=0) == Decimal(
        "0.000002"  # 0.0000015 rounds half up
    )


def test_cached_tokens_cost_the_input_price_when_no_cached_price(priced_model) -> None:
    ModelPrice.objects.update(cached_input_per_million=None)
    price = price_at("demo", timezone.now())
    assert call_cost(price, input_tokens=1000, cached_input_tokens=1000, output_tokens=0) == (
        Decimal("0.003000")
    )


def test_no_price_costs_nothing_but_is_still_recorded() -> None:
    assert call_cost(None, input_tokens=10**6, cached_input_tokens=0, output_tokens=10**6) == 0


def test_history_is_priced_with_the_price_in_force_at_the_time(priced_model) -> None:
    change = timezone.now() - dt.timedelta(days=2)
    ModelPrice.objects.create(
        model=priced_model,
        input_per_million=Decimal("6"),
        output_per_million=Decimal("30"),
        effective_from=change,
    )
    before = price_at("demo", change - dt.timedelta(seconds=1))
    after = price_at("demo", change)
    assert before is not None and before.input_per_million == Decimal("3")
    assert after is not None and after.input_per_million == Decimal("6")
    assert price_at("demo", timezone.now() - dt.timedelta(days=365)) is None


# --- Periods ----------------------------------------------------------------------------------


def test_calendar_periods_in_the_configured_time_zone(settings) -> None:
    settings.COSTS_TIME_ZONE = "Europe/Berlin"
    # 23:30 UTC on Sunday 2026-03-01 is already Monday 00:30 in Berlin.
    when = dt.datetime(2026, 3, 1, 23, 30, tzinfo=UTC)
    day, day_reset = period_bounds("daily", when)
    assert day == dt.date(2026, 3, 2)
    assert day_reset.isoformat() == "2026-03-03T00:00:00+01:00"
    week, _ = period_bounds("weekly", when)
    assert week == dt.date(2026, 3, 2)  # Monday
    month, month_reset = period_bounds("monthly", dt.datetime(2026, 12, 31, 12, tzinfo=UTC))
    assert (month, month_reset.date()) == (dt.date(2026, 12, 1), dt.date(2027, 1, 1))


# --- Reserve and refuse -----------------------------------------------------------------------


def test_a_blocking_budget_refuses_before_any_provider_call(owner, priced_model) -> None:
    Budget.objects.create(
        name="Alice's allowance", scope="user", user=owner, period="daily",
        limit_amount=Decimal("0.000001"),
    )  # fmt: skip
    with pytest.raises(ChatError) as refused:
        message_send(actor=owner, text="Plan a launch", model_key="demo")
    assert refused.value.code == "budget_exceeded"
    assert "Alice's allowance" in refused.value.reason and "resets on" in refused.value.reason
    # Nothing stored, nothing dispatched, nothing charged; the refusal audited.
    assert Message.objects.count() == 0 and Conversation.objects.count() == 0
    assert CostEntry.objects.count() == 0
    event = AuditEvent.objects.get(action="budget.refused")
    assert event.actor == owner and event.outcome == "denied"
    assert event.details["budget_name"] == "Alice's allowance"


def test_an_alert_only_budget_lets_the_call_through_and_audits(owner, priced_model) -> None:
    budget = Budget.objects.create(
        name="Soft cap", scope="organisation", period="monthly",
        limit_amount=Decimal("0.000001"), action="alert",
    )  # fmt: skip
    result = message_send(actor=owner, text="Plan a launch", model_key="demo")
    assert result.reply.status == "pending"
    assert AuditEvent.objects.filter(action="budget.alert", target_id=str(budget.pk)).exists()
    assert window(budget).reserved > 0


def test_per_request_maximum_refuses_oversized_calls(owner, priced_model, settings) -> None:
    settings.COSTS_MAX_REQUEST_COST = Decimal("0.001")  # the demo's max output alone costs more
    with pytest.raises(ChatError) as refused:
        message_send(actor=owner, text="Plan a launch", model_key="demo")
    assert "allowed for a single request" in refused.value.reason
    assert AuditEvent.objects.get(action="budget.refused").details["limit"] == "per_request"


def test_every_applicable_budget_must_allow_the_call(owner, colleague, priced_model) -> None:
    sales = Group.objects.create(name="Sales")
    owner.groups.add(sales)
    generous = Budget.objects.create(
        name="Org", scope="organisation", period="monthly", limit_amount=Decimal("1000")
    )
    Budget.objects.create(
        name="Sales team", scope="department", group=sales, period="monthly",
        limit_amount=Decimal("0"),
    )  # fmt: skip
    with pytest.raises(ChatError) as refused:
        message_send(actor=owner, text="Hi", model_key="demo")
    assert "Sales team" in refused.value.reason
    assert not BudgetWindow.objects.filter(budget=generous, reserved__gt=0).exists()
    # The department budget is not the colleague's: they may still chat.
    message_send(actor=colleague, text="Hi", model_key="demo")
    assert window(generous).reserved > 0


def test_reservation_holds_the_maximum_cost(owner, priced_model) -> None:
    budget = Budget.objects.create(
        name="Org", scope="organisation", period="monthly", limit_amount=Decimal("100")
    )
    reply = reply_for(owner)
    budget_reserve(user=owner, reply=reply, model=priced_model, input_tokens=1000)
    expected = estimate_max(model=priced_model, input_tokens=1000, when=timezone.now())
    held = Reservation.objects.get(message=reply)
    assert (
        held.amount
        == expected.amount
        == call_cost(
            price_at("demo", timezone.now()),
            input_tokens=1000,
            cached_input_tokens=0,
            output_tokens=priced_model.max_output_tokens,
        )
    )
    assert window(budget).reserved == expected.amount


def test_a_token_limit_blocks_like_a_money_limit(owner, priced_model) -> None:
    Budget.objects.create(
        name="Tokens", scope="user", user=owner, period="daily",
        limit_amount=Decimal("1000"), limit_tokens=10,
    )  # fmt: skip
    with pytest.raises(ChatError):
        message_send(actor=owner, text="Hi", model_key="demo")


# The two below are the unit-suite guard of what tests/production/test_costs_postgres.py
# shows under concurrency: holds of replies in progress count, and a call that fits exactly
# in what is left is allowed. Each runs against a money limit and against a token limit.
LIMITS = ["money", "tokens"]


def org_budget(kind: str, *, calls: int, estimate: Estimate, short: bool = False) -> Budget:
    """An organisation budget with room for exactly `calls` calls of `estimate` (one
    micro-unit or one token less when `short`)."""
    if kind == "money":
        limit = estimate.amount * calls - (MICRO if short else 0)
        return Budget.objects.create(
            name="Org", scope="organisation", period="monthly", limit_amount=limit
        )
    return Budget.objects.create(
        name="Org", scope="organisation", period="monthly", limit_amount=Decimal("1000000"),
        limit_tokens=estimate.tokens * calls - (1 if short else 0),
    )  # fmt: skip


def reserve(user: Any, model: AIModel) -> Message:
    reply = reply_for(user)
    budget_reserve(user=user, reply=reply, model=model, input_tokens=1000)
    return reply


@pytest.mark.parametrize("kind", LIMITS)
def test_amounts_held_by_replies_in_progress_count_against_the_budget(
    owner, priced_model, kind
) -> None:
    estimate = estimate_max(model=priced_model, input_tokens=1000, when=timezone.now())
    budget = org_budget(kind, calls=2, estimate=estimate, short=True)  # room for one call
    first = reserve(owner, priced_model)  # in progress: nothing spent yet, all of it held

    with pytest.raises(BudgetExceeded) as refused:
        reserve(owner, priced_model)
    assert "held by replies in progress" in refused.value.reason
    assert refused.value.details["spent"] == "0.000000"
    assert refused.value.details["reserved"] == str(estimate.amount)
    held = window(budget)
    assert (held.reserved, held.reserved_tokens) == (estimate.amount, estimate.tokens)
    assert list(Reservation.objects.values_list("message", flat=True)) == [first.pk]


@pytest.mark.parametrize("kind", LIMITS)
def test_a_call_that_fits_exactly_in_what_is_left_is_allowed(owner, priced_model, kind) -> None:
    estimate = estimate_max(model=priced_model, input_tokens=1000, when=timezone.now())
    budget = org_budget(kind, calls=3, estimate=estimate)
    start, _ = period_bounds(budget.period, timezone.now())
    BudgetWindow.objects.create(  # one call's worth already spent
        budget=budget, period_start=start, spent=estimate.amount, spent_tokens=estimate.tokens
    )
    reserve(owner, priced_model)  # one held
    reserve(owner, priced_model)  # spent + held + this one: exactly the limit

    used = window(budget)
    if kind == "money":
        assert used.spent + used.reserved == budget.limit_amount
    else:
        assert used.spent_tokens + used.reserved_tokens == budget.limit_tokens
    with pytest.raises(BudgetExceeded):
        reserve(owner, priced_model)  # nothing left
    assert Reservation.objects.count() == 2


# --- Settle -----------------------------------------------------------------------------------


def test_settlement_replaces_the_reservation_with_the_actual_cost(owner, priced_model) -> None:
    budget = Budget.objects.create(
        name="Org", scope="organisation", period="monthly", limit_amount=Decimal("100")
    )
    reply = reply_for(owner)
    budget_reserve(user=owner, reply=reply, model=priced_model, input_tokens=1000)
    calls = [
        CallUsage(model="demo", provider="demo", input_tokens=1200, output_tokens=300),
        CallUsage(model="demo", provider="demo", input_tokens=1500, output_tokens=100,
                  cached_input_tokens=1000),  # a second round of a tool loop
    ]  # fmt: skip
    settlement = ledger_settle(reply=reply, calls=calls, outcome="complete")
    entries = list(CostEntry.objects.filter(message=reply).order_by("call_index"))
    assert [e.call_index for e in entries] == [0, 1]
    assert (
        sum(e.cost for e in entries)
        == settlement.cost
        == Decimal("0.0036")
        + Decimal("0.0045")
        + Decimal("0.0015")
        + Decimal("0.0003")
        + Decimal("0.0015")
    )
    w = window(budget)
    assert (w.reserved, w.spent, w.spent_tokens) == (0, settlement.cost, 1500 + 1600)
    assert Reservation.objects.get(message=reply).status == "settled"


def test_a_redelivered_settlement_charges_nothing_twice(owner, priced_model) -> None:
    budget = Budget.objects.create(
        name="Org", scope="organisation", period="monthly", limit_amount=Decimal("100")
    )
    reply = reply_for(owner)
    budget_reserve(user=owner, reply=reply, model=priced_model, input_tokens=10)
    calls = [CallUsage(model="demo", provider="demo", input_tokens=100, output_tokens=100)]
    first = ledger_settle(reply=reply, calls=calls, outcome="complete")
    ledger_settle(reply=reply, calls=calls, outcome="complete")
    assert CostEntry.objects.filter(message=reply).count() == 1
    assert window(budget).spent == first.cost and window(budget).reserved == 0


def test_stopped_and_failed_calls_are_charged_for_what_they_consumed(owner, priced_model) -> None:
    reply = reply_for(owner)
    calls = [
        CallUsage(model="demo", provider="demo", input_tokens=800, output_tokens=40,
                  estimated=True),  # stopped midway: estimated from what streamed
        CallUsage(model="demo", provider="demo", input_tokens=0, output_tokens=0),  # nothing
    ]  # fmt: skip
    settlement = ledger_settle(reply=reply, calls=calls, outcome="cancelled")
    entry = CostEntry.objects.get(message=reply)
    assert entry.estimated and entry.outcome == "cancelled"
    assert entry.cost == Decimal("0.002400") + Decimal("0.000600") == settlement.cost
    assert settlement.estimated


def test_crossing_the_warning_threshold_warns_once_per_period(owner, priced_model) -> None:
    budget = Budget.objects.create(
        name="Org", scope="organisation", period="monthly", limit_amount=Decimal("0.01"),
        warn_percent=50,
    )  # fmt: skip
    big = [CallUsage(model="demo", provider="demo", input_tokens=0, output_tokens=400)]  # 0.006
    first = ledger_settle(reply=reply_for(owner), calls=big, outcome="complete")
    second = ledger_settle(reply=reply_for(owner), calls=big, outcome="complete")
    assert first.warnings and "60%" in first.warnings[0]
    assert second.warnings == []
    assert AuditEvent.objects.filter(action="budget.warning", target_id=str(budget.pk)).count() == 1


def test_a_daily_budget_exhausted_yesterday_allows_today(owner, priced_model) -> None:
    budget = Budget.objects.create(
        name="Daily", scope="user", user=owner, period="daily", limit_amount=Decimal("1")
    )
    yesterday, _ = period_bounds("daily", timezone.now() - dt.timedelta(days=1))
    BudgetWindow.objects.create(budget=budget, period_start=yesterday, spent=Decimal("1"))
    message_send(actor=owner, text="Hi", model_key="demo")
    assert window(budget).reserved > 0
    assert BudgetWindow.objects.get(budget=budget, period_start=yesterday).spent == 1


def test_expired_reservations_are_released(owner, priced_model) -> None:
    budget = Budget.objects.create(
        name="Org", scope="organisation", period="monthly", limit_amount=Decimal("100")
    )
    reply = reply_for(owner)
    budget_reserve(user=owner, reply=reply, model=priced_model, input_tokens=10)
    assert reservations_release_expired() == 0  # not expired yet
    later = timezone.now() + dt.timedelta(days=1)
    assert reservations_release_expired(now=later) == 1
    assert window(budget).reserved == 0
    assert Reservation.objects.get(message=reply).status == "expired"
    assert reservations_release_expired(now=later) == 0


def test_a_reply_stopped_before_it_started_releases_its_hold(owner, priced_model) -> None:
    from conversations.services import reply_stop

    budget = Budget.objects.create(
        name="Org", scope="organisation", period="monthly", limit_amount=Decimal("100")
    )
    # In this test's transaction nothing is dispatched on commit: the reply stays pending.
    result = message_send(actor=owner, text="Hi", model_key="demo")
    assert window(budget).reserved > 0
    reply_stop(actor=owner, message_id=result.reply.public_id)
    assert window(budget).reserved == 0
    assert Reservation.objects.get(message=result.reply).status == "settled"


@pytest.mark.parametrize(
    ("amount", "shown"),
    [("12.5", "12.50"), ("0.004", "0.004"), ("0.000015", "0.000015"), ("0", "0.00"),
     ("1234.5678", "1234.57"), ("0.10", "0.10")],
)  # fmt: skip
def test_amounts_are_shown_in_cents_or_as_precisely_as_small_ones_need(
    amount: str, shown: str
) -> None:
    from costs.services import format_amount

    assert format_amount(Decimal(amount)) == shown
