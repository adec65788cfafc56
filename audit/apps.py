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

        from django.db.models.signals import post_migrate

        from enterprise_ai import db_role

        # The application role of DATABASE_PRIVILEGED_ROLE=demote, after every migrate.
        post_migrate.connect(db_role.grant_after_migrate, sender=self)
