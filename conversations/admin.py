"""Conversations in the admin: viewable, never editable.

Transcripts are records. Nobody changes or deletes them from the admin, superusers
included; the compliance console (audit issue) builds on these read-only views.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from conversations.models import Conversation, Message


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class MessageInline(admin.TabularInline):
    model = Message
    fields = ("created_at", "role", "status", "model", "content", "output_tokens", "error")
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = True
    ordering = ("id",)

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Conversation)
class ConversationAdmin(ReadOnlyAdmin):
    list_display = ("title", "owner", "model", "created_at", "updated_at")
    list_select_related = ("owner",)
    list_filter = ("model",)
    search_fields = ("title", "owner__username", "owner__email", "public_id")
    date_hierarchy = "updated_at"
    inlines = (MessageInline,)


@admin.register(Message)
class MessageAdmin(ReadOnlyAdmin):
    list_display = ("public_id", "conversation", "role", "status", "model", "created_at")
    list_filter = ("role", "status", "model")
    list_select_related = ("conversation",)
    search_fields = ("public_id", "conversation__public_id")
