"""The user model. Custom from the first migration so that later fields need no swap."""

from __future__ import annotations

import uuid
from typing import Any

from django.contrib.auth.models import AbstractUser
from django.contrib.sessions.base_session import AbstractBaseSession
from django.core.exceptions import ValidationError
from django.core.validators import MinValueValidator
from django.db import models, transaction
from django.db.models.functions import Lower

from audit.governed import GovernedUserManager


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
    # A service account is a User so that keys acting for it get the same model access,
    # budgets (its department is its first non-role group, as costs.services.department_of
    # finds it), guardrails and audit identity as a person. It never signs in interactively:
    # the sign-in form refuses it (accounts/forms.py); it acts only through its API keys.
    is_service_account = models.BooleanField(
        default=False,
        help_text="A service account acts only through API keys and cannot sign in. Put it "
        "in one department (group) so its keys spend that department's budget.",
    )

    # Erased on a privacy request (accounts/erasure.py): names, e-mail and content are gone,
    # the account is a placeholder `erased-<id>` kept for the ledger and the audit trail.
    erased_at = models.DateTimeField(null=True, blank=True, editable=False)
    # Queryset writes are audited unless a service that audits them says so (audit.governed).
    objects = GovernedUserManager()  # type: ignore[misc]

    class Meta(AbstractUser.Meta):
        swappable = "AUTH_USER_MODEL"
        permissions = [
            ("access_console", "Can open the console (the admin)"),
            ("manage_legal_hold", "Can place and release legal holds on people"),
            ("erase_person", "Can erase a person's personal data (privacy requests)"),
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


class ApiKey(models.Model):
    """A key an integrator uses to call the API as its owner (a person or a service account).

    The key is `eai_<prefix8>_<secret>`: `prefix` (`eai_<prefix8>`) is stored in clear, unique
    and indexed, and identifies the key in lists and logs; only a hash of the whole key is kept
    (accounts/api_keys.py). The key is shown once, when it is created. Writes go through
    accounts/api_keys.py, which audits them.

    `rate_limit_per_minute` replaces API_KEY_REQUESTS_PER_MINUTE for this key. A key's own
    budgets are costs.Budget rows with scope "api_key"; the owner's budgets and model access
    apply to every call in any case.
    """

    class Scope(models.TextChoices):
        CHAT = "chat", "Chat with approved models"
        CONVERSATIONS_READ = "conversations:read", "Read the owner's conversations"
        CONVERSATIONS_WRITE = "conversations:write", "Create, rename and delete conversations"
        MODELS_READ = "models:read", "List the models the owner may use"
        USAGE_READ = "usage:read", "Read the owner's usage and spend"

    public_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    owner = models.ForeignKey(User, on_delete=models.PROTECT, related_name="api_keys")
    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=16, unique=True, editable=False)
    secret_hash = models.CharField(max_length=64, editable=False)
    scopes = models.JSONField(default=list)
    created_at = models.DateTimeField(auto_now_add=True)
    created_by = models.ForeignKey(
        User, null=True, blank=True, on_delete=models.PROTECT, related_name="+", editable=False
    )
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True, editable=False)
    revoked_by = models.ForeignKey(
        User, null=True, blank=True, on_delete=models.PROTECT, related_name="+", editable=False
    )
    # When the key's expiry was first recorded in the audit trail (on its first use after).
    expiry_recorded_at = models.DateTimeField(null=True, blank=True, editable=False)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    last_used_ip = models.GenericIPAddressField(null=True, blank=True, editable=False)
    rate_limit_per_minute = models.PositiveIntegerField(
        null=True,
        blank=True,
        validators=[MinValueValidator(1)],
        help_text="Requests per minute for this key, every endpoint counted; empty: "
        "API_KEY_REQUESTS_PER_MINUTE.",
    )

    class Meta:
        verbose_name = "API key"
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["owner", "-created_at"], name="accounts_apikey_owner_idx"),
            models.Index(fields=["-created_at"], name="accounts_apikey_created_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    def clean(self) -> None:
        allowed = set(self.Scope.values)
        if not isinstance(self.scopes, list) or not self.scopes:
            raise ValidationError({"scopes": "Choose at least one scope."})
        unknown = [scope for scope in self.scopes if scope not in allowed]
        if unknown:
            raise ValidationError({"scopes": f"Unknown scopes: {', '.join(map(str, unknown))}."})

    @property
    def is_revoked(self) -> bool:
        return self.revoked_at is not None

    def is_expired(self, now: Any = None) -> bool:
        from django.utils import timezone

        return self.expires_at is not None and self.expires_at <= (now or timezone.now())
