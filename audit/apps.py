from django.apps import AppConfig


class AuditConfig(AppConfig):
    name = "audit"
    verbose_name = "Audit trail"

    def ready(self) -> None:
        from audit import (
            governed,
            receivers,  # noqa: F401  (connects the sign-in signals)
        )

        governed.install()
