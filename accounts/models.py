"""The user model. Custom from the first migration so that later fields need no swap."""

from __future__ import annotations

import uuid
from typing import Any

from django.contrib.auth.models import AbstractUser
from django.contrib.sessions.base_session import AbstractBaseSession
from django.db import models, transaction
from django.db.models.functions import Lower


class User(AbstractUser):
    """A member of staff. `public_id` is the only identifier that leaves the server."""

    public_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    # Set and released by compliance officers only (audited); retention must skip held users.
    legal_hold = models.BooleanField(
        default=False,
        editable=False,
        help_text="Under legal hold: this person's records must be kept whatever the "
        "retention rules say.",
    )
    legal_hold_since = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta(AbstractUser.Meta):
        swappable = "AUTH_USER_MODEL"
        permissions = [
            ("access_console", "Can open the console (the admin)"),
            ("manage_legal_hold", "Can place and release legal holds on people"),
        ]
        constraints = [
            models.UniqueConstraint(
                Lower("email"),
                condition=~models.Q(email=""),
                name="accounts_user_email_ci_unique",
                violation_error_message="A user with this e-mail address already exists.",
            ),
        ]

    @classmethod
    def from_db(cls, *args: Any, **kwargs: Any) -> Any:
        instance: Any = super().from_db(*args, **kwargs)
        # Whether it was active when read: deactivating ends the person's sessions
        # (accounts/receivers.py).
        if "is_active" in instance.__dict__:
            instance._was_active = instance.is_active
        return instance

    def save(self, *args: Any, **kwargs: Any) -> None:
        # A new password on an existing account is a security event; a first one is not.
        password_changed = getattr(self, "_password", None) is not None and not self._state.adding
        with transaction.atomic():
            super().save(*args, **kwargs)
            if password_changed:
                from audit.catalogue import AuditAction
                from audit.services import audit_record

                audit_record(action=AuditAction.PASSWORD_CHANGED, target=self)


class UserSession(AbstractBaseSession):
    """A server-side session that also records whose it is (SESSION_ENGINE accounts.session_store).

    Django's own session table cannot be searched by user without decoding every row; this
    indexed column lets "end all of this person's sessions" be one DELETE on SQLite and
    PostgreSQL alike. It is kept up to date on every save, key cycling included.
    """

    user_id = models.BigIntegerField(null=True, db_index=True)

    class Meta:
        verbose_name = "session"

    @classmethod
    def get_session_store_class(cls) -> type[Any]:
        from accounts.session_store import SessionStore

        return SessionStore
