"""Legal hold on people and conversations: the service, and the console actions that ask for
a reason (a case or matter reference) before they apply it.

A held record must be kept whatever retention rules say. Models that can be held have
`legal_hold`, `legal_hold_since` and a `manage_legal_hold` permission (compliance officers).
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.utils import timezone

from audit.catalogue import AuditAction
from audit.governed import governed_writes
from audit.services import audit_record

REASON_MAX = 500


@transaction.atomic
def legal_hold_set(*, actor: Any, obj: Any, held: bool, reason: str) -> bool:
    """Place (`held=True`) or release a legal hold on `obj`; audited with the reason.

    Returns False when it already was in that state (nothing recorded). Raises
    PermissionDenied unless the actor has `<app>.manage_legal_hold` (compliance officers).
    """
    model = type(obj)
    if not actor.has_perm(f"{model._meta.app_label}.manage_legal_hold"):
        raise PermissionDenied
    locked = model.objects.select_for_update().get(pk=obj.pk)
    if locked.legal_hold == held:
        return False
    since = timezone.now() if held else None
    # update(): a hold is not an edit (a conversation's updated_at orders its owner's list).
    with governed_writes(reason="legal_hold"):  # audited below
        model.objects.filter(pk=obj.pk).update(legal_hold=held, legal_hold_since=since)
    obj.legal_hold, obj.legal_hold_since = held, since
    audit_record(
        action=AuditAction.LEGAL_HOLD_SET if held else AuditAction.LEGAL_HOLD_RELEASED,
        actor=actor,
        target=obj,
        details={"reason": reason[:REASON_MAX]},
    )
    return True


class LegalHoldForm(forms.Form):
    reason = forms.CharField(
        max_length=REASON_MAX,
        strip=True,
        help_text="The case or matter this hold is for. Recorded in the audit trail.",
        widget=forms.TextInput(attrs={"size": 60}),
    )


def legal_hold_actions() -> list[Any]:
    """The console actions placing and releasing holds (shown to compliance officers only:
    the model admin's `has_legal_hold_permission`)."""

    def make(held: bool) -> Any:
        verb = "Place on legal hold" if held else "Release legal hold"

        @admin.action(description=verb, permissions=["legal_hold"])
        def action(
            modeladmin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet[Any]
        ) -> HttpResponse | None:
            form = LegalHoldForm(request.POST if "apply" in request.POST else None)
            if form.is_valid():
                changed = sum(
                    legal_hold_set(
                        actor=request.user, obj=obj, held=held, reason=form.cleaned_data["reason"]
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
