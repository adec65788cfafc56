"""Conversations in the console: read-only transcripts for compliance review.

Nobody changes or deletes transcripts here, superusers included. Opening a conversation
shows its review page — the transcript beside its audit events — and opening it is itself
recorded in the audit trail. A message's page leads to its conversation's review page.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import reverse

from audit import personal
from audit.catalogue import AuditAction, TargetType
from audit.console import ReadOnlyModelAdmin
from audit.legal_hold import legal_hold_actions
from audit.models import AuditEvent
from audit.services import audit_record
from conversations.models import Conversation, Message

REVIEW_EVENTS_MAX = 500
# Titles are encrypted, so SQL cannot search them: the console decrypts the titles of this
# many most recently active conversations (after the filters) and matches them in Python.
TITLE_SEARCH_SCAN = 2000


@admin.register(Conversation)
class ConversationAdmin(ReadOnlyModelAdmin):
    list_display = (
        "display_title", "owner", "source", "model", "legal_hold", "created_at", "updated_at"
    )  # fmt: skip
    list_select_related = ("owner",)
    list_filter = ("source", "legal_hold", "model")
    search_fields = ("=public_id", "owner__email")  # titles: see get_search_results
    search_help_text = (
        "A conversation id, the owner's e-mail, or words of a title (titles are encrypted: "
        f"only the {TITLE_SEARCH_SCAN} most recently active conversations are searched by title)."
    )

    @admin.display(description="title")  # not sortable: the column holds ciphertext
    def display_title(self, conversation: Conversation) -> str:
        return str(conversation)

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[Any], search_term: str
    ) -> tuple[QuerySet[Any], bool]:
        """Ids and e-mails in SQL; title words by decrypting a bounded, recent set."""
        found, may_have_duplicates = super().get_search_results(request, queryset, search_term)
        words = search_term.casefold().split()
        if not words:
            return found, may_have_duplicates
        recent = (
            queryset.select_related(None)
            .order_by("-updated_at", "-id")
            .only("id", "title")[:TITLE_SEARCH_SCAN]
        )
        titled = [c.pk for c in recent if all(w in str(c.title).casefold() for w in words)]
        return found | queryset.filter(pk__in=titled), may_have_duplicates

    date_hierarchy = "updated_at"
    actions = legal_hold_actions()

    def has_legal_hold_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("conversations.manage_legal_hold")

    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        """The review page: transcript and audit events side by side (opening it is audited)."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        conversation = (
            Conversation.objects.select_related("owner").filter(pk=object_id).first()
            if object_id.isdigit()
            else None
        )
        if conversation is None:
            raise Http404("No such conversation.")
        transcript = list(conversation.messages.order_by("id"))
        with transaction.atomic():
            audit_record(
                action=AuditAction.CONVERSATION_VIEWED,
                target=conversation,
                details={"messages": len(transcript), "owner": str(conversation.owner.public_id)},
            )
        events = list(
            AuditEvent.objects.filter(
                target_type=TargetType.CONVERSATION, target_id=str(conversation.public_id)
            )
            .select_related("actor", "actor__subject_key")
            .order_by("-sequence")[:REVIEW_EVENTS_MAX]
        )
        for event in events:  # sealed personal fields, opened (or "[erased]")
            event.shown = personal.reveal(event)  # type: ignore[attr-defined]
        context = {
            **self.admin_site.each_context(request),
            "title": f"Review: {conversation}",
            "opts": self.model._meta,
            "conversation": conversation,
            "transcript": transcript,
            "events": events,
            "events_max": REVIEW_EVENTS_MAX,
            "all_events_url": reverse("admin:audit_auditevent_changelist")
            + f"?target_type=conversation&target_id={conversation.public_id}",
            "can_view_audit": request.user.has_perm("audit.view_auditevent"),
            **(extra_context or {}),
        }
        return TemplateResponse(request, "admin/conversations/conversation/review.html", context)


@admin.register(Message)
class MessageAdmin(ReadOnlyModelAdmin):
    list_display = ("public_id", "conversation", "role", "status", "model", "created_at")
    list_filter = ("role", "status", "model")
    list_select_related = ("conversation",)
    search_fields = ("=public_id", "=conversation__public_id", "=request_id")

    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        # Message text is read only on the (audited) review page of its conversation.
        if not self.has_view_permission(request):
            raise PermissionDenied
        message = (
            Message.objects.filter(pk=object_id).only("conversation_id", "public_id").first()
            if object_id.isdigit()
            else None
        )
        if message is None:
            raise Http404("No such message.")
        url = reverse("admin:conversations_conversation_change", args=[message.conversation_id])
        return HttpResponseRedirect(f"{url}#message-{message.public_id}")
