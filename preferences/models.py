"""A person's own preferences for the chat: their custom instructions (docs/configuration.md,
CHAT_CUSTOM_INSTRUCTIONS_*).

The instructions are personal text, encrypted at rest like transcripts
(protection/fields.py); they are changed only through `preferences.services`, audited.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models

from protection.fields import EncryptedTextField


class Preferences(models.Model):
    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="preferences"
    )
    # Added to the system prompt of the person's chat replies, after the organisation's.
    instructions = EncryptedTextField(blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name_plural = "preferences"

    def __str__(self) -> str:
        return f"Preferences of user {self.user_id}"
