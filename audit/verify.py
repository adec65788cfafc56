"""Verification of the audit chain: every hash, sequence continuity, every checkpoint, and
that the trail is complete up to now (a recent checkpoint, events where use left traces).

The walk reads events in sequence order in fixed-size pages (keyset pagination), so memory
stays constant however long the chain is. It stops at the first problem and names the
sequence number where the record stops being trustworthy. Only a chain that walks cleanly is
then checked for completeness: a chain consistent in itself can still have lost its newest
events together with the checkpoints that vouched for them, or every row.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db.models import Min, Q
from django.utils import timezone

from audit import chain
from audit.models import AuditCheckpoint, AuditEvent, PendingAuditEvent

PAGE_SIZE = 5000
# A trace of use (a sign-in time, a conversation's creation) is written a moment before its
# own audit event, in the same request; older than the first event by more than this, it
# proves the events of its time are gone.
TRACE_TOLERANCE = timedelta(seconds=60)

_EVENT_FIELDS = ("sequence", *[f for f in chain.HASHED_FIELDS if f != "sequence"], "hash")


@dataclass(frozen=True)
class Problem:
    sequence: int
    kind: str  # hash_mismatch | broken_link | gap | checkpoint_mismatch | checkpoint_signature
    # | truncated | anchor_mismatch | anchor_unavailable | checkpoint_stale
    # | checkpoint_missing | empty_trail | unchained
    message: str


@dataclass
class VerifyReport:
    started_at: datetime = field(default_factory=timezone.now)
    events_checked: int = 0
    checkpoints_checked: int = 0
    anchors_checked: int = 0
    last_sequence: int = 0
    last_hash: str = chain.GENESIS_HASH
    problem: Problem | None = None

    @property
    def ok(self) -> bool:
        return self.problem is None

    def summary(self) -> str:
        checked = f"{self.events_checked:,} events, {self.checkpoints_checked:,} checkpoints" + (
            f", {self.anchors_checked:,} S3 anchors" if self.anchors_checked else ""
        )
        if self.problem is None:
            return f"OK: the chain verifies ({checked}; head #{self.last_sequence})."
        return (
            f"FAILED at sequence #{self.problem.sequence} ({self.problem.kind}): "
            f"{self.problem.message} Checked {checked} before stopping."
        )

    def as_details(self) -> dict[str, Any]:
        details: dict[str, Any] = {
            "ok": self.ok,
            "events_checked": self.events_checked,
            "checkpoints_checked": self.checkpoints_checked,
            "anchors_checked": self.anchors_checked,
            "head_sequence": self.last_sequence,
        }
        if self.problem is not None:
            details.update(
                failed_sequence=self.problem.sequence,
                failure=self.problem.kind,
                message=self.problem.message,
            )
        return details


@dataclass(frozen=True, order=True)
class _Witness:
    """Something that vouches for the chain's hash at a sequence: a checkpoint or an anchor."""

    sequence: int
    order: int
    label: str = field(compare=False)
    head_hash: str = field(compare=False)
    signed_at: datetime | None = field(compare=False, default=None)
    key_id: str = field(compare=False, default="")
    signature: str = field(compare=False, default="")
    source: str = field(compare=False, default="checkpoint")


def _events() -> Iterator[tuple[Any, ...]]:
    last = 0
    while True:
        page = list(
            AuditEvent.objects.filter(sequence__gt=last)
            .order_by("sequence")
            .values_list(*_EVENT_FIELDS)[:PAGE_SIZE]
        )
        if not page:
            return
        yield from page
        last = page[-1][0]


def _checkpoints(max_id: int) -> Iterator[_Witness]:
    last = (-1, 0)
    while True:
        page = list(
            AuditCheckpoint.objects.filter(id__lte=max_id)
            .filter(Q(sequence__gt=last[0]) | Q(sequence=last[0], id__gt=last[1]))
            .order_by("sequence", "id")[:PAGE_SIZE]
        )
        if not page:
            return
        for cp in page:
            yield _Witness(
                sequence=cp.sequence,
                order=cp.pk,
                label=f"checkpoint {cp.pk} signed at {chain.timestamp(cp.signed_at)}",
                head_hash=cp.head_hash,
                signed_at=cp.signed_at,
                key_id=cp.key_id,
                signature=cp.signature,
            )
        last = (page[-1].sequence, page[-1].pk)


def _anchors() -> Iterator[_Witness]:
    from audit import anchors

    for index, document in enumerate(anchors.iter_checkpoints()):
        signed_at = None
        try:
            signed_at = datetime.fromisoformat(str(document["signed_at"]).replace("Z", "+00:00"))
            sequence = int(document["sequence"])
            head_hash = str(document["head_hash"])
        except (KeyError, ValueError):
            sequence, head_hash = 0, ""
        yield _Witness(
            sequence=sequence,
            order=index,
            label=f"S3 anchor {document['key']}",
            head_hash=head_hash,
            signed_at=signed_at,
            key_id=str(document.get("key_id", "")),
            signature=str(document.get("signature", "")),
            source="anchor",
        )


def _check_signature(witness: _Witness) -> Problem | None:
    valid = (
        chain.checkpoint_signature_valid(
            sequence=witness.sequence,
            head_hash=witness.head_hash,
            signed_at=witness.signed_at,
            kid=witness.key_id,
            signature=witness.signature,
        )
        if witness.signed_at is not None and witness.head_hash
        else False
    )
    if valid is None:
        return Problem(
            witness.sequence,
            "checkpoint_signature",
            f"{witness.label} was signed with key {witness.key_id}, which is not configured "
            "here (set AUDIT_HMAC_PREVIOUS_KEYS).",
        )
    if not valid:
        return Problem(
            witness.sequence,
            "checkpoint_signature",
            f"{witness.label} has an invalid signature: it was forged or altered.",
        )
    return None


def _grace() -> timedelta:
    """How old the newest checkpoint may be: two intervals of the checkpoint schedule (Celery
    beat and `manage.py serve`'s scheduler both read AUDIT_CHECKPOINT_INTERVAL_SECONDS)."""
    return timedelta(seconds=2 * settings.AUDIT_CHECKPOINT_INTERVAL_SECONDS)


def _earliest_trace_of_use() -> tuple[datetime, str] | None:
    """The earliest thing in the database that could only be there if an event had been
    recorded at about the same time, or None. Each is written with an audit event: a sign-in
    (`last_login`, set by the same signal that records `auth.login`), a conversation and a
    message (created in the transaction that records `message.sent` or
    `conversation.created`). Dates of accounts are not used: `createsuperuser` writes none."""
    from conversations.models import Conversation, Message

    traces = [
        (
            get_user_model()
            .objects.filter(last_login__isnull=False)
            .aggregate(t=Min("last_login"))["t"],
            "someone signed in",
        ),
        (Conversation.objects.aggregate(t=Min("created_at"))["t"], "a conversation was created"),
        (Message.objects.aggregate(t=Min("created_at"))["t"], "a message was stored"),
    ]
    found = [(when, what) for when, what in traces if when is not None]
    return min(found, key=lambda trace: trace[0]) if found else None


def _check_completeness(report: VerifyReport, *, now: datetime) -> Problem | None:
    """After a clean walk: is the trail complete, from its start up to `now`?

    Checkpoints are signed on schedule even when nothing happens, so on a running system the
    newest one is never more than one interval old; two intervals leave room for a late run.
    A fresh install has no events, no checkpoints and no traces of use, and passes.
    """
    grace = _grace()
    # Events recorded on the deferred write path wait in PendingAuditEvent for a moment
    # before the chainer links them: they count as recorded, but not for long.
    oldest_pending = (
        PendingAuditEvent.objects.order_by("occurred_at", "id")
        .values_list("id", "occurred_at")
        .first()
    )
    if oldest_pending is not None and oldest_pending[1] < now - grace:
        return Problem(
            report.last_sequence + 1,
            "unchained",
            f"an event recorded at {chain.timestamp(oldest_pending[1])} (pending row "
            f"{oldest_pending[0]}) is still not linked into the chain, more than two checkpoint "
            f"intervals ({int(grace.total_seconds())} s) later: the chainer and its scheduled "
            "sweep (audit.tasks.audit_chain_pending) are not running.",
        )
    trace = _earliest_trace_of_use()
    if trace is not None:
        first_event = min(
            (
                when
                for when in (
                    AuditEvent.objects.order_by("sequence")
                    .values_list("occurred_at", flat=True)
                    .first(),
                    oldest_pending[1] if oldest_pending is not None else None,
                )
                if when is not None
            ),
            default=None,
        )
        if first_event is None:
            return Problem(
                0,
                "empty_trail",
                f"the audit trail has no events, but {trace[1]} at {chain.timestamp(trace[0])}: "
                "events were recorded and the audit tables were emptied.",
            )
        if trace[0] < first_event - TRACE_TOLERANCE:
            return Problem(
                1,
                "empty_trail",
                f"the audit trail starts at {chain.timestamp(first_event)}, but {trace[1]} at "
                f"{chain.timestamp(trace[0])}: the events before it were deleted (the audit "
                "tables were emptied and the chain started again).",
            )
    newest = (
        AuditCheckpoint.objects.order_by("-signed_at", "-id")
        .values_list("sequence", "signed_at")
        .first()
    )
    if newest is not None and newest[1] < now - grace:
        return Problem(
            newest[0] + 1,
            "checkpoint_stale",
            f"the newest checkpoint (at #{newest[0]}) was signed at "
            f"{chain.timestamp(newest[1])}, more than two checkpoint intervals "
            f"({int(grace.total_seconds())} s) ago: later checkpoints were deleted, with any "
            "events they covered, or the checkpoint schedule is not running.",
        )
    covered = newest[0] if newest is not None else 0
    oldest_uncovered = (
        AuditEvent.objects.filter(sequence__gt=covered)
        .order_by("sequence")
        .values_list("sequence", "occurred_at")
        .first()
    )
    if oldest_uncovered is not None and oldest_uncovered[1] < now - grace:
        held_by = "no checkpoint exists" if newest is None else f"none covers #{covered + 1} on"
        return Problem(
            oldest_uncovered[0],
            "checkpoint_missing",
            f"event #{oldest_uncovered[0]} was recorded at "
            f"{chain.timestamp(oldest_uncovered[1])}, more than two checkpoint intervals "
            f"({int(grace.total_seconds())} s) ago, but {held_by}: the checkpoints were "
            "deleted, or the checkpoint schedule is not running.",
        )
    return None


def verify_chain(*, anchors: bool = False, now: datetime | None = None) -> VerifyReport:
    """Walk the whole chain and every checkpoint (and S3 anchor) and report the first problem;
    then, if the walk is clean, check the trail is complete up to `now` (default: the time
    the verification started): a recent checkpoint, and events where use left traces.

    Raises audit.anchors.AnchorError when `anchors` is asked for and S3 cannot be read.
    """
    report = VerifyReport()
    report.problem = _walk(report, anchors=anchors)
    if report.problem is None:
        report.problem = _check_completeness(report, now=now or report.started_at)
    return report


def _walk(report: VerifyReport, *, anchors: bool) -> Problem | None:
    max_checkpoint = AuditCheckpoint.objects.order_by("-id").values_list("id", flat=True).first()
    streams: list[Iterator[_Witness]] = [_checkpoints(max_checkpoint or 0)]
    if anchors:
        streams.append(_anchors())
    witnesses = heapq.merge(*streams)
    pending = next(witnesses, None)
    last_good_witness = 0
    expected = 1
    prev_hash = chain.GENESIS_HASH

    def settle(witness: _Witness, actual_hash: str | None) -> Problem | None:
        nonlocal last_good_witness
        if witness.source == "anchor":
            report.anchors_checked += 1
        else:
            report.checkpoints_checked += 1
        problem = _check_signature(witness)
        if problem is not None:
            return problem
        if actual_hash is None:
            return Problem(
                report.last_sequence + 1 if report.last_sequence < witness.sequence else 0,
                "truncated",
                f"{witness.label} vouches for events up to #{witness.sequence}, but the chain "
                f"ends at #{report.last_sequence}: events after it were deleted.",
            )
        if witness.head_hash != actual_hash:
            kind = "anchor_mismatch" if witness.source == "anchor" else "checkpoint_mismatch"
            return Problem(
                witness.sequence,
                kind,
                f"{witness.label} recorded a different hash for #{witness.sequence}: events "
                f"after #{last_good_witness} up to #{witness.sequence} were rewritten after it "
                "was signed.",
            )
        last_good_witness = witness.sequence
        return None

    # A checkpoint of the empty chain vouches for the genesis hash.
    while pending is not None and pending.sequence == 0:
        problem = settle(pending, chain.GENESIS_HASH)
        if problem:
            return problem
        pending = next(witnesses, None)

    for row in _events():
        fields = dict(zip(_EVENT_FIELDS, row, strict=True))
        sequence = fields["sequence"]
        if sequence != expected:
            return Problem(
                expected,
                "gap",
                f"events #{expected} to #{sequence - 1} are missing (deleted).",
            )
        if fields["prev_hash"] != prev_hash:
            return Problem(
                sequence,
                "broken_link",
                f"event #{sequence} does not link to the hash of event #{sequence - 1}.",
            )
        if chain.event_hash(fields) != fields["hash"]:
            return Problem(
                sequence,
                "hash_mismatch",
                f"event #{sequence} was altered after it was written (its content no longer "
                "matches its hash).",
            )
        prev_hash = fields["hash"]
        report.events_checked += 1
        report.last_sequence = sequence
        report.last_hash = prev_hash
        while pending is not None and pending.sequence <= sequence:
            problem = settle(pending, prev_hash)
            if problem:
                return problem
            pending = next(witnesses, None)
        expected += 1

    if pending is not None:
        return settle(pending, None)
    return None
