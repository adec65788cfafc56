from django.contrib import admin

from conversations.models import Conversation, Message


@admin.register(Conversation)
class ConversationAdmin(admin.ModelAdmin):
    list_display = ("title", "owner", "model", "updated_at")
    list_select_related = ("owner",)
    search_fields = ("title", "owner__username", "public_id")
    readonly_fields = ("public_id", "created_at", "updated_at")


@admin.register(Message)
class MessageAdmin(admin.ModelAdmin):
    list_display = ("public_id", "conversation", "role", "status", "model", "created_at")
    list_filter = ("role", "status", "model")
    list_select_related = ("conversation",)
    readonly_fields = ("public_id", "created_at", "started_at", "completed_at")
