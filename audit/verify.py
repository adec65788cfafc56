"""Verification of the audit chain: every hash, sequence continuity, every checkpoint, and
that the trail is complete up to now (a recent checkpoint, events where use left traces).

The walk reads events in sequence order in fixed-size pages (keyset pagination, plain
tuples from the database cursor), so memory stays constant however long the chain is. It
stops at the first problem and names the sequence number where the record stops being
trustworthy. Only a chain that walks cleanly is then checked for completeness: a chain
consistent in itself can still have lost its newest events together with the checkpoints
that vouched for them, or every row.

A full run walks from event #1. An incremental run starts where the last successful
verification stopped: each successful run stores a *verification marker* — the head it
walked (sequence and hash), HMAC-signed with the audit key — in the details of its
`audit.chain_verified` event. The next incremental run takes the newest marker whose
signature is valid and whose event still carries the signed hash, and walks only the events
after it (and the checkpoints from there on). A database administrator cannot forge a
marker (no key) and cannot alter the marked event without the keyed walk noticing; what an
incremental run does not re-read — the events before the marker — the daily full run does.
"""

from __future__ import annotations

import heapq
import hmac
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import connection
from django.db.models import Min, Q
from django.utils import timezone

from audit import chain
from audit.catalogue import AuditAction, AuditOutcome
from audit.models import AuditCheckpoint, AuditEvent, PendingAuditEvent

PAGE_SIZE = 10_000
# How many recent successful verifications an incremental run looks through for a marker.
MARKER_CANDIDATES = 20
# A trace of use (a sign-in time, a conversation's creation) is written a moment before its
# own audit event, in the same request; older than the first event by more than this, it
# proves the events of its time are gone.
TRACE_TOLERANCE = timedelta(seconds=60)


@dataclass(frozen=True)
class Problem:
    sequence: int
    kind: str  # hash_mismatch | broken_link | gap | unknown_key | downgrade
    # | checkpoint_mismatch | checkpoint_signature | truncated | anchor_mismatch
    # | anchor_unavailable | checkpoint_stale | checkpoint_missing | empty_trail
    # | marker_mismatch | unchained
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
    mode: str = "full"  # or "incremental"
    from_sequence: int = 0  # the walk started after this event (0: from the first)
    duration_seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.problem is None

    def summary(self) -> str:
        checked = f"{self.events_checked:,} events, {self.checkpoints_checked:,} checkpoints" + (
            f", {self.anchors_checked:,} S3 anchors" if self.anchors_checked else ""
        )
        if self.mode == "incremental":
            checked += f"; incremental from #{self.from_sequence}"
        checked += f"; {self.duration_seconds:.1f} s"
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
            "mode": self.mode,
            "from_sequence": self.from_sequence,
            "duration_seconds": round(self.duration_seconds, 3),
        }
        if self.problem is None:
            # Where the next incremental run may start, signed so that nobody without the
            # key can move it forward (audit.verify, module docstring).
            key = chain.signing_key()
            kid = chain.key_id(key)
            details["head_hash"] = self.last_hash
            details["marker_key_id"] = kid
            details["marker_signature"] = chain.verification_marker_signature(
                key, sequence=self.last_sequence, head_hash=self.last_hash, kid=kid
            )
        else:
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


# PostgreSQL formats occurred_at itself, in the hashed form: parsing a timestamp into a
# datetime and formatting it again is the costliest step of the walk in Python.
_PG_TIMESTAMP = """to_char("occurred_at" AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')"""


def _events_sql(vendor: str) -> str:
    table = AuditEvent._meta.db_table
    columns = ", ".join(
        _PG_TIMESTAMP if name == "occurred_at" and vendor == "postgresql" else f'"{name}"'
        for name in chain.ROW_FIELDS  # the column names
    )
    return (
        f'SELECT {columns} FROM "{table}" WHERE "sequence" > %s '  # noqa: S608
        f'ORDER BY "sequence" LIMIT {int(PAGE_SIZE)}'
    )


def _events(after: int) -> Iterator[list[tuple[Any, ...]]]:
    """Pages of stored events after sequence `after`, as tuples in chain.ROW_FIELDS order,
    straight from the database cursor (no model or converter per row).

    On PostgreSQL the next page is fetched in a second thread, on the same connection
    (psycopg connections are thread-safe), while this one hashes the current page: the
    database's work and the network overlap the hashing. At most two pages are in memory.
    """
    sql = _events_sql(connection.vendor)
    if connection.vendor != "postgresql":
        last = after
        with connection.cursor() as cursor:
            while True:
                cursor.execute(sql, [last])
                page = cursor.fetchall()
                if not page:
                    return
                yield page
                last = page[-1][0]
    connection.ensure_connection()
    raw = connection.connection

    def fetch(last: int) -> list[tuple[Any, ...]]:
        with raw.cursor() as cursor:
            cursor.execute(sql, [last])
            return cursor.fetchall()

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="audit-verify") as pool:
        upcoming = pool.submit(fetch, after)
        while True:
            page = upcoming.result()
            if not page:
                return
            upcoming = pool.submit(fetch, page[-1][0])
            yield page


def _stored_timestamp(value: Any) -> str:
    """An occurred_at as a database other than PostgreSQL returns it (SQLite: a naive
    datetime, or text, in UTC; an aware datetime elsewhere) in the hashed form. PostgreSQL
    returns it already formatted (_PG_TIMESTAMP)."""
    parsed = datetime.fromisoformat(value) if isinstance(value, str) else value
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return chain.fast_timestamp(parsed)


def _checkpoints(max_id: int, *, min_sequence: int = 0) -> Iterator[_Witness]:
    last = (min_sequence - 1, 0)
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


@dataclass(frozen=True)
class _Start:
    """Where a walk begins: after event `sequence`, whose hash is `head_hash`."""

    sequence: int = 0
    head_hash: str = chain.GENESIS_HASH
    keyed: bool = False  # whether the event at `sequence` is keyed (no downgrade after it)


def _signed_markers() -> list[tuple[int, str, int]]:
    """(head sequence, head hash, event sequence) of the recent verification markers whose
    signature is valid with a configured key, newest verification first."""
    candidates = (
        AuditEvent.objects.filter(action=AuditAction.CHAIN_VERIFIED, outcome=AuditOutcome.SUCCESS)
        .order_by("-occurred_at", "-sequence")
        .values_list("details", "sequence")[:MARKER_CANDIDATES]
    )
    keys = chain.verification_keys()
    markers = []
    for details, event_sequence in candidates:
        try:
            sequence = int(details["head_sequence"])
            head_hash = str(details["head_hash"])
            kid = str(details["marker_key_id"])
            signature = str(details["marker_signature"])
        except (KeyError, TypeError, ValueError):
            continue
        key = keys.get(kid)
        if key is not None and hmac.compare_digest(
            chain.verification_marker_signature(
                key, sequence=sequence, head_hash=head_hash, kid=kid
            ),
            signature,
        ):
            markers.append((sequence, head_hash, event_sequence))
    return markers


def _marker_start(markers: list[tuple[int, str, int]]) -> _Start | None:
    """The newest verified point an incremental run may start from, or None: a marker whose
    signature is valid (see _signed_markers) and whose event still has the signed hash."""
    for sequence, head_hash, _ in markers:
        if sequence == 0:
            if head_hash == chain.GENESIS_HASH:
                return _Start()
            continue
        event = AuditEvent.objects.filter(sequence=sequence).values_list("hash", "key_id").first()
        if event is None or event[0] != head_hash:
            continue
        return _Start(sequence=sequence, head_hash=head_hash, keyed=bool(event[1]))
    return None


def _marker_witnesses(markers: list[tuple[int, str, int]], after: int) -> Iterator[_Witness]:
    """Signed markers as witnesses of the walk, like checkpoints: a chain rewritten since a
    verification vouched for it (with or without the key, e.g. stripped of its keys)
    disagrees with the marker's signed hash."""
    for sequence, head_hash, event_sequence in sorted(markers):
        if sequence > after:
            yield _Witness(
                sequence=sequence,
                order=event_sequence,
                label=f"the verification recorded in event #{event_sequence}",
                head_hash=head_hash,
                source="marker",
            )


def verify_chain(
    *, anchors: bool = False, now: datetime | None = None, incremental: bool = False
) -> VerifyReport:
    """Walk the chain and every checkpoint (and S3 anchor) and report the first problem;
    then, if the walk is clean, check the trail is complete up to `now` (default: the time
    the verification started): a recent checkpoint, and events where use left traces.

    `incremental` walks only the events after the newest valid verification marker (see the
    module docstring), or everything when there is none. Anchors are always compared in
    full. Raises audit.anchors.AnchorError when `anchors` is asked for and S3 cannot be read.
    """
    started = time.perf_counter()
    report = VerifyReport()
    markers = _signed_markers()
    start = _marker_start(markers) if incremental else None
    if start is not None:
        report.mode = "incremental"
        report.from_sequence = report.last_sequence = start.sequence
        report.last_hash = start.head_hash
    report.problem = _walk(report, anchors=anchors, start=start or _Start(), markers=markers)
    if report.problem is None:
        report.problem = _check_completeness(report, now=now or report.started_at)
    report.duration_seconds = time.perf_counter() - started
    return report


def _walk(
    report: VerifyReport,
    *,
    anchors: bool,
    start: _Start,
    markers: list[tuple[int, str, int]],
) -> Problem | None:
    max_checkpoint = AuditCheckpoint.objects.order_by("-id").values_list("id", flat=True).first()
    streams: list[Iterator[_Witness]] = [
        _checkpoints(max_checkpoint or 0, min_sequence=start.sequence),
        _marker_witnesses(markers, start.sequence),
    ]
    if anchors:
        streams.append(_anchors())
    witnesses = heapq.merge(*streams)
    pending = next(witnesses, None)
    last_good_witness = start.sequence
    expected = start.sequence + 1
    prev_hash = start.head_hash
    keyed_seen = start.keyed

    def settle(witness: _Witness, actual_hash: str | None) -> Problem | None:
        nonlocal last_good_witness
        if witness.source == "anchor":
            report.anchors_checked += 1
        elif witness.source == "checkpoint":
            report.checkpoints_checked += 1
        # A marker's signature was checked when it was read (_signed_markers).
        problem = _check_signature(witness) if witness.source != "marker" else None
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
            kind = {"anchor": "anchor_mismatch", "marker": "marker_mismatch"}.get(
                witness.source, "checkpoint_mismatch"
            )
            return Problem(
                witness.sequence,
                kind,
                f"{witness.label} recorded a different hash for #{witness.sequence}: events "
                f"after #{last_good_witness} up to #{witness.sequence} were rewritten after it "
                "was signed.",
            )
        last_good_witness = witness.sequence
        return None

    problem: Problem | None = None
    # Witnesses of the starting point (a checkpoint of the empty chain vouches for the
    # genesis hash; an incremental run starts at a verified head). Anchors of events before
    # an incremental start were compared when those events were walked.
    while pending is not None and pending.sequence <= start.sequence:
        if pending.sequence == start.sequence:
            problem = settle(pending, start.head_hash)
            if problem:
                return problem
        pending = next(witnesses, None)

    hasher = chain.RowHasher()
    hash_row = hasher.hash_row
    loads = chain.decode_details
    # PostgreSQL returns occurred_at formatted (_PG_TIMESTAMP); SQLite a naive datetime.
    stamp = str if connection.vendor == "postgresql" else _stored_timestamp
    for page in _events(start.sequence):
        for row in page:
            sequence = row[0]
            if sequence != expected:
                problem = Problem(
                    expected, "gap", f"events #{expected} to #{sequence - 1} are missing (deleted)."
                )
                break
            if row[13] != prev_hash:
                problem = Problem(
                    sequence,
                    "broken_link",
                    f"event #{sequence} does not link to the hash of event #{sequence - 1}.",
                )
                break
            kid = row[15]
            if kid:
                if not hasher.knows(kid):
                    problem = Problem(
                        sequence,
                        "unknown_key",
                        f"event #{sequence} names chain key {kid}, which is not configured "
                        "here: it was forged, or the key was retired without keeping it in "
                        "AUDIT_HMAC_PREVIOUS_KEYS.",
                    )
                    break
                keyed_seen = True
            elif keyed_seen:
                problem = Problem(
                    sequence,
                    "downgrade",
                    f"event #{sequence} carries an unkeyed (format 1) hash after keyed events: "
                    "it was inserted or rewritten by someone without the chain key.",
                )
                break
            details = row[12]
            if (
                hash_row(
                    row,
                    stamp(row[1]),
                    loads(details) if isinstance(details, str) else details,
                )
                != row[14]
            ):
                problem = Problem(
                    sequence,
                    "hash_mismatch",
                    f"event #{sequence} was altered after it was written (its content no longer "
                    "matches its hash).",
                )
                break
            prev_hash = row[14]
            expected += 1
            if pending is not None and pending.sequence <= sequence:
                report.events_checked += sequence - report.last_sequence
                report.last_sequence, report.last_hash = sequence, prev_hash
                while pending is not None and pending.sequence <= sequence:
                    problem = settle(pending, prev_hash)
                    if problem:
                        return problem
                    pending = next(witnesses, None)
        report.events_checked += expected - 1 - report.last_sequence
        report.last_sequence, report.last_hash = expected - 1, prev_hash
        if problem is not None:
            return problem

    if pending is not None:
        return settle(pending, None)
    return None
