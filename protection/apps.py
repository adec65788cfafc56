import logging

from django.apps import AppConfig
from django.conf import settings

logger = logging.getLogger("protection")


class ProtectionConfig(AppConfig):
    """Encryption at rest: sealed blobs, master keys (local file or AWS KMS), data keys."""

    default_auto_field = "django.db.models.BigAutoField"
    name = "protection"
    verbose_name = "Data protection"

    def ready(self) -> None:
        if getattr(settings, "ENCRYPTION_MASTER_KEY_DERIVED", False):
            logger.warning(
                "Encryption at rest: the master key is derived from AUDIT_HMAC_KEY, since "
                "neither ENCRYPTION_MASTER_KEY nor ENCRYPTION_KMS_KEY_ID is set. Whoever holds "
                "the audit key can also read transcripts; set one of them to keep the two "
                "apart (docs/data-protection.md, 'Keys and KMS')."
            )
