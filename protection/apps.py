from django.apps import AppConfig


class ProtectionConfig(AppConfig):
    """Encryption at rest: sealed blobs, master keys (local file or AWS KMS), data keys."""

    default_auto_field = "django.db.models.BigAutoField"
    name = "protection"
    verbose_name = "Data protection"
