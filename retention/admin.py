"""Retention policies in the console (administrators manage them; compliance officers read
them), and the dry-run report: what a run would do now, per policy. Additions, changes and
deletions are audited by the console (audit/console.py)."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import path
from django.utils import timezone

from accounts.roles import ROLES
from retention.models import RetentionPolicy
from retention.selectors import retention_forecast

REPORT_PERMISSION = "retention.view_retentionpolicy"


class RetentionPolicyForm(forms.ModelForm):
    class Meta:
        model = RetentionPolicy
        fields = ("name", "enabled", "scope", "group", "days", "action")

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        scope, group = cleaned.get("scope"), cleaned.get("group")
        if scope == RetentionPolicy.Scope.DEPARTMENT:
            if group is None:
                self.add_error("group", "A department policy needs a department.")
            elif group.name in ROLES:
                self.add_error("group", "Choose a department, not a role.")
        elif scope == RetentionPolicy.Scope.ORGANISATION and group is not None:
            self.add_error("group", "An organisation policy names no department: leave it empty.")
        return cleaned


@admin.register(RetentionPolicy)
class RetentionPolicyAdmin(admin.ModelAdmin):
    form = RetentionPolicyForm
    list_display = ("name", "scope", "applies_to", "days", "action", "enabled", "updated_at")
    list_filter = ("scope", "action", "enabled")
    list_select_related = ("group",)
    search_fields = ("name",)
    change_list_template = "admin/retention/retentionpolicy/change_list.html"
    fieldsets = (
        (None, {"fields": ("name", "enabled")}),
        (
            "Who it applies to",
            {
                "fields": ("scope", "group"),
                "description": "An organisation policy covers every conversation; a department "
                "policy the conversations of the group's members. Every policy that covers a "
                "conversation applies: the shortest period wins, and erasing wins over "
                "removing. Legal holds always win.",
            },
        ),
        (
            "Rule",
            {
                "fields": ("days", "action"),
                "description": "Counted from the conversation's last activity (its last message "
                "or rename). Erasing deletes the title, the messages' text and tool calls; "
                "removing takes the conversation out of its owner's view and keeps the content "
                "for the compliance console. The cost ledger and the audit trail always stay.",
            },
        ),
    )

    @admin.display(description="applies to")
    def applies_to(self, policy: RetentionPolicy) -> str:
        return policy.group.name if policy.group is not None else "Everyone"

    def formfield_for_foreignkey(self, db_field: Any, request: HttpRequest, **kwargs: Any) -> Any:
        if db_field.name == "group":
            from django.contrib.auth.models import Group

            kwargs["queryset"] = Group.objects.exclude(name__in=ROLES).order_by("name")
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    def get_urls(self) -> list[Any]:
        wrap = self.admin_site.admin_view
        return [
            path("report/", wrap(self.report_view), name="retention_retentionpolicy_report"),
            *super().get_urls(),
        ]

    def has_report_permission(self, request: HttpRequest) -> bool:
        return bool(request.user.is_active and request.user.has_perm(REPORT_PERMISSION))

    def changelist_view(self, request: HttpRequest, extra_context: Any = None) -> HttpResponse:
        context = {"can_report": self.has_report_permission(request), **(extra_context or {})}
        return super().changelist_view(request, context)

    def report_view(self, request: HttpRequest) -> HttpResponse:
        """The dry run: per rule, what a run started now would do. Changes nothing."""
        if not self.has_report_permission(request):
            raise PermissionDenied
        now = timezone.now()
        return TemplateResponse(
            request,
            "admin/retention/retentionpolicy/report.html",
            {
                **self.admin_site.each_context(request),
                "title": "Retention dry run",
                "opts": self.model._meta,
                "now": now,
                "forecasts": retention_forecast(now=now),
            },
        )
