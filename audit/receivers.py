"""Sign-in events, recorded from Django's and axes' signals (connected in AuditConfig.ready).

Passwords never reach these receivers (Django cleanses the credentials); the attempted user
name is kept, truncated, because it is what an investigation of a failed sign-in needs.
"""

from __future__ import annotations

from typing import Any

from axes.signals import user_locked_out
from django.contrib.auth import get_user_model
from django.contrib.auth.signals import user_logged_in, user_logged_out, user_login_failed
from django.dispatch import receiver

from audit import context as audit_context
from audit.catalogue import AuditAction, AuditOutcome
from audit.services import audit_record

USERNAME_MAX = 150


def _context(request: Any) -> audit_context.AuditContext:
    if request is None:
        return audit_context.current()
    return audit_context.from_request(request)


def _claimed_user(username: str) -> Any:
    if not username:
        return None
    model = get_user_model()
    return model.objects.filter(**{f"{model.USERNAME_FIELD}__iexact": username}).first()


@receiver(user_logged_in, dispatch_uid="audit_login")
def record_login(sender: Any, request: Any, user: Any, **kwargs: Any) -> None:
    audit_record(
        action=AuditAction.LOGIN,
        actor=user,
        target=user,
        context=_context(request),
    )


@receiver(user_logged_out, dispatch_uid="audit_logout")
def record_logout(sender: Any, request: Any, user: Any, **kwargs: Any) -> None:
    if user is None:  # logging out without a session is not an event
        return
    audit_record(action=AuditAction.LOGOUT, actor=user, target=user, context=_context(request))


@receiver(user_login_failed, dispatch_uid="audit_login_failed")
def record_login_failed(
    sender: Any, credentials: dict[str, Any], request: Any = None, **kwargs: Any
) -> None:
    username = str(credentials.get("username") or "")[:USERNAME_MAX]
    claimed = _claimed_user(username)
    audit_record(
        action=AuditAction.LOGIN_FAILED,
        actor=None,
        target=claimed,
        outcome=AuditOutcome.FAILED,
        details={"username": username, "known_user": claimed is not None},
        context=_context(request),
    )


@receiver(user_locked_out, dispatch_uid="audit_lockout")
def record_lockout(sender: Any, request: Any, username: str, **kwargs: Any) -> None:
    username = str(username or "")[:USERNAME_MAX]
    audit_record(
        action=AuditAction.LOCKOUT,
        actor=None,
        target=_claimed_user(username),
        outcome=AuditOutcome.DENIED,
        details={"username": username},
        context=_context(request),
    )
