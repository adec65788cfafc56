"""People and groups in the console.

Separation of duties: administrators manage people and groups, but only a superuser can
grant or remove the Compliance officer and Administrator roles, make someone a superuser,
give permissions directly, or change a role's permissions — otherwise an administrator
could make themselves a compliance officer and read transcripts. People are deactivated,
never deleted: their audit history and conversations must stay attributable. API keys
are likewise revoked, never deleted.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.auth.admin import GroupAdmin as DjangoGroupAdmin
from django.contrib.auth.admin import UserAdmin as DjangoUserAdmin
from django.contrib.auth.models import Group
from django.db.models import QuerySet
from django.http import HttpRequest
from django.template.response import TemplateResponse

from accounts.api_keys import api_key_create, api_key_revoke, scopes_validate
from accounts.erasure import REASON_MAX, ErasureRefused, person_erase
from accounts.models import ApiKey, User
from accounts.roles import ADMINISTRATOR, COMPLIANCE_OFFICER, ROLES
from accounts.services import lockout_clear, sessions_end_by_administrator
from audit.console import AuditedAdminMixin
from audit.legal_hold import legal_hold_actions
from costs.models import Budget

PROTECTED_ROLES = (COMPLIANCE_OFFICER, ADMINISTRATOR)


def _protected_role_change(before: set[str], after: set[str]) -> set[str]:
    return (before ^ after) & set(PROTECTED_ROLES)


@admin.register(User)
class UserAdmin(DjangoUserAdmin):
    list_display = ("username", "email", "first_name", "last_name", "is_active", "legal_hold")
    list_filter = ("is_active", "is_service_account", "is_superuser", "legal_hold", "groups")
    readonly_fields = (
        "public_id", "last_login", "date_joined", "legal_hold", "legal_hold_since",
    )  # fmt: skip
    fieldsets = (
        (None, {"fields": ("username", "password")}),
        ("Personal info", {"fields": ("first_name", "last_name", "email")}),
        (
            "Access",
            {
                "fields": (
                    "is_active",
                    "is_service_account",
                    "groups",
                    "is_superuser",
                    "user_permissions",
                ),
                "description": "Roles are groups: Staff, Compliance officer, Administrator. "
                "Deactivate people instead of deleting them. A service account cannot sign "
                "in; it acts through API keys and spends its department's (group's) budget.",
            },
        ),
        ("Dates", {"fields": ("last_login", "date_joined")}),
        ("Compliance", {"fields": ("legal_hold", "legal_hold_since", "public_id")}),
    )
    actions = [*legal_hold_actions(), "end_all_sessions", "clear_lockout", "erase_people"]

    def has_legal_hold_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("accounts.manage_legal_hold")

    def has_end_sessions_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("accounts.change_user")

    def has_clear_lockout_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("axes.delete_accessattempt")

    def has_erase_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("accounts.erase_person")

    @admin.action(
        description="Erase personal data (privacy request; cannot be undone)",
        permissions=["erase"],
    )
    def erase_people(self, request: HttpRequest, queryset: QuerySet[User]) -> Any:
        """Asks for the request's reference and a confirmation, then erases each person
        (accounts/erasure.py); a refusal (legal hold) is shown with its code."""
        form = ErasureForm(request.POST if "apply" in request.POST else None)
        if not form.is_valid():
            return TemplateResponse(
                request,
                "admin/accounts/user/erase_confirm.html",
                {
                    **self.admin_site.each_context(request),
                    "title": "Erase personal data",
                    "objects": queryset,
                    "form": form,
                    "opts": self.model._meta,
                    "action_name": request.POST.get("action", ""),
                    "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
                },
            )
        for person in queryset:
            label = f"#{person.pk}"
            try:
                result = person_erase(
                    actor=request.user, person=person, reason=form.cleaned_data["reason"]
                )
            except ErasureRefused as refusal:
                self.message_user(
                    request, f"{label} not erased ({refusal.code}): {refusal.message}",
                    messages.ERROR,
                )  # fmt: skip
            else:
                self.message_user(
                    request, f"{label}: {result.message}",
                    messages.WARNING if result.already else messages.SUCCESS,
                )  # fmt: skip
        return None

    @admin.action(
        description="End all sessions (signs them out everywhere)", permissions=["end_sessions"]
    )
    def end_all_sessions(self, request: HttpRequest, queryset: QuerySet[User]) -> None:
        ended = sum(
            sessions_end_by_administrator(user=user, actor=request.user) for user in queryset
        )
        self.message_user(
            request,
            f"Signed out {queryset.count()} people everywhere ({ended} sessions ended).",
            messages.SUCCESS,
        )

    @admin.action(
        description="Unlock sign-in (clear failed attempts)", permissions=["clear_lockout"]
    )
    def clear_lockout(self, request: HttpRequest, queryset: QuerySet[User]) -> None:
        cleared = sum(lockout_clear(user=user, actor=request.user) for user in queryset)
        self.message_user(
            request,
            f"Unlocked {queryset.count()} people ({cleared} failed-attempt records cleared).",
            messages.SUCCESS,
        )

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        fields = tuple(super().get_readonly_fields(request, obj))
        if not request.user.is_superuser:
            fields += ("is_superuser", "user_permissions")
        return fields

    def get_form(
        self, request: HttpRequest, obj: Any = None, change: bool = False, **kwargs: Any
    ) -> Any:
        form_class = super().get_form(request, obj, change=change, **kwargs)
        if request.user.is_superuser or "groups" not in form_class.base_fields:
            return form_class
        before = set(obj.groups.values_list("name", flat=True)) if obj is not None else set()

        class RoleGuardedForm(form_class):  # type: ignore[misc, valid-type]
            def clean_groups(self) -> Any:
                groups = self.cleaned_data["groups"]
                changed = _protected_role_change(before, {group.name for group in groups})
                if changed:
                    raise forms.ValidationError(
                        "Only a superuser can grant or remove the "
                        f"{' and '.join(sorted(changed))} role."
                    )
                return groups

        return RoleGuardedForm


class ErasureForm(forms.Form):
    reason = forms.CharField(
        max_length=REASON_MAX,
        strip=True,
        help_text="The privacy request's case or ticket reference. Recorded in the audit "
        "trail: do not write the person's name or e-mail.",
        widget=forms.TextInput(attrs={"size": 60}),
    )
    confirm = forms.BooleanField(
        label="I understand that erasure cannot be undone",
        help_text="Conversations' content, names, e-mail and user name are deleted; the "
        "personal fields of their audit events become unreadable.",
    )


admin.site.unregister(Group)


@admin.register(Group)
class GroupAdmin(DjangoGroupAdmin):
    """Groups are departments (model access, budgets) and the three roles."""

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        fields = tuple(super().get_readonly_fields(request, obj))
        if not request.user.is_superuser:
            fields += ("permissions",)
        return fields

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        if obj is not None and obj.name in ROLES and not request.user.is_superuser:
            return False
        return super().has_change_permission(request, obj)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        if obj is not None and obj.name in ROLES:
            return False  # the roles are part of the product, for everyone
        return super().has_delete_permission(request, obj)


class ApiKeyAdminForm(forms.ModelForm):
    scopes = forms.MultipleChoiceField(
        choices=ApiKey.Scope.choices, widget=forms.CheckboxSelectMultiple
    )
    # On creation only: the key's own budget (a costs.Budget with scope "API key", then
    # managed under Budgets like every other).
    budget_limit = forms.DecimalField(
        required=False,
        min_value=0,
        max_digits=12,
        decimal_places=2,
        help_text="A spend limit of this key's own, on top of its owner's budgets; empty: none. "
        "Afterwards it is managed under Costs › Budgets.",
    )
    # Not required: a key being changed does not show these (its budget is under Budgets).
    budget_period = forms.ChoiceField(
        choices=Budget.Period.choices, initial=Budget.Period.MONTHLY, required=False
    )

    class Meta:
        model = ApiKey
        fields = ("owner", "name", "scopes", "expires_at", "rate_limit_per_minute")


@admin.register(ApiKey)
class ApiKeyAdmin(AuditedAdminMixin, admin.ModelAdmin):  # type: ignore[misc]
    """Every key, for administrators (compliance officers read). Keys are created through
    api_key_create (the key is shown once, on the page after saving) and revoked through
    api_key_revoke, never deleted; the secret's hash is never shown."""

    form = ApiKeyAdminForm
    list_display = (
        "name", "prefix", "owner", "scope_list", "created_at", "expires_at", "last_used_at",
        "revoked_at",
    )  # fmt: skip
    list_filter = (
        ("revoked_at", admin.EmptyFieldListFilter),
        ("expires_at", admin.EmptyFieldListFilter),
        "owner__is_service_account",
        "created_at",
    )
    search_fields = ("prefix", "name", "owner__username", "owner__email")
    list_select_related = ("owner",)
    actions = ["revoke_selected"]
    readonly_fields = (
        "public_id", "prefix", "created_at", "created_by", "revoked_at", "revoked_by",
        "last_used_at", "last_used_ip",
    )  # fmt: skip

    def get_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        fields = list(ApiKeyAdminForm.Meta.fields)
        if obj is None:
            return [*fields, "budget_limit", "budget_period"]
        return [*fields, *self.readonly_fields]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        if obj is None:
            return ()
        return ("owner", *self.readonly_fields)

    @admin.display(description="Scopes")
    def scope_list(self, obj: ApiKey) -> str:
        return " ".join(obj.scopes or [])

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # revoked, never deleted: the audit trail refers to them

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        if obj is not None and obj.revoked_at is not None:
            return False
        return super().has_change_permission(request, obj)

    def has_revoke_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("accounts.change_apikey")

    def save_model(self, request: HttpRequest, obj: ApiKey, form: Any, change: bool) -> None:
        if change:
            obj.scopes = scopes_validate(obj.scopes)
            super().save_model(request, obj, form, change)
            return
        key, raw = api_key_create(
            owner=obj.owner,
            name=obj.name,
            scopes=list(obj.scopes),
            expires_at=obj.expires_at,
            actor=request.user,
            rate_limit_per_minute=obj.rate_limit_per_minute,
            budget_limit=form.cleaned_data.get("budget_limit"),
            budget_period=form.cleaned_data.get("budget_period") or Budget.Period.MONTHLY,
            via="console",
        )
        for field in ApiKey._meta.concrete_fields:
            setattr(obj, field.attname, getattr(key, field.attname))
        obj._state.adding = False
        # On the request, not on this admin: one admin instance serves every request.
        request._api_key_created = raw  # type: ignore[attr-defined]

    def log_addition(self, request: HttpRequest, obj: Any, message: Any) -> Any:
        # api_key_create recorded api_key.created; Django's admin log still gets its entry.
        return admin.ModelAdmin.log_addition(self, request, obj, message)

    def response_add(self, request: HttpRequest, obj: Any, post_url_continue: Any = None) -> Any:
        raw = getattr(request, "_api_key_created", None)
        if raw is None:
            return super().response_add(request, obj, post_url_continue)
        # Rendered, not redirected with a message: messages may travel in a cookie.
        response = TemplateResponse(
            request,
            "admin/accounts/apikey/created.html",
            {**self.admin_site.each_context(request), "key": obj, "raw": raw,
             "opts": self.opts, "title": "API key created"},
        )  # fmt: skip
        response["Cache-Control"] = "no-store"
        return response

    @admin.action(description="Revoke selected keys", permissions=["revoke"])
    def revoke_selected(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> None:
        revoked = 0
        for key in queryset.select_related("owner"):
            if key.revoked_at is None:
                api_key_revoke(key=key, actor=request.user)
                revoked += 1
        self.message_user(request, f"Revoked {revoked} API keys.", messages.SUCCESS)
