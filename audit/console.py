"""The console: Django's admin site, opened by role and audited throughout.

* Access is the `accounts.access_console` permission (the Compliance officer and
  Administrator roles, and superusers), not the `is_staff` flag. Signing in happens on the
  product's own sign-in page (axes lockout, audit); the admin's login form is not used.
* Every model admin registered here, third-party ones included, records its additions,
  changes and deletions in the audit trail, in the same transaction as the change and with
  the changed field names (mirroring Django's admin log).
"""

from __future__ import annotations

from functools import partial
from typing import Any

from django.contrib import admin
from django.contrib.auth.views import redirect_to_login
from django.db import transaction
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import path

from audit.catalogue import AuditAction
from audit.governed import governed_writes
from audit.services import audit_record


def changed_fields(message: Any) -> list[str]:
    """The field names in a change message built by `construct_change_message`."""
    fields: list[str] = []
    if isinstance(message, list):
        for entry in message:
            if isinstance(entry, dict):
                for detail in entry.values():
                    if isinstance(detail, dict):
                        fields.extend(str(name) for name in detail.get("fields", []))
    return fields


class AuditedAdminMixin:
    """Records console additions, changes and deletions in the audit trail."""

    def log_addition(self, request: HttpRequest, obj: Any, message: Any) -> Any:
        entry = super().log_addition(request, obj, message)  # type: ignore[misc]
        audit_record(
            action=AuditAction.ADMIN_ADD,
            target=obj,
            details={"object": str(obj)[:200], "change": message},
        )
        return entry

    def log_change(self, request: HttpRequest, obj: Any, message: Any) -> Any:
        entry = super().log_change(request, obj, message)  # type: ignore[misc]
        audit_record(
            action=AuditAction.ADMIN_CHANGE,
            target=obj,
            details={
                "object": str(obj)[:200],
                "changed_fields": changed_fields(message),
                "change": message if isinstance(message, list) else str(message)[:500],
            },
        )
        return entry

    def log_deletions(self, request: HttpRequest, queryset: Any) -> Any:
        entries = super().log_deletions(request, queryset)  # type: ignore[misc]
        for obj in queryset:
            audit_record(
                action=AuditAction.ADMIN_DELETE, target=obj, details={"object": str(obj)[:200]}
            )
        return entries

    def delete_queryset(self, request: HttpRequest, queryset: Any) -> None:
        # "Delete selected": each object's deletion is recorded by log_deletions just before.
        with governed_writes(reason="admin.delete_selected"):
            super().delete_queryset(request, queryset)  # type: ignore[misc]

    def response_action(self, request: HttpRequest, queryset: Any) -> Any:
        # Bulk actions (delete selected) change and audit in one transaction.
        with transaction.atomic():
            return super().response_action(request, queryset)  # type: ignore[misc]


class ReadOnlyModelAdmin(admin.ModelAdmin):
    """Records that nobody — superusers included — adds, changes or deletes in the console."""

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class ConsoleSite(admin.AdminSite):
    site_header = "Enterprise AI console"
    site_title = "Enterprise AI console"
    index_title = "Compliance and administration"
    # The console's own links (verify the chain) are added by the audit admin's templates;
    # the usage dashboard (observability/admin_views.py) is routed and listed here.

    def has_permission(self, request: HttpRequest) -> bool:
        user = request.user
        return bool(user.is_active and user.has_perm("accounts.access_console"))

    def login(self, request: HttpRequest, extra_context: Any = None) -> HttpResponse:
        if request.user.is_authenticated:
            # Signed in, but no role that opens the console.
            return TemplateResponse(
                request,
                "admin/no_console_access.html",
                {"site_header": self.site_header},
                status=403,
            )
        return redirect_to_login(request.GET.get("next") or request.get_full_path())

    def get_urls(self) -> list[Any]:
        from observability.admin_views import usage_dashboard_view

        dashboard = partial(usage_dashboard_view, site=self)
        return [
            path("usage/", self.admin_view(dashboard), name="usage_dashboard"),
            *super().get_urls(),
        ]

    def get_app_list(self, request: HttpRequest, app_label: str | None = None) -> list[Any]:
        from observability.admin_views import console_app_entry

        app_list = super().get_app_list(request, app_label)
        entry = console_app_entry(request) if app_label is None else None
        if entry is not None:
            app_list = sorted([*app_list, entry], key=lambda app: str(app["name"]).lower())
        return app_list

    def register(self, model_or_iterable: Any, admin_class: Any = None, **options: Any) -> None:
        admin_class = admin_class or admin.ModelAdmin
        if not issubclass(admin_class, AuditedAdminMixin):
            admin_class = type(admin_class.__name__, (AuditedAdminMixin, admin_class), {})
        super().register(model_or_iterable, admin_class, **options)
