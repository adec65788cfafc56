"""Session lifetime rules and the link between sessions and open chat sockets.

* Every signed-in session carries when it signed in and when it was last active (epoch
  seconds). It ends after `SESSION_IDLE_TIMEOUT_SECONDS` without activity or
  `SESSION_ABSOLUTE_LIFETIME_SECONDS` after sign-in, whichever comes first. Activity is
  written back at most once a minute, so a page view is not a database write.
* Every chat socket joins its user's channel-layer group. Ending sessions (sign-out,
  password change, deactivation, an administrator's "End all sessions") sends
  `session.end` to that group and the sockets close; each socket also re-checks its session
  on every frame, so a lost broadcast cannot keep a socket alive.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from importlib import import_module
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings
from django.contrib.auth import HASH_SESSION_KEY, SESSION_KEY, get_user_model
from django.contrib.sessions.backends.base import UpdateError
from django.db import transaction
from django.utils.crypto import constant_time_compare

from audit import context as audit_context

logger = logging.getLogger(__name__)

LOGIN_AT_KEY = "_eai_login_at"
SEEN_AT_KEY = "_eai_seen_at"
# Last activity is written back only when older than this (one write a minute at most).
ACTIVITY_WRITE_SECONDS = 60

# Why a session or socket ended; also the `reason` of the audit events.
IDLE_TIMEOUT = "idle_timeout"
ABSOLUTE_LIFETIME = "absolute_lifetime"
LOGGED_OUT = "logged_out"
SESSION_GONE = "session_gone"
PASSWORD_CHANGED = "password_changed"  # noqa: S105  (a reason, not a password)
DEACTIVATED = "deactivated"
ENDED_BY_ADMINISTRATOR = "ended_by_administrator"

EXPIRED_MESSAGE = "Your session has expired. Please sign in again."


def now_seconds() -> int:
    return int(time.time())


def session_stamp(session: Any, *, now: int | None = None) -> None:
    """Mark `session` as signed in now (called at sign-in)."""
    now = now_seconds() if now is None else now
    session[LOGIN_AT_KEY] = now
    session[SEEN_AT_KEY] = now


def expiry_reason(data: Any, *, now: int) -> str | None:
    """IDLE_TIMEOUT or ABSOLUTE_LIFETIME when the session data is past a limit, else None.

    `data` is a session (or its decoded dict). A session without timestamps (signed in
    before they existed) is not expired here; the caller stamps it.
    """
    login_at = data.get(LOGIN_AT_KEY)
    seen_at = data.get(SEEN_AT_KEY)
    if isinstance(login_at, int) and now - login_at >= settings.SESSION_ABSOLUTE_LIFETIME_SECONDS:
        return ABSOLUTE_LIFETIME
    if isinstance(seen_at, int) and now - seen_at >= settings.SESSION_IDLE_TIMEOUT_SECONDS:
        return IDLE_TIMEOUT
    return None


def seconds_to_deadline(data: Any, *, now: int) -> int | None:
    """Seconds until the session reaches its idle or absolute limit (None without stamps)."""
    login_at = data.get(LOGIN_AT_KEY)
    seen_at = data.get(SEEN_AT_KEY)
    if not isinstance(login_at, int) or not isinstance(seen_at, int):
        return None
    deadline = min(
        login_at + settings.SESSION_ABSOLUTE_LIFETIME_SECONDS,
        seen_at + settings.SESSION_IDLE_TIMEOUT_SECONDS,
    )
    return max(0, deadline - now)


def activity_touch(session: Any, *, now: int) -> bool:
    """Record activity when the stored time is a minute old or missing. True if it changed."""
    if LOGIN_AT_KEY not in session:
        session_stamp(session, now=now)
        return True
    seen_at = session.get(SEEN_AT_KEY)
    if not isinstance(seen_at, int) or now - seen_at >= ACTIVITY_WRITE_SECONDS:
        session[SEEN_AT_KEY] = now
        return True
    return False


def session_store(session_key: str | None = None) -> Any:
    return import_module(settings.SESSION_ENGINE).SessionStore(session_key)


# --- Sockets ------------------------------------------------------------------------------------


def user_group(public_id: Any) -> str:
    """The channel-layer group every chat socket of one person joins."""
    return f"user.{public_id}"


def sockets_close(*, user: Any, reason: str, session_key: str | None = None) -> None:
    """Close the person's open chat sockets once the current transaction commits.

    Only the sockets of `session_key` when given (sign-out of one browser), else all of
    them. Sent with a keyed hash of the session key, never the key itself. A channel layer
    that cannot be reached is logged and left: every socket re-checks its session on its
    next frame anyway.
    """
    event = {
        "type": "session.end",
        "reason": reason,
        "session": audit_context.session_hash(session_key) if session_key else "",
    }
    group = user_group(user.public_id)

    def send() -> None:
        try:
            async_to_sync(get_channel_layer().group_send)(group, event)
        except Exception as exc:
            logger.warning("closing chat sockets failed: %s", type(exc).__name__)

    transaction.on_commit(send)


@dataclass(frozen=True)
class SocketCheck:
    """The result of re-checking a socket's session: `problem` is None when it is valid."""

    problem: str | None
    seconds_left: int | None = None


def socket_session_check(
    *, session_key: str, user_id: int, touch: bool, now: int | None = None
) -> SocketCheck:
    """Is the socket's session still good? Two queries: the session, the user.

    A session that is gone (signed out, ended, past its stored expiry), past its idle or
    absolute limit, of a deactivated person, or whose password hash no longer matches (the
    password changed) is not. With `touch` (a frame from the person), records the activity
    in the session, at most once a minute. Raises only database errors.
    """
    now = now_seconds() if now is None else now
    store = session_store(session_key)
    data = dict(store.items())  # loads once and keeps it: later reads cost no query
    if not data or data.get(SESSION_KEY) != str(user_id):
        return SocketCheck(SESSION_GONE)
    reason = expiry_reason(data, now=now)
    if reason is not None:
        return SocketCheck(reason)
    user = get_user_model().objects.only("id", "is_active", "password").filter(pk=user_id).first()
    if user is None:
        return SocketCheck(SESSION_GONE)
    if not user.is_active:
        return SocketCheck(DEACTIVATED)
    stored_hash = data.get(HASH_SESSION_KEY) or ""
    if not stored_hash or not (
        constant_time_compare(stored_hash, user.get_session_auth_hash())
        or any(
            constant_time_compare(stored_hash, fallback)
            for fallback in user.get_session_auth_fallback_hash()
        )
    ):
        return SocketCheck(PASSWORD_CHANGED)
    if touch and activity_touch(store, now=now):
        try:
            store.save()
        except UpdateError:  # deleted between the read and the write
            return SocketCheck(SESSION_GONE)
    return SocketCheck(None, seconds_to_deadline(store, now=now))
