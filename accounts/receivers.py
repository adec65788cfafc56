"""Session bookkeeping on sign-in, sign-out and account changes (connected in AccountsConfig.ready).

Writes that bypass `save()` (queryset `update()`) send no signal: the sockets of such a
person still close on their next frame, because every frame re-checks the session.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth.signals import user_logged_in, user_logged_out
from django.db.models.signals import post_save
from django.dispatch import receiver

from accounts import sessions
from accounts.models import User
from accounts.services import sessions_end


@receiver(user_logged_in, dispatch_uid="accounts_session_stamp")
def stamp_session(sender: Any, request: Any, user: Any, **kwargs: Any) -> None:
    if request is not None and hasattr(request, "session"):
        sessions.session_stamp(request.session)


@receiver(user_logged_out, dispatch_uid="accounts_logout_sockets")
def close_sockets_on_logout(sender: Any, request: Any, user: Any, **kwargs: Any) -> None:
    if user is None or request is None or not hasattr(request, "session"):
        return
    # Only this browser's sockets: signing out on one device leaves the others signed in.
    sessions.sockets_close(
        user=user, reason=sessions.LOGGED_OUT, session_key=request.session.session_key
    )


@receiver(post_save, sender=User, dispatch_uid="accounts_end_sessions_on_change")
def end_sessions_on_account_change(
    sender: Any, instance: User, created: bool, update_fields: Any = None, **kwargs: Any
) -> None:
    if created:
        return
    was_active = instance.__dict__.pop("_was_active", True)
    if not instance.is_active and was_active:
        sessions_end(user=instance, reason=sessions.DEACTIVATED)
    elif getattr(instance, "_password", None) is not None:
        # A new password (set_password + save); hash upgrades at sign-in do not come here.
        sessions_end(user=instance, reason=sessions.PASSWORD_CHANGED)
    instance._was_active = instance.is_active  # type: ignore[attr-defined]
