"""The user model. Custom from the first migration so that later fields need no swap."""

from __future__ import annotations

import uuid
from typing import Any

from django.contrib.auth.models import AbstractUser
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

    def save(self, *args: Any, **kwargs: Any) -> None:
        # A new password on an existing account is a security event; a first one is not.
        password_changed = getattr(self, "_password", None) is not None and not self._state.adding
        with transaction.atomic():
            super().save(*args, **kwargs)
            if password_changed:
                from audit.catalogue import AuditAction
                from audit.services import audit_record

                audit_record(action=AuditAction.PASSWORD_CHANGED, target=self)
