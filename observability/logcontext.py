"""What every log line says about where it comes from: request, conversation and message ids.

One chat turn keeps one request id from the socket frame that asked for it to the worker
that writes the reply: the web process logs under the frame's audit context (whose id is
stored as the reply's `Message.request_id`), and the worker binds that stored id, with the
conversation's and the reply's public ids, while it generates (conversations/generation.py).
Any other Celery task carries the id of the code that enqueued it in a message header
(`before_task_publish` → `task_prerun`, connected by importing this module from
enterprise_ai/celery.py).

`LogContextFilter` (enterprise_ai/logging.py) reads `current()` for every record. Error ids
are short random strings that a person quotes to support and that the log line of the
error carries as `error_id`.
"""

from __future__ import annotations

import contextvars
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

from celery.signals import before_task_publish, task_postrun, task_prerun

#: The message header that carries the request id to a Celery task.
TASK_HEADER = "request_id"


@dataclass(frozen=True, slots=True)
class LogContext:
    request_id: str = ""
    conversation_id: str = ""
    message_id: str = ""


_current: contextvars.ContextVar[LogContext | None] = contextvars.ContextVar(
    "log_context", default=None
)


def current() -> LogContext:
    """The ids of the code running now; the audit context's request id when none is bound
    here (an HTTP request, a socket frame), else empty."""
    bound = _current.get()
    if bound is not None and bound.request_id:
        return bound
    request_id = _audit_request_id()
    if bound is None:
        return LogContext(request_id=request_id)
    return replace(bound, request_id=request_id)


@contextmanager
def bind(
    *, request_id: str = "", conversation_id: object = "", message_id: object = ""
) -> Iterator[LogContext]:
    """Log under these ids (empty ones keep what is bound already) until the block ends."""
    outer = current()
    context = LogContext(
        request_id=request_id or outer.request_id,
        conversation_id=str(conversation_id or outer.conversation_id),
        message_id=str(message_id or outer.message_id),
    )
    token = _current.set(context)
    try:
        yield context
    finally:
        _current.reset(token)


def new_error_id() -> str:
    """An id for one unexpected error: shown to the person, logged with the error."""
    return secrets.token_hex(6)


def _audit_request_id() -> str:
    # Read without building the whole audit context (that hashes the session per call).
    from audit import context as audit_context

    request = audit_context._current_request.get()
    if request is not None:
        return str(getattr(request, "request_id", "") or "")
    bound = audit_context._current.get()
    return bound.request_id if bound is not None else ""


# --- Celery: the request id travels with the task -------------------------------------------

_task_tokens: dict[str, contextvars.Token[LogContext | None]] = {}


@before_task_publish.connect
def _carry_request_id(headers: dict[str, Any] | None = None, **_: Any) -> None:
    request_id = current().request_id
    if headers is not None and request_id:
        headers.setdefault(TASK_HEADER, request_id)


@task_prerun.connect
def _bind_task(task_id: str | None = None, task: Any = None, **_: Any) -> None:
    """A task logs under the request id it was sent with (its own task id when none)."""
    from audit.context import request_id_from

    given = getattr(getattr(task, "request", None), TASK_HEADER, None)
    request_id = request_id_from(given if isinstance(given, str) else None)
    if not given and task_id:
        request_id = task_id
    if task_id:
        _task_tokens[task_id] = _current.set(LogContext(request_id=request_id))


@task_postrun.connect
def _unbind_task(task_id: str | None = None, **_: Any) -> None:
    token = _task_tokens.pop(task_id or "", None)
    if token is None:
        return
    try:
        _current.reset(token)
    except ValueError:  # set in another context (an eager task run elsewhere): just clear
        _current.set(None)
