"""Sign-in events, recorded from Django's and axes' signals (connected in AuditConfig.ready).

Passwords never reach these receivers (Django cleanses the credentials), but people do type
a password into the user name field. So a failed sign-in, and a lockout, names the account
only when the name is an existing account's user name or e-mail; any other name is kept as a
keyed fingerprint and its length, which correlates repeated attempts without revealing what
was typed.
"""

from __future__ import annotations

from typing import Any

from axes.signals import user_locked_out
from django.contrib.auth import get_user_model
from django.contrib.auth.signals import user_logged_in, user_logged_out, user_login_failed
from django.db.models import Q
from django.dispatch import receiver
from django.utils.crypto import salted_hmac

from audit import context as audit_context
from audit.catalogue import AuditAction, AuditOutcome
from audit.services import audit_record

USERNAME_MAX = 150
FINGERPRINT_PURPOSE = "audit.login_failed.unknown_username"


def _context(request: Any) -> audit_context.AuditContext:
    if request is None:
        return audit_context.current()
    return audit_context.from_request(request)


def _account_named(typed: str) -> Any:
    """The account whose user name or e-mail is `typed`, in any letter case, or None."""
    if not typed:
        return None
    model = get_user_model()
    by_name = Q(**{f"{model.USERNAME_FIELD}__iexact": typed})
    email_field = model.get_email_field_name()
    return (
        model.objects.filter(by_name | Q(**{f"{email_field}__iexact": typed}))
        .order_by("pk")
        .first()
    )


def username_fingerprint(typed: str) -> str:
    """A keyed (SECRET_KEY), non-reversible fingerprint of a name that matches no account:
    the same name gives the same fingerprint, so repeated attempts can be correlated."""
    return salted_hmac(FINGERPRINT_PURPOSE, typed, algorithm="sha256").hexdigest()[:16]


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


def _typed_name_details(typed: str) -> tuple[Any, dict[str, Any]]:
    """The account a typed user name names, and what may be stored about the name: the
    account's own user name when it names one, else a keyed fingerprint and the length."""
    claimed = _account_named(typed[:USERNAME_MAX])
    if claimed is not None:
        return claimed, {"username": claimed.get_username(), "known_user": True}
    # Possibly a password typed into the wrong field: never stored as typed.
    return None, {
        "known_user": False,
        "username_fingerprint": username_fingerprint(typed),
        "username_length": len(typed),
    }


@receiver(user_login_failed, dispatch_uid="audit_login_failed")
def record_login_failed(
    sender: Any, credentials: dict[str, Any], request: Any = None, **kwargs: Any
) -> None:
    claimed, details = _typed_name_details(str(credentials.get("username") or ""))
    audit_record(
        action=AuditAction.LOGIN_FAILED,
        actor=None,
        target=claimed,
        outcome=AuditOutcome.FAILED,
        details=details,
        context=_context(request),
    )


@receiver(user_locked_out, dispatch_uid="audit_lockout")
def record_lockout(sender: Any, request: Any, username: str, **kwargs: Any) -> None:
    # axes locks out by the name as typed, which may be a password typed into the wrong
    # field: stored like auth.login_failed's.
    claimed, details = _typed_name_details(str(username or ""))
    audit_record(
        action=AuditAction.LOCKOUT,
        actor=None,
        target=claimed,
        outcome=AuditOutcome.DENIED,
        details=details,
        context=_context(request),
    )
