"""Writes to people's accounts that the console makes outside plain form edits."""

from __future__ import annotations

from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.utils import timezone

from accounts.models import User
from audit.catalogue import AuditAction
from audit.services import audit_record


@transaction.atomic
def user_legal_hold_set(*, actor: User, user: User, held: bool, reason: str) -> bool:
    """Place (`held=True`) or release a legal hold on a person; audited with the reason.

    Returns False when the person already was in that state (nothing recorded). Raises
    PermissionDenied unless the actor may manage legal holds (compliance officers).
    """
    if not actor.has_perm("accounts.manage_legal_hold"):
        raise PermissionDenied
    locked = User.objects.select_for_update().get(pk=user.pk)
    if locked.legal_hold == held:
        return False
    locked.legal_hold = held
    locked.legal_hold_since = timezone.now() if held else None
    locked.save(update_fields=["legal_hold", "legal_hold_since"])
    user.legal_hold, user.legal_hold_since = locked.legal_hold, locked.legal_hold_since
    audit_record(
        action=AuditAction.LEGAL_HOLD_SET if held else AuditAction.LEGAL_HOLD_RELEASED,
        actor=actor,
        target=locked,
        details={"reason": reason[:500]},
    )
    return True
