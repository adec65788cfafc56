"""manage.py audit_checkpoint — sign the audit chain's head now (the scheduler does it too)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from audit.services import checkpoint_create


class Command(BaseCommand):
    help = "Sign the audit chain's current head with AUDIT_HMAC_KEY and store the checkpoint."

    def handle(self, *args: Any, **options: Any) -> None:
        checkpoint = checkpoint_create()
        anchored = " and anchored in S3" if hasattr(checkpoint, "anchor") else ""
        self.stdout.write(
            f"Checkpoint {checkpoint.pk}: head #{checkpoint.sequence} "
            f"({checkpoint.head_hash[:16]}…) signed{anchored}."
        )
