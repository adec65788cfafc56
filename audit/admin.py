"""The compliance console's audit pages: the event list, event detail, export and verify.

Nobody — superusers included — may add, change or delete audit records here. The list stays
fast on large tables: filters have fixed choices (no query per filter), the count is capped
(AUDIT_LIST_COUNT_LIMIT) instead of a full COUNT(*), and the search matches exact values on
indexed columns instead of scanning with LIKE.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import uuid
from typing import Any

from django.conf import settings
from django.contrib import admin, messages
from django.contrib.auth import get_user_model
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.handlers.asgi import ASGIRequest
from django.core.paginator import Paginator
from django.db import transaction
from django.db.models import Q, QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect, StreamingHttpResponse
from django.http.response import HttpResponseBase
from django.template.response import TemplateResponse
from django.urls import NoReverseMatch, path, reverse
from django.utils import timezone
from django.utils.functional import cached_property
from django.utils.html import format_html
from django.views.decorators.http import require_http_methods

from audit import anchors, export, personal
from audit.catalogue import AuditAction, AuditOutcome, TargetType
from audit.console import ReadOnlyModelAdmin
from audit.models import AuditAnchor, AuditCheckpoint, AuditEvent
from audit.services import audit_chain_verify, audit_record


class CappedCountPaginator(Paginator):
    """Counts at most AUDIT_LIST_COUNT_LIMIT + 1 rows: bounded work on any table size.

    Beyond the limit the list says "more than N" and offers the first N rows' pages;
    filters, the date drill-down and search narrow it down.
    """

    @cached_property
    def count(self) -> int:
        limit = settings.AUDIT_LIST_COUNT_LIMIT
        # SELECT COUNT(*) FROM (SELECT ... LIMIT limit + 1): never a full-table count.
        # No ORDER BY inside the subquery: the count does not need it.
        return int(self.object_list.order_by()[: limit + 1].count())  # type: ignore[attr-defined]


class ActorFilter(admin.SimpleListFilter):
    """Who acted: no one (anonymous/system), or the person picked from a row's actor link.

    Listing every user as a filter choice does not scale; search by e-mail instead.
    """

    title = "actor"
    parameter_name = "actor"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        choices = [("none", "No one (anonymous or system)")]
        value = self.value()
        if value and value.isascii() and value.isdigit():
            user = get_user_model().objects.filter(pk=value).only("email", "username").first()
            if user is not None:
                choices.append((value, user.email or user.get_username()))
        return choices

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        value = self.value()
        if value == "none":
            return queryset.filter(actor__isnull=True)
        if value and value.isascii() and value.isdigit():
            return queryset.filter(actor_id=int(value))
        return queryset


class TargetIdFilter(admin.SimpleListFilter):
    """Events about one object (set by links from the detail and review pages)."""

    title = "target id"
    parameter_name = "target_id"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        value = self.value()
        return [(value, value)] if value else []

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        value = self.value()
        return queryset.filter(target_id=value[:64]) if value else queryset


def _target_url(target_type: str, target_id: str) -> str | None:
    """The console page of an event's target, when there is one."""
    from conversations.models import Conversation, Message

    try:
        if target_type == TargetType.USER:
            user = get_user_model().objects.filter(public_id=target_id).only("pk").first()
            return reverse("admin:accounts_user_change", args=[user.pk]) if user else None
        if target_type == TargetType.CONVERSATION:
            conversation = Conversation.objects.filter(public_id=target_id).only("pk").first()
            if conversation:
                return reverse("admin:conversations_conversation_change", args=[conversation.pk])
        if target_type == TargetType.MESSAGE:
            message = Message.objects.filter(public_id=target_id).only("conversation_id").first()
            if message:
                return reverse(
                    "admin:conversations_conversation_change", args=[message.conversation_id]
                )
        if target_type == TargetType.MODEL:
            return reverse("admin:providers_aimodel_change", args=[target_id])
        if target_type == TargetType.GROUP:
            return reverse("admin:auth_group_change", args=[target_id])
        if target_type == TargetType.AUDIT_EVENT:
            return reverse("admin:audit_auditevent_change", args=[target_id])
    except (ValueError, ValidationError, NoReverseMatch):
        return None  # an id that is not (or no longer) an object's: no link
    return None


@admin.register(AuditEvent)
class AuditEventAdmin(ReadOnlyModelAdmin):
    list_display = (
        "sequence", "occurred_at", "action", "outcome", "actor_column", "ip_column",
        "target_type", "target_id",
    )  # fmt: skip
    list_display_links = ("sequence", "occurred_at")
    list_filter = ("action", "outcome", "target_type", ActorFilter, TargetIdFilter)
    # The actor's audit key comes with the row: the list opens sealed fields without a query
    # per row (audit/personal.py).
    list_select_related = ("actor", "actor__subject_key")
    date_hierarchy = "occurred_at"
    search_fields = ("actor_email",)  # see get_search_results
    search_help_text = (
        "An e-mail address (a current account's), IP address (anonymous events), target id or "
        "request id (exact match)."
    )
    # Newest first by time, so the (action, time) and (actor, time) indexes serve filter and
    # order together; sequence breaks ties.
    ordering = ("-occurred_at", "-sequence")
    show_full_result_count = False
    # Facet counts would run a COUNT per filter choice over the whole table.
    show_facets = admin.ShowFacets.NEVER
    paginator = CappedCountPaginator
    list_per_page = 100
    actions = None
    change_list_template = "admin/audit/auditevent/change_list.html"
    fieldsets = (
        ("Event", {"fields": ("sequence", "occurred_at", "action", "outcome", "details_json")}),
        (
            "Who and where",
            {
                "fields": (
                    "actor_link",
                    "actor_email_shown",
                    "ip_column",
                    "user_agent",
                    "session_hash",
                    "request_id",
                )
            },
        ),
        ("Target", {"fields": ("target_type", "target_id", "target_link")}),
        ("Chain", {"fields": ("prev_hash", "hash")}),
    )
    readonly_fields = (
        "sequence", "occurred_at", "action", "outcome", "details_json", "actor_link",
        "actor_email_shown", "ip_column", "user_agent", "session_hash", "request_id",
        "target_type", "target_id", "target_link", "prev_hash", "hash",
    )  # fmt: skip

    @property
    def count_limit(self) -> int:
        return int(settings.AUDIT_LIST_COUNT_LIMIT)

    # Personal fields are read through audit.personal.reveal only: sealed ones are opened
    # with their person's key, or shown as "[erased]" once erasure destroyed it.

    @admin.display(description="actor")
    def actor_column(self, event: AuditEvent) -> str:
        if event.actor_id is None:
            return "—"
        label = personal.reveal(event).actor_email or event.actor.get_username()  # type: ignore[union-attr]
        return format_html('<a href="?actor={}">{}</a>', event.actor_id, label)

    @admin.display(description="IP address")
    def ip_column(self, event: AuditEvent) -> str:
        revealed = personal.reveal(event)
        if revealed.ip:
            return str(revealed.ip)
        withheld = revealed.withheld.get(event.actor_id) if event.actor_id else None
        if withheld:
            return personal.ERASED if withheld == "erased" else personal.UNAVAILABLE
        return "—"

    @admin.display(description="actor email")
    def actor_email_shown(self, event: AuditEvent) -> str:
        return personal.reveal(event).actor_email or "—"

    @admin.display(description="details")
    def details_json(self, event: AuditEvent) -> str:
        details = personal.reveal(event).details
        if not details:
            return "—"
        return format_html(
            '<pre class="audit-details">{}</pre>',
            json.dumps(details, indent=2, sort_keys=True, ensure_ascii=False),
        )

    @admin.display(description="actor")
    def actor_link(self, event: AuditEvent) -> str:
        if event.actor_id is None:
            return "No one (anonymous or system)"
        events = reverse("admin:audit_auditevent_changelist") + f"?actor={event.actor_id}"
        person = reverse("admin:accounts_user_change", args=[event.actor_id])
        return format_html(
            '<a href="{}">{}</a> · <a href="{}">all events by this actor</a>',
            person,
            personal.reveal(event).actor_email or event.actor.get_username(),  # type: ignore[union-attr]
            events,
        )

    @admin.display(description="target")
    def target_link(self, event: AuditEvent) -> str:
        if not event.target_id:
            return "—"
        events = reverse("admin:audit_auditevent_changelist") + (
            f"?target_type={event.target_type}&target_id={event.target_id}"
        )
        url = _target_url(event.target_type, event.target_id)
        own = format_html('<a href="{}">open</a> · ', url) if url else ""
        return format_html('{}<a href="{}">all events about it</a>', own, events)

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[Any], search_term: str
    ) -> tuple[QuerySet[Any], bool]:
        """Exact matches on indexed columns, chosen by what the term looks like."""
        term = search_term.strip()
        if not term:
            return queryset, False
        if "@" in term:
            # Sealed e-mails cannot be matched in SQL: the term names the account whose
            # events are shown (events from before sealing still match their clear e-mail).
            # The ids as values, not a subquery: PostgreSQL then ORs two index scans.
            people = list(
                get_user_model().objects.filter(email__iexact=term).values_list("pk", flat=True)
            )
            return queryset.filter(Q(actor_id__in=people) | Q(actor_email=term.lower())), False
        try:
            return queryset.filter(ip=str(ipaddress.ip_address(term))), False
        except ValueError:
            pass
        condition = Q(target_id=term[:64]) | Q(request_id=term[:64])
        with contextlib.suppress(ValueError):
            condition |= Q(target_id=str(uuid.UUID(term)))
        return queryset.filter(condition), False

    # --- Export and verify -------------------------------------------------------------------

    def get_urls(self) -> list[Any]:
        wrap = self.admin_site.admin_view
        return [
            path("export/<str:fmt>/", wrap(self.export_view), name="audit_auditevent_export"),
            path("verify/", wrap(self.verify_view), name="audit_auditevent_verify"),
            *super().get_urls(),
        ]

    def has_export_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("audit.export_auditevent")

    def has_verify_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("audit.verify_auditevent")

    def changelist_view(self, request: HttpRequest, extra_context: Any = None) -> HttpResponse:
        context = {
            "can_export": self.has_export_permission(request),
            "can_verify": self.has_verify_permission(request),
            "count_limit": settings.AUDIT_LIST_COUNT_LIMIT,
            **(extra_context or {}),
        }
        return super().changelist_view(request, context)

    def export_view(self, request: HttpRequest, fmt: str) -> HttpResponseBase:
        """The events the list currently shows (same filters and search), streamed."""
        if not self.has_export_permission(request):
            raise PermissionDenied
        if fmt not in export.FORMATS:
            messages.error(request, "Unknown export format: choose CSV or JSON Lines.")
            return HttpResponseRedirect(reverse("admin:audit_auditevent_changelist"))
        changelist = self.get_changelist_instance(request)
        queryset = changelist.get_queryset(request)
        filters = {key: value[:200] for key, value in request.GET.items()}
        with transaction.atomic():
            audit_record(
                action=AuditAction.AUDIT_EXPORTED,
                target=(TargetType.AUDIT_TRAIL, "export"),
                details={"format": fmt, "filters": filters},
            )
        stamp = timezone.now().strftime("%Y%m%d-%H%M%S")
        body = (
            export.aexport_chunks(queryset, fmt)
            if isinstance(request, ASGIRequest)
            else export.export_chunks(queryset, fmt)
        )
        response = StreamingHttpResponse(body, content_type=export.FORMATS[fmt])
        response["Content-Disposition"] = f'attachment; filename="audit-{stamp}.{fmt}"'
        response["Cache-Control"] = "no-store"
        return response

    def verify_view(self, request: HttpRequest) -> HttpResponse:
        """Run the same verification as `manage.py verify_audit_chain` (POST) and show it."""
        if not self.has_verify_permission(request):
            raise PermissionDenied
        return _verify_page(request, self)

    def render_change_form(
        self, request: HttpRequest, context: Any, *args: Any, **kwargs: Any
    ) -> Any:
        context["show_save"] = context["show_save_and_continue"] = False
        return super().render_change_form(request, context, *args, **kwargs)


@require_http_methods(["GET", "POST"])
def _verify_page(request: HttpRequest, model_admin: AuditEventAdmin) -> HttpResponse:
    report = None
    error = ""
    with_anchors = bool(settings.AUDIT_ANCHOR_S3_BUCKET)
    if request.method == "POST":
        try:
            report = audit_chain_verify(anchors=with_anchors and "anchors" in request.POST)
        except anchors.AnchorError as exc:
            error = f"The S3 anchors could not be read ({exc}); nothing was verified."
    last = (
        AuditEvent.objects.filter(action=AuditAction.CHAIN_VERIFIED)
        .select_related("actor")
        .order_by("-sequence")
        .first()
    )
    context = {
        **model_admin.admin_site.each_context(request),
        "last_actor": personal.reveal(last).actor_email if last is not None else "",
        "title": "Verify the audit chain",
        "opts": model_admin.model._meta,
        "report": report,
        "error": error,
        "last": last,
        "last_ok": last is not None and last.outcome == AuditOutcome.SUCCESS,
        "anchors_configured": with_anchors,
        "checkpoints": AuditCheckpoint.objects.order_by("-id")[:5],
    }
    return TemplateResponse(request, "admin/audit/auditevent/verify.html", context)


@admin.register(AuditCheckpoint)
class AuditCheckpointAdmin(ReadOnlyModelAdmin):
    list_display = ("id", "signed_at", "sequence", "head_hash", "key_id", "anchored")
    list_select_related = ("anchor",)
    date_hierarchy = "signed_at"
    show_full_result_count = False
    paginator = CappedCountPaginator
    actions = None

    @admin.display(boolean=True, description="anchored in S3")
    def anchored(self, checkpoint: AuditCheckpoint) -> bool:
        return hasattr(checkpoint, "anchor")


@admin.register(AuditAnchor)
class AuditAnchorAdmin(ReadOnlyModelAdmin):
    list_display = ("checkpoint", "anchored_at", "bucket", "key", "retain_until")
    list_select_related = ("checkpoint",)
    actions = None
