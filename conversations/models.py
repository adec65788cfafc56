"""Conversations and their messages."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models

from audit.governed import GovernedManager
from protection.fields import EncryptedJSONField, EncryptedTextField


class Conversation(models.Model):
    class Source(models.TextChoices):
        """The entry point a conversation was started from. Every entry point goes through
        the same admission path (conversations.services.message_send); the chat list shows
        web conversations only, the console and reports show them all."""

        WEB = "web", "Chat"
        API = "api", "REST API"
        OPENAI = "openai", "OpenAI-compatible API"

    public_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    # PROTECT: transcripts are records; removing a user must not silently remove them.
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="conversations"
    )
    # Derived from the user's first message: encrypted at rest like the messages
    # (docs/data-protection.md). At most 200 characters (conversations.services).
    title = EncryptedTextField()
    model = models.CharField(max_length=100, help_text="Key of the model last used.")
    source = models.CharField(
        max_length=8, choices=Source.choices, default=Source.WEB, editable=False
    )
    # Provider-side state (e.g. an OpenAI conversation id), with the provider it belongs to
    # and the last reply it has seen, so stale state is never reused.
    provider_state = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    # Set and released by compliance officers only (audited); retention must skip it.
    legal_hold = models.BooleanField(
        default=False,
        editable=False,
        help_text="Under legal hold: this conversation must be kept whatever the retention "
        "rules say.",
    )
    legal_hold_since = models.DateTimeField(null=True, blank=True, editable=False)
    # Deleted by its owner (conversations.services.conversation_delete): the title and every
    # message's text are erased, the rows stay for the ledger and the audit trail, and the
    # conversation is gone from every list, page and API answer.
    deleted_at = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        indexes = [
            # "My conversations, newest first."
            models.Index(fields=["owner", "-updated_at"], name="conv_owner_updated_idx"),
            # "My chat conversations, newest first": the chat list leaves API calls out.
            models.Index(fields=["owner", "source", "-updated_at"], name="conv_owner_source_idx"),
            # Retention's scan (retention/rules.py): the longest-inactive conversations first.
            models.Index(fields=["updated_at", "id"], name="conv_retention_idx"),
        ]
        permissions = [
            ("manage_legal_hold", "Can place and release legal holds on conversations"),
        ]

    def __str__(self) -> str:
        return self.title or str(self.public_id)


class Message(models.Model):
    class Role(models.TextChoices):
        USER = "user", "User"
        ASSISTANT = "assistant", "Assistant"

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        STREAMING = "streaming", "Streaming"
        COMPLETE = "complete", "Complete"
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled"

    IN_FLIGHT = (Status.PENDING, Status.STREAMING)

    public_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    conversation = models.ForeignKey(
        Conversation, on_delete=models.CASCADE, related_name="messages"
    )
    role = models.CharField(max_length=16, choices=Role.choices)
    # Encrypted at rest, with tool_events and options (docs/data-protection.md): SQL can only
    # tell whether it is empty.
    content = EncryptedTextField(blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    model = models.CharField(max_length=100, blank=True, help_text="Key of the model asked.")
    answered_by = models.CharField(
        max_length=100, blank=True, help_text="Key of the model that answered (after failover)."
    )
    notice = models.CharField(max_length=300, blank=True, help_text="Shown with the reply.")
    # Tool calls made while writing this reply: [{id, name, arguments, result, is_error}].
    tool_events = EncryptedJSONField(default=list, blank=True)
    # The API key a reply was asked for with (none from the chat page): its own budgets are
    # held and charged with the owner's. Keys are revoked, never deleted.
    api_key = models.ForeignKey(
        "accounts.ApiKey", null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    # A reply's generation settings chosen by the caller (the API): {"max_output_tokens": n,
    # "temperature": t}; absent keys take the model's maximum and CHAT_TEMPERATURE.
    # The database default (the empty text, read as {}) lets a row be inserted without it,
    # as by the previous release during a rolling deploy.
    options = EncryptedJSONField(
        default=dict, db_default=models.Value("", output_field=models.TextField()), blank=True
    )
    input_tokens = models.PositiveIntegerField(null=True, blank=True)
    output_tokens = models.PositiveIntegerField(null=True, blank=True)
    # What the reply cost, summed over its provider calls (costs.CostEntry holds each call).
    cost = models.DecimalField(max_digits=18, decimal_places=6, null=True, blank=True)
    cost_estimated = models.BooleanField(
        default=False, help_text="Some call reported no usage: its tokens were estimated."
    )
    stop_reason = models.CharField(max_length=32, blank=True)
    # Measured from the moment the message was accepted, so they include queueing.
    time_to_first_token_ms = models.PositiveIntegerField(null=True, blank=True)
    duration_ms = models.PositiveIntegerField(null=True, blank=True)
    error_code = models.CharField(max_length=64, blank=True)
    error = models.TextField(blank=True, help_text="Shown to the user; never a stack trace.")
    # The request that asked for this message; ties it to its audit events (and charges).
    request_id = models.CharField(max_length=64, blank=True)
    # Set when the person regenerated this reply or edited this message and resent it
    # (conversations.versions): the newer version of it. A superseded message is kept as an
    # earlier version, shown as such, and left out of everything sent to a model.
    superseded_by = models.ForeignKey(
        "self",
        null=True,
        blank=True,
        # A conversation's deletion takes every version with it; nothing else may.
        on_delete=models.RESTRICT,
        related_name="earlier_versions",
        editable=False,
    )
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    # Refreshed by the process generating the reply while it streams (conversations.inflight);
    # a streaming reply whose heartbeat stopped is failed as interrupted by the sweeper.
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    completed_at = models.DateTimeField(null=True, blank=True)

    # Queryset writes are audited unless a service that audits them says so (audit.governed).
    objects = GovernedManager()

    class Meta:
        indexes = [
            models.Index(fields=["conversation", "id"], name="msg_conversation_order_idx"),
            # The sweeper's scan: only replies in flight, a handful among millions of rows.
            models.Index(
                fields=["status", "heartbeat_at"],
                condition=models.Q(status__in=["pending", "streaming"]),
                name="msg_in_flight_idx",
            ),
            # The usage dashboard (observability.usage): replies by creation time, with every
            # column it aggregates, so PostgreSQL answers from the index alone (index-only
            # scan) instead of reading the wide rows. `include` is PostgreSQL-only; other
            # databases get a plain partial index on created_at.
            models.Index(
                fields=["created_at"],
                include=[
                    "status",
                    "model",
                    "answered_by",
                    "time_to_first_token_ms",
                    "duration_ms",
                ],
                condition=models.Q(role="assistant"),
                name="msg_usage_idx",
            ),
        ]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(role__in=["user", "assistant"]), name="msg_role_valid"
            ),
            models.CheckConstraint(
                condition=models.Q(
                    status__in=["pending", "streaming", "complete", "failed", "cancelled"]
                ),
                name="msg_status_valid",
            ),
            # One reply at a time per conversation, even with several tabs or sockets.
            models.UniqueConstraint(
                fields=["conversation"],
                condition=models.Q(status__in=["pending", "streaming"]),
                name="msg_one_reply_in_flight",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.role} message {self.public_id}"

    @property
    def is_in_flight(self) -> bool:
        return self.status in self.IN_FLIGHT


class SearchDocument(models.Model):
    """The blind search index of one message's text or one conversation's title
    (conversations.search, docs/data-protection.md "Search"): keyed tokens of its words,
    never the words. `message` is empty for the title's document.

    On PostgreSQL the table also has `search_vector` (a tsvector generated from `tokens`,
    'simple' configuration) with a GIN index, made by migration 0012 and unknown to the
    ORM; the embedded default (SQLite) matches `tokens` with LIKE.
    """

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    conversation = models.ForeignKey(
        Conversation, on_delete=models.CASCADE, related_name="search_documents"
    )
    message = models.OneToOneField(
        Message, null=True, blank=True, on_delete=models.CASCADE, related_name="search_document"
    )
    # " tok1 tok2 … " (space-delimited, with a space at each end, so `LIKE '% tok %'` works).
    tokens = models.TextField()
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["conversation"],
                condition=models.Q(message__isnull=True),
                name="searchdoc_one_title_per_conversation",
            ),
        ]
        indexes = [models.Index(fields=["owner", "conversation"], name="searchdoc_owner_idx")]

    def __str__(self) -> str:
        return f"search document {self.pk}"
