"""Data keys, stored only in wrapped form (docs/data-protection.md, "Encryption at rest")."""

from __future__ import annotations

import secrets

from django.db import models


def new_key_id() -> str:
    """A data key's public name, written into every blob it seals. Random, never reused."""
    return "dk_" + secrets.token_hex(8)


class DataKey(models.Model):
    """One data key: 256 bits that encrypt stored text, wrapped by a master key.

    Transcripts get one data key per calendar month of writing (`period` "2026-12"); a
    retired key (`retired_at`, after `rotate_encryption_keys --reencrypt`) no longer seals
    anything new but still opens what it sealed. The plaintext key is never stored.
    """

    key_id = models.CharField(max_length=32, unique=True, default=new_key_id, editable=False)
    purpose = models.CharField(max_length=64, help_text="What the key encrypts.")
    period = models.CharField(max_length=16, help_text="The month it seals writes of.")
    master_key_id = models.CharField(
        max_length=2048,
        help_text="The master key that wraps it (local:<fingerprint> or kms:<ARN>).",
    )
    wrapped = models.BinaryField()
    created_at = models.DateTimeField(auto_now_add=True)
    rotated_at = models.DateTimeField(
        null=True, blank=True, help_text="Last re-wrapped under a new master key."
    )
    retired_at = models.DateTimeField(
        null=True, blank=True, help_text="No longer seals new values (still opens old ones)."
    )

    class Meta:
        constraints = [
            # One active key per purpose and month, however many processes race to create it.
            models.UniqueConstraint(
                fields=["purpose", "period"],
                condition=models.Q(retired_at__isnull=True),
                name="datakey_one_active_per_period",
            ),
        ]
        indexes = [models.Index(fields=["master_key_id"], name="datakey_master_idx")]

    def __str__(self) -> str:
        return f"{self.key_id} ({self.purpose} {self.period})"
