"""Writes to the audit trail: `audit_record` (the one hook every feature calls) and checkpoints.

Call `audit_record(...)` inside the transaction of the change it records, as the last write:
the event then commits or rolls back with the change. A denial that rolls its transaction
back is recorded after the rollback, in a transaction of its own.

Writers are serialised so the chain never forks: on PostgreSQL by a transaction-scoped
advisory lock taken just before reading the chain's head; on SQLite by the database's single
writer (transactions begin IMMEDIATE). The primary key on `sequence` and the unique `hash`
are the last line of defence.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal, overload

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Model
from django.utils import timezone

from audit import chain, personal
from audit import context as audit_context
from audit.catalogue import AuditAction, AuditOutcome, TargetType
from audit.models import AuditAnchor, AuditCheckpoint, AuditEvent
from enterprise_ai import ratelimit
from observability import metrics

logger = logging.getLogger(__name__)

# pg_advisory_xact_lock key for the chain head ("audit" in ASCII).
CHAIN_LOCK_KEY = 0x6175646974
DETAILS_MAX_BYTES = 16_384

_FROM_CONTEXT: Any = object()

TargetLike = Model | tuple[str, Any] | None

_TARGET_TYPES = {
    "accounts.user": TargetType.USER,
    "accounts.apikey": TargetType.API_KEY,
    "conversations.conversation": TargetType.CONVERSATION,
    "conversations.message": TargetType.MESSAGE,
    "providers.aimodel": TargetType.MODEL,
    "auth.group": TargetType.GROUP,
    "costs.budget": TargetType.BUDGET,
    "costs.modelprice": TargetType.PRICE,
    "audit.auditevent": TargetType.AUDIT_EVENT,
}


def target_of(target: TargetLike) -> tuple[str, str, dict[str, Any]]:
    """(target_type, target_id, extra details) for a model instance or a (type, id) pair."""
    if target is None:
        return "", "", {}
    if isinstance(target, tuple):
        given_type, given_id = target
        return str(given_type), str(given_id)[:64], {}
    label = target._meta.label_lower
    ident = getattr(target, "public_id", None) or target.pk
    kind: str | None = _TARGET_TYPES.get(label)
    if kind is None:
        return TargetType.OTHER, str(ident)[:64], {"model": label}
    return kind, str(ident)[:64], {}


def _lock_chain() -> None:
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [CHAIN_LOCK_KEY])


def _head() -> tuple[int, str]:
    head = AuditEvent.objects.order_by("-sequence").values_list("sequence", "hash").first()
    return head if head is not None else (0, chain.GENESIS_HASH)


@dataclass(frozen=True)
class EventSpec:
    """An event to append, before it has a sequence number and hash."""

    action: str
    outcome: str = AuditOutcome.SUCCESS
    actor: Any = None
    ip: str | None = None
    user_agent: str = ""
    session_hash: str = ""
    request_id: str = ""
    target_type: str = ""
    target_id: str = ""
    details: Mapping[str, Any] | None = None
    # Erasure (audit/personal.py): the pk of the person the event is about, whose key seals
    # the personal details keys; the actor's own fields are sealed under the actor's key.
    subject_id: int | None = None


def _build(spec: EventSpec, *, sequence: int, prev_hash: str, now: datetime) -> AuditEvent:
    details = chain.normalise_details(spec.details)
    if len(json.dumps(details)) > DETAILS_MAX_BYTES:
        # Details are for facts (ids, field names, counts), never for payloads.
        details = {"truncated": True, "keys": sorted(details)[:50]}
    actor = spec.actor
    fields: dict[str, Any] = {
        "sequence": sequence,
        "occurred_at": now,
        "actor_id": actor.pk if actor is not None else None,
        "actor_email": (actor.email or "").lower()[:254] if actor is not None else "",
        "ip": spec.ip,
        "user_agent": spec.user_agent[: audit_context.USER_AGENT_MAX],
        "session_hash": spec.session_hash,
        "request_id": spec.request_id[:64],
        "action": str(spec.action),
        "target_type": str(spec.target_type),
        "target_id": str(spec.target_id)[:64],
        "outcome": str(spec.outcome),
        "details": details,
        "prev_hash": prev_hash,
    }
    # Erasure: personal fields sealed under their person's key before hashing.
    personal.seal_fields(fields, actor_id=fields["actor_id"], subject_id=spec.subject_id)
    return AuditEvent(**fields, hash=chain.event_hash(fields))


def _denial_sampled(*, action: str, actor: Any, ip: str | None) -> dict[str, Any] | None:
    """Whether a denied event may be written: at most AUDIT_DENIALS_PER_MINUTE of one action
    per person (or, when anonymous, per address) per minute.

    Denials are what an attacker can cause at will, often without signing in (refused
    handshakes), and the trail is append-only: uncapped, they would be a way to fill the
    database for good. Returns None to skip the event, {} to write it as is, or the details
    to add to the one event that says that further denials of the minute are not recorded.
    """
    limit = settings.AUDIT_DENIALS_PER_MINUTE
    if not limit:
        return {}
    source = f"user:{actor.pk}" if actor is not None else f"ip:{ip or 'unknown'}"
    decision = ratelimit.hit(f"audit:denied:{action}:{source}", limit=limit, window_seconds=60)
    if decision.allowed:
        return {}
    if decision.first_refusal:
        return {"further_denials_unrecorded_for_seconds": decision.retry_after}
    return None


@overload
def audit_record(
    *,
    action: AuditAction | str,
    actor: Any = ...,
    target: TargetLike = ...,
    outcome: Literal[AuditOutcome.SUCCESS, AuditOutcome.FAILED] = ...,
    details: Mapping[str, Any] | None = ...,
    context: audit_context.AuditContext | None = ...,
) -> AuditEvent: ...


@overload
def audit_record(
    *,
    action: AuditAction | str,
    actor: Any = ...,
    target: TargetLike = ...,
    outcome: AuditOutcome | str,
    details: Mapping[str, Any] | None = ...,
    context: audit_context.AuditContext | None = ...,
) -> AuditEvent | None: ...


def audit_record(
    *,
    action: AuditAction | str,
    actor: Any = _FROM_CONTEXT,
    target: TargetLike = None,
    outcome: AuditOutcome | str = AuditOutcome.SUCCESS,
    details: Mapping[str, Any] | None = None,
    context: audit_context.AuditContext | None = None,
) -> AuditEvent | None:
    """Append one event to the chain and return it.

    `actor` defaults to the person of the current request or socket (`context` or the bound
    one); pass `actor=None` for anonymous or system events. `details` holds facts — ids, field
    names, counts — never message text, passwords or secrets. Raises nothing of its own;
    database errors propagate so the change being recorded rolls back with the event.

    Denied events are capped per person or address (`_denial_sampled`): past the cap in a
    minute, one event says so and the rest return None unwritten.
    """
    ctx = context or audit_context.current()
    actor = ctx.actor if actor is _FROM_CONTEXT else actor
    target_type, target_id, extra = target_of(target)
    if str(outcome) == AuditOutcome.DENIED:
        sampled = _denial_sampled(action=str(action), actor=actor, ip=ctx.ip)
        if sampled is None:
            return None
        extra = {**extra, **sampled}
    spec = EventSpec(
        action=action,
        outcome=outcome,
        actor=actor,
        ip=ctx.ip,
        user_agent=ctx.user_agent,
        session_hash=ctx.session_hash,
        request_id=ctx.request_id,
        target_type=target_type,
        target_id=target_id,
        details={**extra, **(details or {})},
        subject_id=personal.subject_of(target),
    )
    started = time.perf_counter()
    with transaction.atomic():
        _lock_chain()
        sequence, prev_hash = _head()
        event = _build(spec, sequence=sequence + 1, prev_hash=prev_hash, now=timezone.now())
        event.save()
    metrics.audit_written(action=str(action), seconds=time.perf_counter() - started)
    return event


def audit_record_batch(specs: Iterable[EventSpec], *, batch_size: int = 2000) -> int:
    """Append many events in one transaction (imports, load tests). Returns how many.

    Each event is chained exactly as `audit_record` would chain it, and the whole batch
    holds the chain lock, so the chain stays linear.
    """
    count = 0
    with transaction.atomic():
        _lock_chain()
        sequence, prev_hash = _head()
        pending: list[AuditEvent] = []
        for spec in specs:
            sequence += 1
            event = _build(spec, sequence=sequence, prev_hash=prev_hash, now=timezone.now())
            prev_hash = event.hash
            pending.append(event)
            if len(pending) >= batch_size:
                AuditEvent.objects.all()._chain_bulk_create(pending, batch_size=batch_size)
                count += len(pending)
                pending = []
        if pending:
            AuditEvent.objects.all()._chain_bulk_create(pending, batch_size=batch_size)
            count += len(pending)
    return count


# --- Checkpoints ------------------------------------------------------------------------------


def checkpoint_create() -> AuditCheckpoint:
    """Sign the chain's current head and store the checkpoint; then copy it to S3 if set up.

    Written even when nothing happened since the last one: a run of checkpoints with the
    same head proves the trail was quiet, not cut. Raises ImproperlyConfigured without a
    signing key. The S3 copy is best effort here; anchors that fail are retried next time.
    """
    key = chain.signing_key()
    kid = chain.key_id(key)
    with transaction.atomic():
        _lock_chain()
        sequence, head_hash = _head()
        signed_at = timezone.now()
        checkpoint = AuditCheckpoint(
            signed_at=signed_at,
            sequence=sequence,
            head_hash=head_hash,
            key_id=kid,
            signature=chain.checkpoint_signature(
                key, sequence=sequence, head_hash=head_hash, signed_at=signed_at, kid=kid
            ),
        )
        checkpoint.save()
    if settings.AUDIT_ANCHOR_S3_BUCKET:
        anchor_pending()
    return checkpoint


def checkpoint_document(checkpoint: AuditCheckpoint) -> dict[str, Any]:
    """What is written outside the database for a checkpoint (and read back to verify)."""
    return {
        "format": "enterprise-ai-audit-checkpoint/1",
        "checkpoint_id": checkpoint.pk,
        "sequence": checkpoint.sequence,
        "head_hash": checkpoint.head_hash,
        "signed_at": chain.timestamp(checkpoint.signed_at),
        "key_id": checkpoint.key_id,
        "signature": checkpoint.signature,
    }


def anchor_key(checkpoint: AuditCheckpoint) -> str:
    # The zero-padded sequence first, so listing the prefix returns anchors in chain order.
    return f"{settings.AUDIT_ANCHOR_S3_PREFIX}{checkpoint.sequence:020d}-{checkpoint.pk:012d}.json"


def anchor_pending(*, limit: int = 100) -> int:
    """Copy checkpoints not yet anchored to S3 with Object Lock. Returns how many succeeded.

    Failures are logged (without credentials) and left for the next run.
    """
    from audit import anchors

    pending = AuditCheckpoint.objects.filter(anchor__isnull=True).order_by("id")[:limit]
    done = 0
    for checkpoint in pending:
        retain_until = timezone.now() + timedelta(days=settings.AUDIT_ANCHOR_RETENTION_DAYS)
        try:
            version_id = anchors.put_checkpoint(
                key=anchor_key(checkpoint),
                document=checkpoint_document(checkpoint),
                retain_until=retain_until,
            )
        except anchors.AnchorError as exc:
            logger.warning("audit checkpoint %s not anchored: %s", checkpoint.pk, exc)
            break
        AuditAnchor(
            checkpoint=checkpoint,
            anchored_at=timezone.now(),
            bucket=settings.AUDIT_ANCHOR_S3_BUCKET,
            key=anchor_key(checkpoint),
            version_id=version_id,
            retain_until=retain_until,
        ).save()
        done += 1
    return done


def audit_chain_verify(*, anchors: bool = False) -> Any:
    """Verify the whole chain (audit.verify) and record that it was verified, with the result.

    Returns the VerifyReport. Raises audit.anchors.AnchorError when S3 cannot be read.
    """
    from audit.verify import verify_chain

    report = verify_chain(anchors=anchors)
    audit_record(
        action=AuditAction.CHAIN_VERIFIED,
        target=(TargetType.AUDIT_TRAIL, "chain"),
        outcome=AuditOutcome.SUCCESS if report.ok else AuditOutcome.FAILED,
        details=report.as_details(),
    )
    return report
