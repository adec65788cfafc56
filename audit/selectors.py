"""Reads about the audit trail for the console and the metrics: the state of its latest
verification, taken from the audit.chain_verified events themselves, so that every web
process, worker and metrics scrape sees the same answer whichever process ran it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.utils import timezone

from audit.catalogue import AuditAction, AuditOutcome
from audit.models import AuditEvent


@dataclass(frozen=True)
class VerificationStatus:
    """The latest verification of the chain, and whether the console should warn."""

    verified_at: datetime | None = None
    ok: bool = True
    mode: str = ""
    head_sequence: int = 0
    duration_seconds: float | None = None
    failure: str = ""  # the kind of problem (audit.verify.Problem.kind)
    failed_sequence: int | None = None
    last_full_at: datetime | None = None
    overdue: bool = False  # older than two intervals of its schedule (or never, with events)

    @property
    def alert(self) -> bool:
        return not self.ok or self.overdue


def _latest(**filters: Any) -> tuple[str, datetime, dict[str, Any]] | None:
    return (
        AuditEvent.objects.filter(action=AuditAction.CHAIN_VERIFIED, **filters)
        .order_by("-occurred_at", "-sequence")
        .values_list("outcome", "occurred_at", "details")
        .first()
    )


def verification_status(*, now: datetime | None = None) -> VerificationStatus:
    """The latest audit.chain_verified event, read as a status (two indexed queries, three
    when never verified).

    Overdue when the latest run is older than two AUDIT_VERIFY_INTERVAL_SECONDS, the latest
    full run older than two AUDIT_VERIFY_FULL_INTERVAL_SECONDS, or there has never been one
    although the oldest event is older than two intervals (a fresh install is not overdue).
    """
    now = now or timezone.now()
    grace = timedelta(seconds=2 * settings.AUDIT_VERIFY_INTERVAL_SECONDS)
    full_grace = timedelta(seconds=2 * settings.AUDIT_VERIFY_FULL_INTERVAL_SECONDS)
    latest = _latest()
    oldest = AuditEvent.objects.order_by("sequence").values_list("occurred_at", flat=True).first()
    if latest is None:
        return VerificationStatus(overdue=oldest is not None and oldest < now - grace)
    outcome, verified_at, details = latest
    details = details if isinstance(details, dict) else {}
    full = (
        (outcome, verified_at, details)
        if details.get("mode", "full") == "full"
        else _latest(details__mode="full")
    )
    last_full_at = full[1] if full is not None else None
    reference = last_full_at or oldest
    overdue = verified_at < now - grace or (reference is not None and reference < now - full_grace)
    duration = details.get("duration_seconds")
    return VerificationStatus(
        verified_at=verified_at,
        ok=outcome == AuditOutcome.SUCCESS,
        mode=str(details.get("mode", "full")),
        head_sequence=int(details.get("head_sequence") or 0),
        duration_seconds=float(duration) if isinstance(duration, int | float) else None,
        failure=str(details.get("failure", "")),
        failed_sequence=details.get("failed_sequence"),
        last_full_at=last_full_at,
        overdue=overdue,
    )
