"""The console's "Place on legal hold" / "Release legal hold" actions, shared by people and
conversations. Each asks for a reason (a case or matter reference) before it applies, and
each change is made and audited by the owning app's service.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse

REASON_MAX = 500

HoldService = Callable[..., bool]


class LegalHoldForm(forms.Form):
    reason = forms.CharField(
        max_length=REASON_MAX,
        strip=True,
        help_text="The case or matter this hold is for. Recorded in the audit trail.",
        widget=forms.TextInput(attrs={"size": 60}),
    )


def legal_hold_actions(service: HoldService, *, target_kwarg: str) -> list[Any]:
    """Admin actions placing and releasing holds through `service(actor=, <target>=, held=,
    reason=)`, which checks the permission, writes and audits (it returns whether it changed
    anything)."""

    def make(held: bool) -> Any:
        verb = "Place on legal hold" if held else "Release legal hold"

        @admin.action(description=verb, permissions=["legal_hold"])
        def action(
            modeladmin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet[Any]
        ) -> HttpResponse | None:
            form = LegalHoldForm(request.POST if "apply" in request.POST else None)
            if form.is_valid():
                changed = sum(
                    service(
                        actor=request.user,
                        held=held,
                        reason=form.cleaned_data["reason"],
                        **{target_kwarg: obj},
                    )
                    for obj in queryset
                )
                modeladmin.message_user(
                    request,
                    f"{verb}: {changed} changed, {queryset.count() - changed} already so.",
                    messages.SUCCESS,
                )
                return None
            return TemplateResponse(
                request,
                "admin/legal_hold_confirm.html",
                {
                    **modeladmin.admin_site.each_context(request),
                    "title": verb,
                    "verb": verb,
                    "objects": queryset,
                    "form": form,
                    "opts": modeladmin.model._meta,
                    "action_name": request.POST.get("action", ""),
                    "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
                },
            )

        action.__name__ = "legal_hold_place" if held else "legal_hold_release"
        return action

    return [make(True), make(False)]
