"""The guardrail policy in the console: one page, changed by administrators.

Administrators change it (`guardrails.change_guardrailpolicy`), compliance officers read it
(`guardrails.view_guardrailpolicy`). Nobody adds or deletes it: there is exactly one, created
with the defaults on first use. Every change is audited by the console site (`admin.change`,
with the changed field names).
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import reverse

from guardrails import dlp
from guardrails.models import GuardrailPolicy


class GuardrailPolicyForm(forms.ModelForm):
    detectors = forms.MultipleChoiceField(
        label="Detectors",
        choices=list(dlp.DETECTORS.items()),
        widget=forms.CheckboxSelectMultiple,
        required=False,
        help_text="Which kinds of data the DLP detectors look for.",
    )
    national_ids = forms.MultipleChoiceField(
        label="National identity numbers",
        choices=list(dlp.NATIONAL_IDS.items()),
        widget=forms.CheckboxSelectMultiple,
        required=False,
        help_text="Which national id formats the national id detector looks for.",
    )

    class Meta:
        model = GuardrailPolicy
        fields = (
            "dlp_mode", "detectors", "national_ids", "injection_mode_input",
            "injection_mode_tools", "injection_threshold",
        )  # fmt: skip


@admin.register(GuardrailPolicy)
class GuardrailPolicyAdmin(admin.ModelAdmin):
    form = GuardrailPolicyForm
    fieldsets = (
        (
            "Personal data and secrets (DLP)",
            {"fields": ("dlp_mode", "detectors", "national_ids")},
        ),
        (
            "Prompt injection",
            {"fields": ("injection_mode_input", "injection_mode_tools", "injection_threshold")},
        ),
    )

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def get_object(self, request: HttpRequest, object_id: str, from_field: Any = None) -> Any:
        # The one policy exists from its first use; its page creates it on a fresh install.
        if str(object_id) == str(GuardrailPolicy.SINGLETON_ID):
            return GuardrailPolicy.current()
        return None

    def changelist_view(self, request: HttpRequest, extra_context: Any = None) -> HttpResponse:
        # One policy: the list is its page.
        policy = GuardrailPolicy.current()
        if not self.has_view_or_change_permission(request, policy):
            return super().changelist_view(request, extra_context)  # Django's 403
        return HttpResponseRedirect(
            reverse("admin:guardrails_guardrailpolicy_change", args=[policy.pk])
        )
