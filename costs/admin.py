"""The cost console: prices, budgets, the ledger (read-only) and the spend report.

* Prices and budgets are managed by administrators (their `costs.*` permissions); compliance
  officers read them. Every addition, change and deletion is audited by the console site.
* The ledger and budget windows are records: nobody changes them here, superusers included.
* The spend report (`report/`, `report/csv/` under the ledger) is for whoever may read the
  ledger (`costs.view_costentry`); its queries live in costs/reports.py.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django import forms
from django.conf import settings
from django.contrib import admin
from django.contrib.auth.models import Group
from django.core.exceptions import PermissionDenied
from django.core.handlers.asgi import ASGIRequest
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.template.response import TemplateResponse
from django.urls import path
from django.utils.html import format_html

from accounts.roles import ROLES
from audit.admin import CappedCountPaginator
from audit.console import ReadOnlyModelAdmin
from costs import reports, services
from costs.models import Budget, BudgetWindow, CostEntry, ModelPrice
from providers.models import PROVIDER_CHOICES, AIModel


def _money(amount: Decimal) -> str:
    """Cents at least, every significant micro-unit when there are any: exact, yet short."""
    cents = amount.quantize(Decimal("0.01"))
    shown = cents if cents == amount else amount.normalize()
    return f"{shown:f} {settings.COSTS_CURRENCY}"


# --- Prices -----------------------------------------------------------------------------------


@admin.register(ModelPrice)
class ModelPriceAdmin(admin.ModelAdmin):
    """A model's prices over time. The model's clean() checks the currency."""

    list_display = (
        "model", "effective_from", "input_per_million", "cached_input_per_million",
        "output_per_million", "currency",
    )  # fmt: skip
    list_filter = ("model",)
    list_select_related = ("model",)
    ordering = ("model__key", "-effective_from")
    date_hierarchy = "effective_from"
    fields = (
        "model", "effective_from", "input_per_million", "cached_input_per_million",
        "output_per_million", "currency",
    )  # fmt: skip

    def get_changeform_initial_data(self, request: HttpRequest) -> dict[str, Any]:
        # Prices must be in the ledger's currency.
        return {"currency": settings.COSTS_CURRENCY, **super().get_changeform_initial_data(request)}

    def get_form(
        self, request: HttpRequest, obj: Any = None, change: bool = False, **kwargs: Any
    ) -> Any:
        form = super().get_form(request, obj, change=change, **kwargs)
        if "currency" in form.base_fields:
            # The default is callable (the ledger's currency); no hidden "initial" copy of it,
            # which would mark the field changed on every save.
            form.base_fields["currency"].show_hidden_initial = False
        return form


# --- The ledger -------------------------------------------------------------------------------


class ExactValueFilter(admin.SimpleListFilter):
    """Filters a text column by one exact value (cut to the column's length)."""

    max_length = 100

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        value = self.value()
        if not value:
            return queryset
        return queryset.filter(**{str(self.parameter_name): value[: self.max_length]})


class ModelFilter(ExactValueFilter):
    """Models of the catalogue (no DISTINCT scan of the ledger), plus a removed one if chosen."""

    title = "model"
    parameter_name = "model"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        choices = list(AIModel.objects.order_by("key").values_list("key", "key"))
        value = self.value()
        if value and value not in {key for key, _ in choices}:
            choices.append((value[:100], value[:100]))
        return choices


class ProviderFilter(ExactValueFilter):
    title = "provider"
    parameter_name = "provider"
    max_length = 32

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [(key, key) for key, _ in PROVIDER_CHOICES]


class OutcomeFilter(ExactValueFilter):
    title = "outcome"
    parameter_name = "outcome"
    max_length = 16

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("complete", "Complete"), ("failed", "Failed"), ("cancelled", "Cancelled")]


class DepartmentFilter(admin.SimpleListFilter):
    """Departments are the groups that are not roles."""

    title = "department"
    parameter_name = "department"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        groups = Group.objects.exclude(name__in=ROLES).order_by("name")
        return [
            ("none", "No department"),
            *((str(pk), name) for pk, name in groups.values_list("pk", "name")),
        ]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        value = self.value()
        if value == "none":
            return queryset.filter(department__isnull=True)
        if value and value.isascii() and value.isdigit():
            return queryset.filter(department_id=int(value))
        return queryset


@admin.register(CostEntry)
class CostEntryAdmin(ReadOnlyModelAdmin):
    """One row per provider call. Conversations appear by id only: titles are transcripts."""

    list_display = (
        "created_at", "user", "department", "model", "provider", "input_tokens",
        "cached_input_tokens", "output_tokens", "cost", "currency", "estimated", "priced",
        "outcome",
    )  # fmt: skip
    list_select_related = ("user", "department")
    list_filter = (ModelFilter, ProviderFilter, "estimated", OutcomeFilter, DepartmentFilter)
    date_hierarchy = "created_at"
    ordering = ("-created_at", "-id")
    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER
    paginator = CappedCountPaginator
    list_per_page = 100
    actions = None
    change_list_template = "admin/costs/costentry/change_list.html"
    fields = (
        "created_at", "user", "department", "conversation_id_display", "message_id_display",
        "call_index", "model", "provider", "input_tokens", "cached_input_tokens",
        "output_tokens", "cost", "currency", "estimated", "priced", "outcome", "request_id",
        "idempotency_key",
    )  # fmt: skip
    readonly_fields = fields

    @property
    def count_limit(self) -> int:
        return int(settings.AUDIT_LIST_COUNT_LIMIT)

    @admin.display(description="conversation")
    def conversation_id_display(self, entry: CostEntry) -> str:
        return str(entry.conversation.public_id)

    @admin.display(description="message")
    def message_id_display(self, entry: CostEntry) -> str:
        return str(entry.message.public_id)

    # --- The spend report ------------------------------------------------------------------

    def get_urls(self) -> list[Any]:
        wrap = self.admin_site.admin_view
        return [
            path("report/", wrap(self.report_view), name="costs_costentry_report"),
            path("report/csv/", wrap(self.report_csv_view), name="costs_costentry_report_csv"),
            *super().get_urls(),
        ]

    def has_report_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("costs.view_costentry")

    def changelist_view(self, request: HttpRequest, extra_context: Any = None) -> HttpResponse:
        context = {"can_report": self.has_report_permission(request), **(extra_context or {})}
        return super().changelist_view(request, context)

    def _report_page(
        self, request: HttpRequest, form: reports.SpendFilterForm, **context: Any
    ) -> TemplateResponse:
        return TemplateResponse(
            request,
            "admin/costs/costentry/report.html",
            {
                **self.admin_site.each_context(request),
                "title": "Spend report",
                "opts": self.model._meta,
                "form": form,
                "currency": settings.COSTS_CURRENCY,
                "costs_time_zone": settings.COSTS_TIME_ZONE,
                "page_rows": reports.PAGE_ROWS,
                **context,
            },
            status=400 if form.errors else 200,
        )

    def report_view(self, request: HttpRequest) -> HttpResponse:
        """Totals per day, person, department and model for the filtered period."""
        if not self.has_report_permission(request):
            raise PermissionDenied
        form = reports.spend_filter_form(data=request.GET)
        if not form.is_valid():
            return self._report_page(request, form)
        filters = form.filters()
        report = reports.spend_report(filters=filters)
        chart = reports.cost_chart(per_day=report.per_day, start=filters.start, end=filters.end)
        return self._report_page(request, form, report=report, chart=chart)

    def report_csv_view(self, request: HttpRequest) -> HttpResponse | StreamingHttpResponse:
        """The same report as CSV, streamed; bad filters show the report page's errors."""
        if not self.has_report_permission(request):
            raise PermissionDenied
        form = reports.spend_filter_form(data=request.GET)
        if not form.is_valid():
            return self._report_page(request, form)
        filters = form.filters()
        body = (
            reports.aspend_csv_chunks(filters=filters)
            if isinstance(request, ASGIRequest)
            else reports.spend_csv_chunks(filters=filters)
        )
        response = StreamingHttpResponse(body, content_type="text/csv; charset=utf-8")
        name = f"spend-{filters.start.isoformat()}-{filters.end.isoformat()}.csv"
        response["Content-Disposition"] = f'attachment; filename="{name}"'
        response["Cache-Control"] = "no-store"
        return response


# --- Budgets ----------------------------------------------------------------------------------


class BudgetForm(forms.ModelForm):
    """Says which target a scope needs, on the field, before the database constraint would."""

    class Meta:
        model = Budget
        fields = (
            "name", "enabled", "scope", "group", "user", "api_key", "period", "limit_amount",
            "limit_tokens", "warn_percent", "action",
        )  # fmt: skip

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        group = self.fields.get("group")
        if isinstance(group, forms.ModelChoiceField):
            group.label = "Department"
            group.help_text = "For a department budget only: a group that is not a role."
            group.queryset = Group.objects.exclude(name__in=ROLES).order_by("name")
        if "user" in self.fields:
            self.fields["user"].label = "Person"
            self.fields["user"].help_text = "For a personal budget only."
        if "api_key" in self.fields:
            self.fields["api_key"].help_text = (
                "For an API key's budget only: calls made with that key, on top of its "
                "owner's budgets."
            )

    def clean_limit_amount(self) -> Any:
        amount = self.cleaned_data.get("limit_amount")
        if amount is not None and amount < 0:
            raise forms.ValidationError("A limit cannot be negative.")
        return amount

    def clean_warn_percent(self) -> Any:
        percent = self.cleaned_data.get("warn_percent")
        if percent is not None and not 1 <= percent <= 100:
            raise forms.ValidationError("Warn at a percentage between 1 and 100.")
        return percent

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        scope = cleaned.get("scope")
        group, user = cleaned.get("group"), cleaned.get("user")
        api_key = cleaned.get("api_key")
        if api_key is not None and scope != Budget.Scope.API_KEY:
            self.add_error("api_key", "Only a budget for an API key names a key: leave it empty.")
        if scope == Budget.Scope.API_KEY:
            if api_key is None and "api_key" not in self.errors:
                self.add_error("api_key", "A budget for an API key needs a key.")
            if group is not None:
                self.add_error("group", "A budget for an API key names no department.")
            if user is not None:
                self.add_error("user", "A budget for an API key names no person: the key does.")
        if scope == Budget.Scope.ORGANISATION:
            if group is not None:
                self.add_error(
                    "group",
                    "An organisation budget applies to everyone: leave the department empty.",
                )
            if user is not None:
                self.add_error(
                    "user", "An organisation budget applies to everyone: leave the person empty."
                )
        elif scope == Budget.Scope.DEPARTMENT:
            if group is None and "group" not in self.errors:
                self.add_error("group", "A department budget needs a department.")
            if user is not None:
                self.add_error("user", "A department budget names no person: leave it empty.")
        elif scope == Budget.Scope.USER:
            if user is None and "user" not in self.errors:
                self.add_error("user", "A personal budget needs a person.")
            if group is not None:
                self.add_error("group", "A personal budget names no department: leave it empty.")
        return cleaned


@admin.register(Budget)
class BudgetAdmin(admin.ModelAdmin):
    """Budgets with their current period's use (one query for the page's windows)."""

    form = BudgetForm
    list_display = (
        "name", "scope", "target", "period", "limit_column", "action_column", "enabled",
        "used_column", "remaining_column",
    )  # fmt: skip
    list_filter = ("scope", "period", "action", "enabled")
    list_select_related = ("group", "user", "api_key")
    search_fields = ("name",)
    autocomplete_fields = ("user",)
    raw_id_fields = ("api_key",)
    change_list_template = "admin/costs/budget/change_list.html"
    fieldsets = (
        (None, {"fields": ("name", "enabled")}),
        (
            "Who it applies to",
            {
                "fields": ("scope", "group", "user", "api_key"),
                "description": "An organisation budget applies to everyone; a department "
                "budget to the members of a group; a personal budget to one person; an API "
                "key's budget to the calls made with that key.",
            },
        ),
        (
            "Limit",
            {"fields": ("period", "limit_amount", "limit_tokens", "warn_percent", "action")},
        ),
    )

    def get_changelist_instance(self, request: HttpRequest) -> Any:
        changelist = super().get_changelist_instance(request)
        budgets = list(changelist.result_list)
        usage = services.budget_usage(budgets=budgets)
        for budget in budgets:
            budget.current_usage = usage.get(budget.pk)
        return changelist

    def changelist_view(self, request: HttpRequest, extra_context: Any = None) -> HttpResponse:
        context = {
            "can_report": request.user.has_perm("costs.view_costentry"),
            **(extra_context or {}),
        }
        return super().changelist_view(request, context)

    @admin.display(description="applies to")
    def target(self, budget: Budget) -> str:
        if budget.scope == Budget.Scope.DEPARTMENT and budget.group is not None:
            return budget.group.name
        if budget.scope == Budget.Scope.USER and budget.user is not None:
            return str(budget.user.email or budget.user.get_username())
        if budget.scope == Budget.Scope.API_KEY and budget.api_key is not None:
            return f"API key {budget.api_key.prefix}"
        return "Everyone"

    @admin.display(description="limit", ordering="limit_amount")
    def limit_column(self, budget: Budget) -> str:
        return _money(budget.limit_amount)

    @admin.display(description="action", ordering="action")
    def action_column(self, budget: Budget) -> str:
        return "Block" if budget.action == Budget.Action.BLOCK else "Alert only"

    @admin.display(description="used this period")
    def used_column(self, budget: Budget) -> str:
        usage: services.BudgetUsage | None = getattr(budget, "current_usage", None)
        if usage is None:
            return "—"
        if usage.reserved:
            return format_html(
                '{} <span class="budget-held">({} held)</span>',
                _money(usage.used),
                _money(usage.reserved),
            )
        return _money(usage.used)

    @admin.display(description="remaining")
    def remaining_column(self, budget: Budget) -> str:
        usage: services.BudgetUsage | None = getattr(budget, "current_usage", None)
        if usage is None:
            return "—"
        return _money(max(Decimal(0), budget.limit_amount - usage.used))

    def get_deleted_objects(self, objs: Any, request: HttpRequest) -> Any:
        deleted, counts, perms_needed, protected = super().get_deleted_objects(objs, request)
        # A budget's windows are its running totals and go with it (the ledger keeps the
        # spend); nobody may delete a window on its own, which would otherwise block this.
        perms_needed.discard(BudgetWindow._meta.verbose_name)
        return deleted, counts, perms_needed, protected


@admin.register(BudgetWindow)
class BudgetWindowAdmin(ReadOnlyModelAdmin):
    """Each budget's running totals per period, as the reservation and settlement wrote them."""

    list_display = (
        "budget", "period_start", "spent", "reserved", "spent_tokens", "reserved_tokens",
        "warned",
    )  # fmt: skip
    list_select_related = ("budget",)
    list_filter = ("budget__scope", "budget__period", "warned")
    date_hierarchy = "period_start"
    ordering = ("-period_start", "budget__name")
    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER
    actions = None
