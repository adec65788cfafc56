"""Prices, the cost ledger and budgets (docs/costs.md).

Money is `Decimal` with six decimal places (micro-units of the currency), never float.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models

from audit.governed import GovernedManager

MICRO = Decimal("0.000001")


def ledger_currency() -> str:
    return str(settings.COSTS_CURRENCY)


def money(**options: Any) -> models.DecimalField:
    """An amount in the ledger's currency, to the micro-unit."""
    return models.DecimalField(max_digits=18, decimal_places=6, **options)


class ModelPrice(models.Model):
    """The price of a catalogue model from `effective_from` until the next price starts."""

    model = models.ForeignKey("providers.AIModel", on_delete=models.PROTECT, related_name="prices")
    input_per_million = money(
        help_text="Price of one million input tokens (not read from a cache)."
    )
    output_per_million = money(help_text="Price of one million output tokens.")
    cached_input_per_million = money(
        null=True,
        blank=True,
        help_text="Price of one million input tokens read from the provider's prompt cache; "
        "empty: the input price.",
    )
    currency = models.CharField(max_length=3, default=ledger_currency)
    effective_from = models.DateTimeField()

    # Queryset writes are audited unless a service that audits them says so (audit.governed).
    objects = GovernedManager()

    class Meta:
        ordering = ["model", "-effective_from"]
        constraints = [
            models.UniqueConstraint(
                fields=["model", "effective_from"], name="costs_price_model_from_unique"
            ),
            models.CheckConstraint(
                condition=models.Q(input_per_million__gte=0)
                & models.Q(output_per_million__gte=0)
                & (
                    models.Q(cached_input_per_million__isnull=True)
                    | models.Q(cached_input_per_million__gte=0)
                ),
                name="costs_price_not_negative",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.model} from {self.effective_from:%Y-%m-%d %H:%M}"

    def clean(self) -> None:
        if self.currency and self.currency != settings.COSTS_CURRENCY:
            currency = settings.COSTS_CURRENCY
            raise ValidationError(
                {"currency": f"Prices must be in the ledger's currency ({currency})."}
            )


class CostEntry(models.Model):
    """One provider call, priced. Written once per call by the reply's settlement."""

    idempotency_key = models.CharField(max_length=100, unique=True)
    created_at = models.DateTimeField(db_index=True)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="cost_entries"
    )
    department = models.ForeignKey(
        "auth.Group",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        help_text="The user's department (first non-role group) at the time of the call.",
    )
    conversation = models.ForeignKey(
        "conversations.Conversation", on_delete=models.PROTECT, related_name="cost_entries"
    )
    message = models.ForeignKey(
        "conversations.Message", on_delete=models.PROTECT, related_name="cost_entries"
    )
    call_index = models.PositiveSmallIntegerField(help_text="0 for the first provider call.")
    model = models.CharField(max_length=100, help_text="Key of the model that answered.")
    provider = models.CharField(max_length=32)
    input_tokens = models.PositiveIntegerField(help_text="All input tokens, cached included.")
    cached_input_tokens = models.PositiveIntegerField(default=0)
    output_tokens = models.PositiveIntegerField()
    cost = money()
    currency = models.CharField(max_length=3)
    estimated = models.BooleanField(
        default=False, help_text="The provider reported no usage: tokens were estimated."
    )
    priced = models.BooleanField(default=True, help_text="False when the model had no price.")
    outcome = models.CharField(max_length=16, help_text="complete, failed or cancelled.")
    request_id = models.CharField(max_length=64, blank=True)

    class Meta:
        verbose_name_plural = "cost entries"
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["user", "created_at"], name="cost_user_time_idx"),
            models.Index(fields=["department", "created_at"], name="cost_dept_time_idx"),
            models.Index(fields=["model", "created_at"], name="cost_model_time_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.model} {self.cost} {self.currency} ({self.created_at:%Y-%m-%d %H:%M})"


class Budget(models.Model):
    class Scope(models.TextChoices):
        ORGANISATION = "organisation", "Organisation"
        DEPARTMENT = "department", "Department (group)"
        USER = "user", "Person"
        API_KEY = "api_key", "API key"

    class Period(models.TextChoices):
        DAILY = "daily", "Daily"
        WEEKLY = "weekly", "Weekly (from Monday)"
        MONTHLY = "monthly", "Monthly"

    class Action(models.TextChoices):
        BLOCK = "block", "Block calls that would exceed it"
        ALERT = "alert", "Alert only"

    name = models.CharField(max_length=100)
    scope = models.CharField(max_length=16, choices=Scope.choices)
    # PROTECT: a department's budgets are deleted (and audited) on their own, not silently
    # with the group.
    group = models.ForeignKey(
        "auth.Group", on_delete=models.PROTECT, null=True, blank=True, related_name="budgets"
    )
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        related_name="budgets",
    )
    # A key's own budget: on top of its owner's budgets, for calls made with that key only.
    api_key = models.ForeignKey(
        "accounts.ApiKey",
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        related_name="budgets",
        verbose_name="API key",
    )
    period = models.CharField(max_length=16, choices=Period.choices)
    limit_amount = money(help_text="In the ledger's currency.")
    limit_tokens = models.PositiveBigIntegerField(
        null=True, blank=True, help_text="Optional: input + output tokens per period."
    )
    warn_percent = models.PositiveSmallIntegerField(
        default=80, help_text="Warn (and audit once per period) when spend crosses this."
    )
    action = models.CharField(max_length=8, choices=Action.choices, default=Action.BLOCK)
    enabled = models.BooleanField(default=True)

    # Queryset writes are audited unless a service that audits them says so (audit.governed).
    objects = GovernedManager()

    class Meta:
        ordering = ["scope", "name"]
        constraints = [
            models.CheckConstraint(
                condition=(
                    models.Q(
                        scope="organisation",
                        group__isnull=True,
                        user__isnull=True,
                        api_key__isnull=True,
                    )
                    | models.Q(
                        scope="department",
                        group__isnull=False,
                        user__isnull=True,
                        api_key__isnull=True,
                    )
                    | models.Q(
                        scope="user", group__isnull=True, user__isnull=False, api_key__isnull=True
                    )
                    | models.Q(
                        scope="api_key",
                        group__isnull=True,
                        user__isnull=True,
                        api_key__isnull=False,
                    )
                ),
                name="costs_budget_scope_target",
                violation_error_message="An organisation budget names no one; a department "
                "budget names a group; a personal budget names a person; an API key's budget "
                "names the key.",
            ),
            models.CheckConstraint(
                condition=models.Q(limit_amount__gte=0)
                & models.Q(warn_percent__gte=1)
                & models.Q(warn_percent__lte=100),
                name="costs_budget_limits_valid",
            ),
        ]

    def __str__(self) -> str:
        return self.name


class BudgetWindow(models.Model):
    """A budget's running totals for one period. Locked (SELECT … FOR UPDATE) to reserve."""

    budget = models.ForeignKey(Budget, on_delete=models.CASCADE, related_name="windows")
    period_start = models.DateField()
    spent = money(default=Decimal(0))
    spent_tokens = models.PositiveBigIntegerField(default=0)
    reserved = money(default=Decimal(0))
    reserved_tokens = models.PositiveBigIntegerField(default=0)
    warned = models.BooleanField(default=False)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["budget", "period_start"], name="costs_window_budget_period_unique"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.budget} · {self.period_start}"


class Reservation(models.Model):
    """Money and tokens held for one reply against one budget window until it settles."""

    class Status(models.TextChoices):
        HELD = "held", "Held"
        SETTLED = "settled", "Settled"
        EXPIRED = "expired", "Expired"

    window = models.ForeignKey(BudgetWindow, on_delete=models.CASCADE, related_name="reservations")
    message = models.ForeignKey(
        "conversations.Message", on_delete=models.CASCADE, related_name="reservations"
    )
    amount = money()
    tokens = models.PositiveBigIntegerField()
    status = models.CharField(max_length=8, choices=Status.choices, default=Status.HELD)
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["window", "message"], name="costs_reservation_once_per_window"
            ),
        ]
        indexes = [models.Index(fields=["status", "expires_at"], name="costs_resv_expiry_idx")]

    def __str__(self) -> str:
        return f"{self.amount} held for {self.window} ({self.status})"
