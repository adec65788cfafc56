"""Key rotation: re-wrap data keys under the current master key, or move stored text to fresh
data keys. Bounded batches, each committed with its own audit event (counts, never keys).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from django.db import models, transaction
from django.utils import timezone

from audit.catalogue import AuditAction, AuditOutcome
from audit.governed import governed_writes
from audit.services import audit_record
from protection import datakeys, keyring
from protection.aead import ProtectionError
from protection.fields import EncryptedJSONField, EncryptedTextField, unreadable_code
from protection.models import DataKey

logger = logging.getLogger("protection")

DEFAULT_BATCH = 200


@dataclass
class RotationReport:
    master_key: str = ""
    rewrapped: int = 0
    already_current: int = 0
    failed: list[str] = field(default_factory=list)  # data key ids (public names, not keys)
    retired: int = 0
    rows: int = 0
    unreadable: int = 0


def data_keys_rewrap(*, batch_size: int = DEFAULT_BATCH) -> RotationReport:
    """Re-wrap every data key not yet under the current master key; idempotent (keys already
    under it are left alone). Each batch commits with an `encryption.keys_rotated` event.

    A key whose master key is unavailable or whose wrapped form does not authenticate is
    left unchanged and reported in `failed`. Raises KeyUnavailableError when the current
    master key itself cannot be used.
    """
    report = RotationReport(master_key=keyring.current_master_key_id())
    report.already_current = DataKey.objects.filter(master_key_id=report.master_key).count()
    last = 0
    while True:
        batch = list(
            DataKey.objects.exclude(master_key_id=report.master_key)
            .filter(pk__gt=last)
            .order_by("pk")[:batch_size]
        )
        if not batch:
            break
        last = batch[-1].pk
        done = 0
        failed: list[str] = []
        with transaction.atomic():
            for data_key in batch:
                try:
                    new = keyring.rewrap(
                        datakeys.wrapped_of(data_key), purpose=datakeys.wrap_purpose(data_key)
                    )
                except ProtectionError as exc:
                    logger.error("data key %s not re-wrapped (%s)", data_key.key_id, exc.code)
                    failed.append(data_key.key_id)
                    continue
                # Only if nobody re-wrapped it meanwhile: a concurrent run stays harmless.
                done += DataKey.objects.filter(
                    pk=data_key.pk, master_key_id=data_key.master_key_id
                ).update(
                    master_key_id=new.master_key_id, wrapped=new.blob, rotated_at=timezone.now()
                )
            _audit("rewrap", report.master_key, failed, rewrapped=done, failed=len(failed))
        report.rewrapped += done
        report.failed += failed
    if not report.rewrapped and not report.failed:
        with transaction.atomic():
            _audit("rewrap", report.master_key, [], rewrapped=0, failed=0)
    return report


def _audit(step: str, master_key: str, problems: list[str], **counts: int | str) -> None:
    audit_record(
        action=AuditAction.ENCRYPTION_KEYS_ROTATED,
        actor=None,
        outcome=AuditOutcome.FAILED if problems else AuditOutcome.SUCCESS,
        details={"step": step, "master_key": master_key, **counts},
    )


def _encrypted_columns() -> list[tuple[type[models.Model], list[str]]]:
    """Every model with encrypted fields, and those fields."""
    from django.apps import apps

    found = []
    for model in apps.get_models():
        names = [
            f.name
            for f in model._meta.concrete_fields
            if isinstance(f, EncryptedTextField | EncryptedJSONField)
        ]
        if names:
            found.append((model, names))
    return found


def transcripts_reencrypt(
    *, batch_size: int = DEFAULT_BATCH, progress: Callable[[str], Any] | None = None
) -> RotationReport:
    """Retire the active transcript data keys and seal every stored value again under fresh
    ones, in batches (each committed with its audit event). Rows that cannot be opened are
    left as they are and counted in `unreadable`. Raises KeyUnavailableError when the
    current master key cannot be used.
    """
    report = RotationReport(master_key=keyring.current_master_key_id())
    with transaction.atomic():
        report.retired = DataKey.objects.filter(
            purpose=datakeys.TRANSCRIPTS, retired_at__isnull=True
        ).update(retired_at=timezone.now())
        _audit("retire", report.master_key, [], retired=report.retired)
    datakeys.clear_cache()
    for model, names in _encrypted_columns():
        last = 0
        while True:
            batch = list(
                model._default_manager.filter(pk__gt=last)
                .order_by("pk")
                .only("pk", *names)[:batch_size]
            )
            if not batch:
                break
            last = batch[-1].pk
            unreadable = sum(
                1 for row in batch for name in names if unreadable_code(getattr(row, name))
            )
            with (
                transaction.atomic(),
                governed_writes(reason="re-encryption: recorded as encryption.keys_rotated"),
            ):
                model._default_manager.bulk_update(batch, names)
                _audit(
                    "reencrypt",
                    report.master_key,
                    ["unreadable"] if unreadable else [],
                    model=model._meta.label_lower,
                    rows=len(batch),
                    unreadable=unreadable,
                )
            report.rows += len(batch)
            report.unreadable += unreadable
            if progress:
                progress(f"{model._meta.label}: {report.rows} rows")
    return report
