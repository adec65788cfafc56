"""People and groups in the console.

Separation of duties: administrators manage people and groups, but only a superuser can
grant or remove the Compliance officer and Administrator roles, make someone a superuser,
give permissions directly, or change a role's permissions — otherwise an administrator
could make themselves a compliance officer and read transcripts. People are deactivated,
never deleted: their audit history and conversations must stay attributable.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.auth.admin import GroupAdmin as DjangoGroupAdmin
from django.contrib.auth.admin import UserAdmin as DjangoUserAdmin
from django.contrib.auth.models import Group
from django.db.models import QuerySet
from django.http import HttpRequest

from accounts.models import User
from accounts.roles import ADMINISTRATOR, COMPLIANCE_OFFICER, ROLES
from accounts.services import lockout_clear, sessions_end_by_administrator
from audit.legal_hold import legal_hold_actions

PROTECTED_ROLES = (COMPLIANCE_OFFICER, ADMINISTRATOR)


def _protected_role_change(before: set[str], after: set[str]) -> set[str]:
    return (before ^ after) & set(PROTECTED_ROLES)


@admin.register(User)
class UserAdmin(DjangoUserAdmin):
    list_display = ("username", "email", "first_name", "last_name", "is_active", "legal_hold")
    list_filter = ("is_active", "is_superuser", "legal_hold", "groups")
    readonly_fields = (
        "public_id", "last_login", "date_joined", "legal_hold", "legal_hold_since",
    )  # fmt: skip
    fieldsets = (
        (None, {"fields": ("username", "password")}),
        ("Personal info", {"fields": ("first_name", "last_name", "email")}),
        (
            "Access",
            {
                "fields": ("is_active", "groups", "is_superuser", "user_permissions"),
                "description": "Roles are groups: Staff, Compliance officer, Administrator. "
                "Deactivate people instead of deleting them.",
            },
        ),
        ("Dates", {"fields": ("last_login", "date_joined")}),
        ("Compliance", {"fields": ("legal_hold", "legal_hold_since", "public_id")}),
    )
    actions = [*legal_hold_actions(), "end_all_sessions", "clear_lockout"]

    def has_legal_hold_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("accounts.manage_legal_hold")

    def has_end_sessions_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("accounts.change_user")

    def has_clear_lockout_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("axes.delete_accessattempt")

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
