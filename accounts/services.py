"""Writes about people's access: ending sessions, expiring one, clearing a lockout."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import AnonymousUser
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.http import HttpRequest

from accounts import sessions
from accounts.models import UserSession
from audit.catalogue import AuditAction, AuditOutcome
from audit.services import audit_record

_FROM_CONTEXT: Any = object()


@transaction.atomic
def sessions_end(*, user: Any, reason: str, actor: Any = _FROM_CONTEXT) -> int:
    """Delete every server-side session of `user` and close their chat sockets; audited.

    `reason` is one of accounts.sessions' reasons (password changed, deactivated, ended by
    an administrator). Returns how many sessions were deleted. Raises nothing of its own.
    """
    deleted, _ = UserSession.objects.filter(user_id=user.pk).delete()
    sessions.sockets_close(user=user, reason=reason)
    kwargs = {} if actor is _FROM_CONTEXT else {"actor": actor}
    audit_record(
        action=AuditAction.SESSIONS_ENDED,
        target=user,
        details={"reason": reason, "sessions": deleted},
        **kwargs,
    )
    return deleted


def sessions_end_by_administrator(*, user: Any, actor: Any) -> int:
    """An administrator ends all of `user`'s sessions. Raises PermissionDenied unless the
    actor may change people (accounts.change_user)."""
    if not actor.has_perm("accounts.change_user"):
        raise PermissionDenied
    return sessions_end(user=user, reason=sessions.ENDED_BY_ADMINISTRATOR, actor=actor)


@transaction.atomic
def session_expire(*, request: HttpRequest, reason: str, now: int) -> None:
    """End the request's session because it passed its idle or absolute limit; audited.

    The person is signed out for the rest of this request; sockets of the same session
    close. Raises nothing of its own.
    """
    user: Any = request.user
    session = request.session
    login_at = session.get(sessions.LOGIN_AT_KEY)
    seen_at = session.get(sessions.SEEN_AT_KEY)
    audit_record(
        action=AuditAction.SESSION_EXPIRED,
        actor=user,
        target=user,
        outcome=AuditOutcome.SUCCESS,
        details={
            "reason": reason,
            "age_seconds": now - login_at if isinstance(login_at, int) else None,
            "idle_seconds": now - seen_at if isinstance(seen_at, int) else None,
        },
    )
    sessions.sockets_close(user=user, reason=reason, session_key=session.session_key)
    session.flush()
    request.user = AnonymousUser()


@transaction.atomic
def lockout_clear(*, user: Any, actor: Any) -> int:
    """Clear django-axes' failed sign-in records for `user`'s username; audited.

    Every record for the name is removed (from any address, any spelling of its case), so
    the person can sign in at once. Returns how many records were removed. Raises
    PermissionDenied unless the actor may delete axes' access attempts (administrators).
    """
    from axes.models import AccessAttempt

    if not actor.has_perm("axes.delete_accessattempt"):
        raise PermissionDenied
    removed, _ = AccessAttempt.objects.filter(username__iexact=user.get_username()).delete()
    audit_record(
        action=AuditAction.LOCKOUT_CLEARED,
        actor=actor,
        target=user,
        details={"attempt_records": removed},
    )
    return removed
