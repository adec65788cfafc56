"""The audit trail: append-only, hash-chained events and signed checkpoints of the chain.

Append-only is enforced three times over: these models refuse update and delete in Python
(instances and querysets), a PostgreSQL trigger refuses UPDATE and DELETE on the tables
(migration 0002), and the admin grants no change or delete permission to anyone. Rows are
written only by `audit.services` (which hashes and chains them); see docs/audit.md.
"""

from __future__ import annotations

from typing import Any, NoReturn

from django.conf import settings
from django.db import models

from audit.catalogue import AuditAction, AuditOutcome, TargetType


class AppendOnlyError(Exception):
    """Raised on any attempt to change or delete an audit record."""


def _refuse(*args: Any, **kwargs: Any) -> NoReturn:
    raise AppendOnlyError("Audit records are append-only: they cannot be changed or deleted.")


class AppendOnlyQuerySet(models.QuerySet):
    """Reads only. Rows are added by audit.services, never updated or deleted in bulk."""

    update = _refuse
    delete = _refuse
    bulk_update = _refuse
    update_or_create = _refuse

    bulk_create = _refuse

    def _chain_bulk_create(self, objs: list[Any], *, batch_size: int) -> list[Any]:
        """Insert rows already hashed into the chain (audit.services only)."""
        return super().bulk_create(objs, batch_size=batch_size)


class AppendOnlyModel(models.Model):
    objects = AppendOnlyQuerySet.as_manager()

    class Meta:
        abstract = True

    def save(self, *args: Any, **kwargs: Any) -> None:
        if not self._state.adding or kwargs.get("force_update") or kwargs.get("update_fields"):
            _refuse()
        kwargs["force_insert"] = True
        super().save(*args, **kwargs)

    def delete(self, *args: Any, **kwargs: Any) -> NoReturn:
        _refuse()


class AuditEvent(AppendOnlyModel):
    """One security-relevant event. `sequence` numbers the chain from 1 without gaps."""

    sequence = models.PositiveBigIntegerField(primary_key=True)
    occurred_at = models.DateTimeField(db_index=True)
    # PROTECT: people with audit history are deactivated, never deleted.
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="+",
        db_index=False,  # covered by the (actor, occurred_at) index
    )
    # The actor's e-mail at the time (lower case), kept even if the account changes. Sealed
    # with the address under the actor's key (audit/personal.py): then it holds the
    # ciphertext ("sealed:v1:…", at most ~2,250 characters, under the b-tree entry limit)
    # and `ip` is empty. Read both through audit.personal.reveal.
    actor_email = models.CharField(max_length=2400, blank=True)
    ip = models.GenericIPAddressField(null=True, blank=True)
    user_agent = models.CharField(max_length=512, blank=True)
    # A keyed hash of the session key: links events of one session, never reveals the key.
    session_hash = models.CharField(max_length=64, blank=True)
    request_id = models.CharField(max_length=64, blank=True)
    action = models.CharField(max_length=64, choices=AuditAction.choices)
    target_type = models.CharField(max_length=32, choices=TargetType.choices, blank=True)
    target_id = models.CharField(max_length=64, blank=True)
    outcome = models.CharField(
        max_length=16, choices=AuditOutcome.choices, default=AuditOutcome.SUCCESS
    )
    details = models.JSONField(default=dict, blank=True)
    prev_hash = models.CharField(max_length=64)
    hash = models.CharField(max_length=64, unique=True)
    # Which chain key hashed the event (format 2, HMAC); empty for format 1 (plain SHA-256,
    # events written before the keyed chain). Covered by the hash. See audit.chain.
    key_id = models.CharField(max_length=16, blank=True, default="")

    class Meta:
        ordering = ["-sequence"]
        indexes = [
            models.Index(fields=["action", "-occurred_at"], name="audit_action_time_idx"),
            models.Index(fields=["actor", "-occurred_at"], name="audit_actor_time_idx"),
            models.Index(fields=["target_type", "target_id"], name="audit_target_idx"),
            models.Index(fields=["actor_email"], name="audit_actor_email_idx"),
            models.Index(fields=["ip"], name="audit_ip_idx"),
            models.Index(fields=["request_id"], name="audit_request_idx"),
        ]
        permissions = [
            ("export_auditevent", "Can export audit events"),
            ("verify_auditevent", "Can verify the audit chain"),
        ]

    def __str__(self) -> str:
        return f"#{self.sequence} {self.action} ({self.outcome})"


class AuditCheckpoint(AppendOnlyModel):
    """A signed statement "at `signed_at` the chain ended at `sequence` with `head_hash`".

    The HMAC key is not in the database, so whoever can rewrite the table cannot forge a
    checkpoint without also holding the key. A checkpoint is written on schedule even when
    no event happened; sequence 0 with an all-zero hash means an empty chain.
    """

    signed_at = models.DateTimeField(db_index=True)
    sequence = models.PositiveBigIntegerField()
    head_hash = models.CharField(max_length=64)
    key_id = models.CharField(max_length=16, help_text="Which HMAC key signed it.")
    signature = models.CharField(max_length=64)

    class Meta:
        ordering = ["-id"]
        indexes = [models.Index(fields=["sequence"], name="audit_checkpoint_seq_idx")]

    def __str__(self) -> str:
        return f"Checkpoint at #{self.sequence} ({self.signed_at:%Y-%m-%d %H:%M:%S})"


class AuditAnchor(AppendOnlyModel):
    """Where a checkpoint was copied outside the database (S3 with Object Lock)."""

    checkpoint = models.OneToOneField(
        AuditCheckpoint, on_delete=models.PROTECT, related_name="anchor"
    )
    anchored_at = models.DateTimeField()
    bucket = models.CharField(max_length=255)
    key = models.CharField(max_length=1024)
    version_id = models.CharField(max_length=1024, blank=True)
    retain_until = models.DateTimeField()

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


class PendingQuerySet(models.QuerySet):
    """Reads only, plus the chainer's delete of the rows it has just moved into the chain."""

    update = _refuse
    delete = _refuse
    bulk_update = _refuse
    update_or_create = _refuse

    def _chained_delete(self) -> int:
        """Delete rows already copied into the chain (audit.services' chainer only)."""
        return int(self._raw_delete(self.db))


class PendingAuditEvent(models.Model):
    """An event recorded in its change's transaction and not yet linked into the chain.

    On PostgreSQL `audit_record` writes here, without taking the chain lock, so concurrent
    transactions commit side by side; the chainer (`audit.services.audit_chain_pending`)
    then moves committed rows into `AuditEvent` in `id` order, giving each its sequence and
    hash, and deletes them in the same transaction. Rows live here for milliseconds. The
    table is append-only but for that delete: a PostgreSQL trigger refuses UPDATE and
    TRUNCATE, and DELETE unless the deleting session holds the chain lock (migration
    0008); see docs/audit.md, "Write path".
    """

    id = models.BigAutoField(primary_key=True)
    occurred_at = models.DateTimeField()
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="+",
        db_index=False,  # read only by id, in order
    )
    ip = models.GenericIPAddressField(null=True, blank=True)
    user_agent = models.CharField(max_length=512, blank=True)
    session_hash = models.CharField(max_length=64, blank=True)
    request_id = models.CharField(max_length=64, blank=True)
    action = models.CharField(max_length=64)
    target_type = models.CharField(max_length=32, blank=True)
    target_id = models.CharField(max_length=64, blank=True)
    outcome = models.CharField(max_length=16)
    details = models.JSONField(default=dict, blank=True)
    # The person the event is about (audit.personal.subject_of), whose key seals its personal
    # details when it is chained. A plain id, not a key: it must not hold the person's row.
    subject_id = models.BigIntegerField(null=True, blank=True)

    objects = PendingQuerySet.as_manager()

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return f"pending {self.id} {self.action} ({self.outcome})"


class SubjectKey(models.Model):
    """A person's key for the personal fields of their audit events (audit/personal.py).

    A random data key wrapped by the product's master key (protection.keyring); never
    stored in clear. Erasure destroys it (`wrapped_key` emptied, `destroyed_at` set): the
    sealed fields stay in the chain and can no longer be read. Not append-only, on purpose.
    """

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="subject_key"
    )
    master_key_id = models.CharField(max_length=200, blank=True)
    wrapped_key = models.BinaryField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    destroyed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = "person's audit key"

    def __str__(self) -> str:
        state = "destroyed" if self.wrapped_key is None else "active"
        return f"Audit key of user #{self.user_id} ({state})"
