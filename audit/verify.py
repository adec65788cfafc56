"""Verification of the audit chain: every hash, sequence continuity, every checkpoint.

The walk reads events in sequence order in fixed-size pages (keyset pagination), so memory
stays constant however long the chain is. It stops at the first problem and names the
sequence number where the record stops being trustworthy.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.db.models import Q
from django.utils import timezone

from audit import chain
from audit.models import AuditCheckpoint, AuditEvent

PAGE_SIZE = 5000

_EVENT_FIELDS = ("sequence", *[f for f in chain.HASHED_FIELDS if f != "sequence"], "hash")


@dataclass(frozen=True)
class Problem:
    sequence: int
    kind: str  # hash_mismatch | broken_link | gap | checkpoint_mismatch | checkpoint_signature
    # | truncated | anchor_mismatch | anchor_unavailable
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


def verify_chain(*, anchors: bool = False) -> VerifyReport:
    """Walk the whole chain and every checkpoint (and S3 anchor) and report the first problem.

    Raises audit.anchors.AnchorError when `anchors` is asked for and S3 cannot be read.
    """
    report = VerifyReport()
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
        report.problem = settle(pending, chain.GENESIS_HASH)
        if report.problem:
            return report
        pending = next(witnesses, None)

    for row in _events():
        fields = dict(zip(_EVENT_FIELDS, row, strict=True))
        sequence = fields["sequence"]
        if sequence != expected:
            report.problem = Problem(
                expected,
                "gap",
                f"events #{expected} to #{sequence - 1} are missing (deleted).",
            )
            return report
        if fields["prev_hash"] != prev_hash:
            report.problem = Problem(
                sequence,
                "broken_link",
                f"event #{sequence} does not link to the hash of event #{sequence - 1}.",
            )
            return report
        if chain.event_hash(fields) != fields["hash"]:
            report.problem = Problem(
                sequence,
                "hash_mismatch",
                f"event #{sequence} was altered after it was written (its content no longer "
                "matches its hash).",
            )
            return report
        prev_hash = fields["hash"]
        report.events_checked += 1
        report.last_sequence = sequence
        report.last_hash = prev_hash
        while pending is not None and pending.sequence <= sequence:
            report.problem = settle(pending, prev_hash)
            if report.problem:
                return report
            pending = next(witnesses, None)
        expected += 1

    if pending is not None:
        report.problem = settle(pending, None)
    return report
