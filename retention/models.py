"""Retention: how long conversations are kept, and what retention has done to each.

A policy covers the whole organisation or one department (a group that is not a role, as
for budgets). After `days` without activity — measured from the conversation's `updated_at`,
which every new message and rename moves forward — the conversation's content is erased,
or the conversation is removed from its owner's view with its content kept. Every policy
that covers a conversation applies, so the shortest period wins, and erasure wins over
removal (docs/data-protection.md, "Retention").
"""

from __future__ import annotations

from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models

DAYS_MAX = 36500  # a hundred years: longer is "keep forever", which is no policy at all


class RetentionPolicy(models.Model):
    class Scope(models.TextChoices):
        ORGANISATION = "organisation", "Organisation"
        DEPARTMENT = "department", "Department (group)"

    class Action(models.TextChoices):
        ERASE = "erase", "Erase the content"
        REMOVE = "remove", "Remove from the owner's view (content kept)"

    name = models.CharField(max_length=100)
    scope = models.CharField(max_length=16, choices=Scope.choices)
    # PROTECT: a department's policy is deleted (and audited) on its own, not with the group.
    group = models.ForeignKey(
        "auth.Group",
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="retention_policies",
        verbose_name="department",
    )
    days = models.PositiveIntegerField(
        validators=[MinValueValidator(1), MaxValueValidator(DAYS_MAX)],
        help_text="Days since the conversation's last activity (its last message or rename).",
    )
    action = models.CharField(max_length=8, choices=Action.choices, default=Action.ERASE)
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["scope", "days", "name"]
        verbose_name = "retention policy"
        verbose_name_plural = "retention policies"
        constraints = [
            models.CheckConstraint(
                condition=models.Q(scope="organisation", group__isnull=True)
                | models.Q(scope="department", group__isnull=False),
                name="retention_policy_scope_target",
            ),
            models.CheckConstraint(
                condition=models.Q(days__gte=1, days__lte=DAYS_MAX),
                name="retention_policy_days_range",
            ),
            models.CheckConstraint(
                condition=models.Q(action__in=["erase", "remove"]),
                name="retention_policy_action_valid",
            ),
            # One policy per action for the organisation and for each department.
            models.UniqueConstraint(
                fields=["action"],
                condition=models.Q(scope="organisation"),
                name="retention_policy_one_per_org_action",
            ),
            models.UniqueConstraint(
                fields=["group", "action"],
                condition=models.Q(scope="department"),
                name="retention_policy_one_per_dept_action",
            ),
        ]

    def __str__(self) -> str:
        return self.name


class ConversationRetention(models.Model):
    """Retention's own record for one conversation: the expiry an API caller asked for at
    creation, and when retention removed or erased it. Kept beside the conversation (not on
    it) so that retention's bookkeeping never moves the conversation's `updated_at`."""

    conversation = models.OneToOneField(
        "conversations.Conversation",
        on_delete=models.CASCADE,
        primary_key=True,
        related_name="retention",
    )
    # The per-conversation TTL (POST /api/v1/conversations `retention_days`): erased once
    # this moment has passed, whatever its activity.
    expires_at = models.DateTimeField(null=True, blank=True)
    ttl_days = models.PositiveIntegerField(null=True, blank=True)
    removed_at = models.DateTimeField(null=True, blank=True)
    erased_at = models.DateTimeField(null=True, blank=True)
    # Which policy acted last: a RetentionPolicy id, or "api_ttl".
    applied_by = models.CharField(max_length=32, blank=True)

    class Meta:
        indexes = [
            models.Index(
                fields=["expires_at"],
                condition=models.Q(expires_at__isnull=False, erased_at__isnull=True),
                name="retention_expiry_due_idx",
            ),
        ]

    def __str__(self) -> str:
        return f"retention of conversation {self.conversation_id}"
