"""Writes to the audit trail: `audit_record` (the one hook every feature calls) and checkpoints.

Call `audit_record(...)` inside the transaction of the change it records, as the last write:
the event then commits or rolls back with the change. A denial that rolls its transaction
back is recorded after the rollback, in a transaction of its own.

Two write paths (AUDIT_WRITE_PATH; docs/audit.md, "Write path"):

- deferred (the default on PostgreSQL): `audit_record` inserts the event into
  `PendingAuditEvent` in the caller's transaction, without any lock, so concurrent
  transactions commit side by side. Right after the commit (`transaction.on_commit`) the
  chainer, `audit_chain_pending`, moves committed pending rows into the chain in id order,
  in batches, under the chain lock (a try-lock: a writer never waits for it), and deletes
  them in the same transaction. The scheduler runs the same chainer as a sweep for rows a
  crashed process left behind.
- direct (the default on SQLite): `audit_record` chains the event itself, in the caller's
  transaction, under the chain lock.

Whoever appends to the chain holds the chain lock, so it never forks: on PostgreSQL a
transaction-scoped advisory lock taken just before reading the chain's head; on SQLite the
database's single writer (transactions begin IMMEDIATE). The primary key on `sequence` and
the unique `hash` are the last line of defence. `_build` is the one place that turns an
event spec into the hashed fields of a chained row.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal, overload

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Model, Subquery
from django.db.models.expressions import RawSQL
from django.utils import timezone

from audit import chain, personal
from audit import context as audit_context
from audit.catalogue import AuditAction, AuditOutcome, TargetType
from audit.models import AuditAnchor, AuditCheckpoint, AuditEvent, PendingAuditEvent
from enterprise_ai import ratelimit
from observability import metrics

logger = logging.getLogger(__name__)

# pg_advisory_xact_lock key for the chain head ("audit" in ASCII).
CHAIN_LOCK_KEY = 0x6175646974
DETAILS_MAX_BYTES = 16_384
# Pending events moved into the chain per transaction of the chainer, and how many such
# batches a writer's post-commit chainer runs before leaving the rest to the others (or to
# the sweep): under a sustained burst one writer must not keep chaining for everyone.
CHAIN_BATCH_SIZE = 1000
AFTER_COMMIT_MAX_BATCHES = 20

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
    "retention.retentionpolicy": TargetType.RETENTION_POLICY,
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
        # Issue 15 (keyed chain): the chain key that hashes the event, covered by the hash.
        "key_id": chain.current_chain_key()[0],
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
    """Record one event in the caller's transaction and return it.

    On the direct write path the returned event is chained: it has its `sequence` and
    `hash`. On the deferred path (PostgreSQL's default) it is the event as recorded, not yet
    linked: `sequence` is None and `hash` empty until the chainer links it, a moment after
    the commit; `pending_id` names its pending row. Either way it cannot be saved again.

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
    if _deferred():
        event = _record_pending(spec, now=timezone.now())
    else:
        with transaction.atomic():
            _lock_chain()
            sequence, prev_hash = _head()
            event = _build(spec, sequence=sequence + 1, prev_hash=prev_hash, now=timezone.now())
            event.save()
    metrics.audit_written(action=str(action), seconds=time.perf_counter() - started)
    return event


# --- Deferred write path: pending events and the chainer ------------------------------------


def _deferred() -> bool:
    path: str = settings.AUDIT_WRITE_PATH
    if path == "auto":
        return connection.vendor == "postgresql"
    return path == "deferred"


def _record_pending(spec: EventSpec, *, now: datetime) -> AuditEvent:
    """Insert the event, unchained, in the caller's transaction; chain it after the commit.

    No lock is taken, so transactions that record events commit concurrently. The row's
    columns hold the spec as given (cut to the columns' sizes); `_build` makes the chained
    row's fields from it later, exactly as it would have now.
    """
    actor = spec.actor
    values: dict[str, Any] = {
        "occurred_at": now,
        "actor_id": actor.pk if actor is not None else None,
        "ip": spec.ip,
        "user_agent": spec.user_agent[: audit_context.USER_AGENT_MAX],
        "session_hash": spec.session_hash,
        "request_id": spec.request_id[:64],
        "action": str(spec.action),
        "target_type": str(spec.target_type),
        "target_id": str(spec.target_id)[:64],
        "outcome": str(spec.outcome),
        "details": chain.normalise_details(spec.details),
        "subject_id": spec.subject_id,
    }
    pending_id = _pending_insert(values)
    _chain_after_commit()
    del values["actor_id"], values["subject_id"]
    event = AuditEvent(  # no sequence: not in the chain yet
        actor=actor,
        actor_email=(actor.email or "").lower()[:254] if actor is not None else "",
        prev_hash="",
        hash="",
        **values,
    )
    event._state.adding = False  # not a row to insert: saving it is refused (append-only)
    event.pending_id = pending_id  # type: ignore[attr-defined]
    return event


# The pending row's columns, in the order of `_pending_insert`'s statement.
_PENDING_FIELDS = tuple(
    field
    for field in PendingAuditEvent._meta.concrete_fields
    if not field.primary_key  # the id is the sequence's
)
_PENDING_SQL: dict[str, tuple[str, bool]] = {}


def _pending_insert(values: Mapping[str, Any]) -> int:
    """INSERT one pending row with one prepared statement; returns its id.

    The writer's hot path: every audited change pays for it inside its own transaction. A
    model `save()` costs about as much Python again as the statement itself (signals, the
    query compiler); this builds the statement once per database vendor and only adapts the
    values (each through its field, exactly as `save()` would).
    """
    vendor = connection.vendor
    if vendor not in _PENDING_SQL:
        quote = connection.ops.quote_name
        returning = bool(connection.features.can_return_columns_from_insert)
        # Built from the model's own table and column names only; values are parameters.
        sql = "INSERT INTO {} ({}) VALUES ({}){}".format(  # noqa: S608
            quote(PendingAuditEvent._meta.db_table),
            ", ".join(quote(str(field.column)) for field in _PENDING_FIELDS),
            ", ".join(["%s"] * len(_PENDING_FIELDS)),
            f" RETURNING {quote('id')}" if returning else "",
        )
        _PENDING_SQL[vendor] = (sql, returning)
    sql, returning = _PENDING_SQL[vendor]
    params = [
        field.get_db_prep_save(values[field.attname], connection) for field in _PENDING_FIELDS
    ]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        if returning:
            row = cursor.fetchone()
            return int(row[0])
        return int(cursor.lastrowid)


def _chain_after_commit() -> None:
    """Run the chainer once the current transaction commits (at once in autocommit mode);
    nothing if it rolls back. One callback per transaction, however many events it records."""
    if any(entry[1] is _chain_soon for entry in connection.run_on_commit):
        return
    transaction.on_commit(_chain_soon)


def _chain_soon() -> None:
    """The post-commit hook: on PostgreSQL it wakes this process's chainer thread and
    returns, so the request whose change just committed pays for its INSERT and COMMIT only,
    and the events that writers commit meanwhile are chained together in one batch. Elsewhere
    (SQLite with AUDIT_WRITE_PATH=deferred: tests) it chains at once. Never raises."""
    if connection.vendor == "postgresql":
        _chainer.wake()
        return
    _chain_now()


def _chain_now() -> None:
    try:
        audit_chain_pending(max_batches=AFTER_COMMIT_MAX_BATCHES)
    except Exception as exc:  # the rows stay pending: the next wake-up or the sweep chains them
        logger.warning("audit events left pending for the sweep: %s", type(exc).__name__)


EXIT_FLUSH_SECONDS = 10.0


def _chain_at_exit() -> None:
    # Waits for the chain lock (a chainer of another process may hold it), so what this
    # process committed is in the chain when it has exited, not left for the sweep (its
    # chainer may have found the lock taken by a chainer of a process that is exiting too).
    # Bounded: with the database unreachable the process still exits, and the sweep chains
    # what is left.
    def flush() -> None:
        try:
            audit_chain_flush()
        except Exception as exc:
            logger.warning("audit events left pending for the sweep: %s", type(exc).__name__)

    worker = threading.Thread(target=flush, name="audit-chainer-exit", daemon=True)
    worker.start()
    worker.join(EXIT_FLUSH_SECONDS)


def chainer_stop() -> None:
    """Forget this process's exit flush (a test run, before it drops its database)."""
    atexit.unregister(_chain_at_exit)


class _Chainer:
    """One daemon thread per process that links committed pending events into the chain.

    Started on the first wake-up in each process (again after a fork: Celery's prefork
    children, for instance). Wake-ups that arrive while it is chaining coalesce into one more
    pass, which `audit_chain_pending` repeats until nothing committed is left, so no event
    waits for the sweep unless the process dies. Its database connection is closed after
    IDLE_SECONDS without work, so an idle process holds none.
    """

    IDLE_SECONDS = 5.0

    def __init__(self) -> None:
        self._event = threading.Event()
        self._guard = threading.Lock()
        self._pid = 0
        self._thread: threading.Thread | None = None

    def wake(self) -> None:
        with self._guard:
            if self._pid != os.getpid() or self._thread is None or not self._thread.is_alive():
                if self._pid != os.getpid():
                    # A short-lived process (a command) chains what it recorded on its way out,
                    # rather than leaving it to the sweep.
                    atexit.register(_chain_at_exit)
                self._pid = os.getpid()
                self._event = threading.Event()
                self._thread = threading.Thread(
                    target=self._run, args=(self._event,), name="audit-chainer", daemon=True
                )
                self._thread.start()
            self._event.set()

    def _run(self, event: threading.Event) -> None:
        from django.db import connections

        while True:
            if not event.wait(self.IDLE_SECONDS):
                connections.close_all()  # idle: give the connection back
                event.wait()
            event.clear()
            _chain_now()


_chainer = _Chainer()


def _try_lock_chain() -> bool:
    """Take the chain lock if it is free, for this session (released by `_unlock_chain`).

    Session-level, in autocommit: a writer that finds it taken spends one round trip and no
    transaction. It conflicts with the transaction-level lock of `_lock_chain`.
    """
    if connection.vendor != "postgresql":
        return True  # SQLite: each transaction is the database's single writer
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(%s)", [CHAIN_LOCK_KEY])
        row = cursor.fetchone()
    return bool(row and row[0])


def _unlock_chain() -> None:
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_unlock(%s)", [CHAIN_LOCK_KEY])


def _spec_of(row: PendingAuditEvent) -> EventSpec:
    return EventSpec(
        action=row.action,
        outcome=row.outcome,
        actor=row.actor,
        ip=row.ip,
        user_agent=row.user_agent,
        session_hash=row.session_hash,
        request_id=row.request_id,
        target_type=row.target_type,
        target_id=row.target_id,
        details=row.details,
        subject_id=row.subject_id,
    )


def _chain_batch(*, asynchronous_commit: bool = False) -> int:
    """Move up to CHAIN_BATCH_SIZE committed pending events into the chain, lowest id first,
    and delete them. The caller must hold the chain lock, in a transaction. Returns how many.

    With `asynchronous_commit` (the chainer's own transaction), that transaction commits with
    synchronous_commit off: if the commit is lost in a crash, the deletion of the pending rows
    is lost with it and they are chained again, so the chain never holds what the pending
    table lost. Writers' commits, and checkpoints', stay synchronous.
    """
    limit = CHAIN_BATCH_SIZE
    head = AuditEvent.objects.order_by("-sequence")
    pending = PendingAuditEvent.objects.select_related("actor").annotate(
        # The chain's head comes with the rows (one round trip; evaluated once).
        head_sequence=Subquery(head.values("sequence")[:1]),
        head_hash=Subquery(head.values("hash")[:1]),
    )
    if asynchronous_commit and connection.vendor == "postgresql":
        # SET LOCAL without a round trip of its own (a no-op when there are no rows, and
        # then there is nothing to commit either).
        pending = pending.annotate(
            async_commit=RawSQL("set_config('synchronous_commit', 'off', true)", ())
        )
    rows = list(pending.order_by("id")[:limit])
    if not rows:
        return 0
    sequence: int = rows[0].head_sequence or 0
    prev_hash: str = rows[0].head_hash or chain.GENESIS_HASH
    events: list[AuditEvent] = []
    for row in rows:
        sequence += 1
        event = _build(_spec_of(row), sequence=sequence, prev_hash=prev_hash, now=row.occurred_at)
        prev_hash = event.hash
        events.append(event)
    AuditEvent.objects.all()._chain_bulk_create(events, batch_size=limit)
    deleted = PendingAuditEvent.objects.filter(id__in=[row.id for row in rows])._chained_delete()
    if deleted != len(rows):  # someone else moved some of them: chaining twice is worse
        raise RuntimeError(f"chained {len(rows)} pending audit events but deleted {deleted}")
    return len(rows)


def audit_chain_pending(*, max_batches: int | None = None) -> int:
    """Link committed pending events into the chain, lowest id first, in batches of
    CHAIN_BATCH_SIZE (each its own transaction, under the chain lock); returns how many.

    Call it outside a transaction. It returns at once when another session holds the chain
    lock: that session looks again after releasing it, so a row committed meanwhile is not
    left behind (see docs/audit.md). With `max_batches`, it stops after that many batches.
    Database errors propagate; what was not chained stays pending.
    """
    total = 0
    batches = 0
    while max_batches is None or batches < max_batches:
        if not _try_lock_chain():
            return total
        try:
            while max_batches is None or batches < max_batches:
                with transaction.atomic():
                    moved = _chain_batch(asynchronous_commit=True)
                total += moved
                batches += 1
                if moved < CHAIN_BATCH_SIZE:
                    break
        finally:
            _unlock_chain()
        # The lock is released: anything committed while it was held is visible now, and
        # its writer, refused the lock, counts on this look.
        if not PendingAuditEvent.objects.exists():
            break
    return total


def audit_chain_flush() -> int:
    """Link every committed pending event into the chain now, waiting for a chainer at work
    (the chain lock) rather than leaving the rows to it. Returns how many it linked.

    For readers that must see every event committed so far in the chain: verification, tests.
    Call it outside a transaction."""
    total = 0
    while True:
        with transaction.atomic():
            _lock_chain()
            moved = _chain_batch()
        total += moved
        if moved < CHAIN_BATCH_SIZE:
            return total


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
        if _deferred():
            _chain_after_commit()  # events recorded while this held the lock
    return count


# --- Checkpoints ------------------------------------------------------------------------------


def checkpoint_create() -> AuditCheckpoint:
    """Sign the chain's current head and store the checkpoint; then copy it to S3 if set up.

    Written even when nothing happened since the last one: a run of checkpoints with the
    same head proves the trail was quiet, not cut. Pending events committed before it are
    chained first, under the same lock, so the checkpoint covers them; it signs only the
    chain, never a pending row. Raises ImproperlyConfigured without a signing key. The S3
    copy is best effort here; anchors that fail are retried next time.
    """
    key = chain.signing_key()
    kid = chain.key_id(key)
    with transaction.atomic():
        _lock_chain()
        while _chain_batch() == CHAIN_BATCH_SIZE:
            pass
        if _deferred():
            _chain_after_commit()  # events recorded while this held the lock
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


def audit_chain_verify(*, anchors: bool = False, incremental: bool = False) -> Any:
    """Verify the chain (audit.verify) and record that it was verified, with the result.

    `incremental` walks only from the last verified point (issue 15); the recorded event's
    details carry the signed marker the next incremental run starts from. Returns the
    VerifyReport. Raises audit.anchors.AnchorError when S3 cannot be read.
    """
    from audit.verify import verify_chain

    if not connection.in_atomic_block:
        audit_chain_flush()  # what was committed before the run is verified by it
    report = verify_chain(anchors=anchors, incremental=incremental)
    audit_record(
        action=AuditAction.CHAIN_VERIFIED,
        target=(TargetType.AUDIT_TRAIL, "chain"),
        outcome=AuditOutcome.SUCCESS if report.ok else AuditOutcome.FAILED,
        details=report.as_details(),
    )
    if not connection.in_atomic_block:
        audit_chain_flush()  # the result is in the chain when the command or task returns
    return report
