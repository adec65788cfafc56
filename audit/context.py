"""Who is acting and from where: the context each audit event is stamped with.

HTTP requests set it in `AuditContextMiddleware`; the chat socket builds one from its
scope; workers pass the actor explicitly. Code that records an event needs no request.
"""

from __future__ import annotations

import contextvars
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

from django.utils.crypto import salted_hmac

from enterprise_ai.client_ip import client_ip, client_ip_from_scope

REQUEST_ID_HEADER = "X-Request-ID"
_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{8,64}$")
USER_AGENT_MAX = 512


@dataclass(frozen=True)
class AuditContext:
    actor: Any = None  # a User, or None for anonymous and system actions
    ip: str | None = None
    user_agent: str = ""
    session_hash: str = ""
    request_id: str = ""

    def with_actor(self, actor: Any) -> AuditContext:
        return replace(self, actor=actor)


_current: contextvars.ContextVar[AuditContext | None] = contextvars.ContextVar(
    "audit_context", default=None
)
_current_request: contextvars.ContextVar[Any] = contextvars.ContextVar(
    "audit_request", default=None
)


def new_request_id() -> str:
    return uuid.uuid4().hex


def request_id_from(value: str | None) -> str:
    """The caller's request id when it is well-formed (set by a proxy), else a new one."""
    if value and _VALID_REQUEST_ID.match(value):
        return value
    return new_request_id()


def session_hash(session_key: str | None) -> str:
    if not session_key:
        return ""
    return salted_hmac("audit.session", session_key, algorithm="sha256").hexdigest()


def from_request(request: Any) -> AuditContext:
    """The context of an HTTP request, read now (the session key changes at sign-in)."""
    user = getattr(request, "user", None)
    session = getattr(request, "session", None)
    return AuditContext(
        actor=user if user is not None and user.is_authenticated else None,
        ip=client_ip(request),
        user_agent=request.META.get("HTTP_USER_AGENT", "")[:USER_AGENT_MAX],
        session_hash=session_hash(session.session_key if session is not None else None),
        request_id=getattr(request, "request_id", "") or new_request_id(),
    )


def from_api_request(request: Any, *, actor: Any) -> AuditContext:
    """The context of an API request made with a key: `actor` is the key's owner (None
    before the key is checked). The session is never read: a key is the only credential, and
    reading it would be a synchronous query in an async view."""
    return AuditContext(
        actor=actor,
        ip=client_ip(request),
        user_agent=request.META.get("HTTP_USER_AGENT", "")[:USER_AGENT_MAX],
        request_id=getattr(request, "request_id", "") or new_request_id(),
    )


def from_scope(scope: dict[str, Any], *, request_id: str | None = None) -> AuditContext:
    """The context of a WebSocket connection (its ASGI scope)."""
    headers = dict(scope.get("headers") or [])
    user = scope.get("user")
    session = scope.get("session")
    return AuditContext(
        actor=user if user is not None and user.is_authenticated else None,
        ip=client_ip_from_scope(scope),
        user_agent=headers.get(b"user-agent", b"").decode("latin-1")[:USER_AGENT_MAX],
        session_hash=session_hash(getattr(session, "session_key", None)),
        request_id=request_id or new_request_id(),
    )


def current() -> AuditContext:
    """The context of the code running now; an empty (system) context outside requests."""
    request = _current_request.get()
    if request is not None:
        return from_request(request)
    return _current.get() or AuditContext()


@contextmanager
def bind_request(request: Any) -> Iterator[None]:
    token = _current_request.set(request)
    try:
        yield
    finally:
        _current_request.reset(token)


@contextmanager
def bind(context: AuditContext) -> Iterator[None]:
    request_token = _current_request.set(None)
    token = _current.set(context)
    try:
        yield
    finally:
        _current.reset(token)
        _current_request.reset(request_token)
