"""Logs that are safe to ship: secrets masked, one line per record, no stack traces.

* `SecretsFilter` (on every handler) masks credentials in the message, its arguments and
  extra fields with the guardrails' detectors (guardrails/dlp.py: API keys, bearer tokens,
  AWS keys, passwords in URLs and settings, private keys), also behind percent-encoding.
* `LogContextFilter` (on every handler) stamps each record with the request id and, where
  known, the conversation and message ids (observability/logcontext.py), and the error id
  of an error a person was shown.
* `NoTracebackFormatter` (plain text, the embedded default) and `JsonFormatter` (JSON
  lines, production) keep an exception's type only, never its traceback or message, and
  never let a user-controlled newline start a forged line.

The settings are in the "Logging" block of enterprise_ai/settings.py; docs/operations.md
("Logs") describes the fields.
"""

from __future__ import annotations

import logging
import logging.config
import re
import threading
import time
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote

from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter as _JsonFormatter

from guardrails import dlp
from observability import logcontext

#: The context each line carries; the first always, the others when known.
CONTEXT_FIELDS = ("request_id", "conversation_id", "message_id", "error_id")
_STANDARD = frozenset(RESERVED_ATTRS) | {"message", "asctime"}

# Control characters (and Unicode line breaks) written as escapes: a newline in a requested
# path or a user agent cannot start a line of its own. Tabs stay.
_ESCAPES = {c: f"\\x{c:02x}" for c in [*range(0x20), 0x7F, 0x85] if c != 0x09}
_ESCAPES |= {0x0A: "\\n", 0x0D: "\\r", 0x2028: "\\u2028", 0x2029: "\\u2029"}

# Percent-escapes and backslash escapes (as Django writes a requested path into its log).
_ESCAPE_SEQUENCE = re.compile(
    r"%[0-9A-Fa-f]{2}|\\(?:x[0-9A-Fa-f]{2}|u[0-9A-Fa-f]{4}|U[0-9A-Fa-f]{8}|[0abfnrtv\\'\"])"
)


def configure(config: dict[str, Any]) -> None:
    """settings.LOGGING_CONFIG: the LOGGING dict, and Python's warnings as log records (of
    `py.warnings`), so that they too are masked and, in production, JSON lines."""
    logging.config.dictConfig(config)
    logging.captureWarnings(True)


def mask(text: str) -> str:
    """`text` with every credential replaced by a typed placeholder (`[TOKEN_1]`, …).

    Most lines hold none of the detectors' hints and return at once. An escape glued to a
    key (`/nope%0Ask-proj-…` in daphne's access log, `/nope\\nsk-proj-…` in Django's request
    log, which escapes the path) hides the key's start: the escapes are read as spaces of the
    same length, so the key is found and masked where it stands. A secret that is itself
    percent-encoded is found in the decoded text, which is then what is logged.
    """
    if not dlp.may_hold_secret(text):
        return text
    scanned = text
    if "%" in text or "\\" in text:
        scanned = _ESCAPE_SEQUENCE.sub(lambda m: " " * len(m.group()), text)
    findings = dlp.scan(scanned, dlp.SECRET_DETECTORS)
    if findings:
        text = dlp.redact(text, findings, {})
    if "%" in text:
        decoded = unquote(text)
        if decoded != text and dlp.may_hold_secret(decoded):
            findings = dlp.scan(decoded, dlp.SECRET_DETECTORS)
            if findings:
                return dlp.redact(decoded, findings, {})
    return text


def _masked(value: Any) -> Any:
    """Strings masked, containers walked, numbers kept, other objects as masked text."""
    if isinstance(value, str):
        return mask(value)
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, dict):
        return {str(k): _masked(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_masked(v) for v in value]
    return mask(str(value))


def escape(line: str) -> str:
    return line.translate(_ESCAPES)


def exception_type(record: logging.LogRecord) -> str:
    exc_info = record.exc_info
    if exc_info and exc_info[0] is not None:
        return mask(exc_info[0].__name__)
    return ""


class SecretsFilter(logging.Filter):
    """Masks credentials in a record before any handler formats it (it never drops one)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "_secrets_masked", False):
            return True
        try:
            message: Any = record.getMessage()
        except Exception:  # arguments that do not fit the format: keep both, as text
            message = f"{record.msg!s} {record.args!r}"
        if isinstance(record.msg, dict):  # a JSON formatter's "message as fields"
            record.msg = _masked(record.msg)
        else:
            record.msg = mask(str(message))
            record.args = None
        for key, value in list(record.__dict__.items()):
            if key not in _STANDARD and isinstance(value, str | dict | list | tuple):
                record.__dict__[key] = _masked(value)
        record._secrets_masked = True
        return True


class LogContextFilter(logging.Filter):
    """Adds request_id, conversation_id, message_id and error_id to a record (empty when
    unknown). Ids passed in `extra=` win; Django's request log lines, emitted after the
    request's context has ended, take the id from the request they carry."""

    def filter(self, record: logging.LogRecord) -> bool:
        add_context(record)
        return True


def add_context(record: logging.LogRecord) -> None:
    if getattr(record, "_log_context", False):
        return
    context = logcontext.current()
    request = getattr(record, "request", None)
    values = {
        "request_id": context.request_id or getattr(request, "request_id", ""),
        "conversation_id": context.conversation_id,
        "message_id": context.message_id,
        "error_id": getattr(request, "error_id", ""),
    }
    for name, value in values.items():
        if not getattr(record, name, ""):
            setattr(record, name, str(value or ""))
    record._log_context = True


class NoTracebackFormatter(logging.Formatter):
    """Plain text: time, level, logger, the context ids that are known, the message, and
    an exception's type only (never the traceback or its text).

    An exception's message may quote request data or credentials (a provider SDK echoing a
    URL with a key, say), so only the class name is kept.
    """

    def format(self, record: logging.LogRecord) -> str:
        add_context(record)
        context = " ".join(
            f"{name}={getattr(record, name)}" for name in CONTEXT_FIELDS if getattr(record, name)
        )
        record.log_context = f"{context} " if context else ""
        exc_info, exc_text, stack_info = record.exc_info, record.exc_text, record.stack_info
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        try:
            message = super().format(record)
        finally:
            record.exc_info, record.exc_text, record.stack_info = exc_info, exc_text, stack_info
        if not getattr(record, "_secrets_masked", False):
            message = mask(message)
        if exc_info and exc_info[0] is not None:
            message += f" [exception: {exception_type(record)}]"
        return escape(message)


class JsonFormatter(_JsonFormatter):
    """One JSON object per line: time (ISO 8601, UTC), level, logger, message, request_id,
    then conversation_id, message_id, error_id and `exception` (its type) when known, and
    any extra fields. Tracebacks are left out, as in plain text."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("rename_fields", {"levelname": "level", "name": "logger"})
        super().__init__(["time", "levelname", "name", "message", "request_id"], *args, **kwargs)

    def format(self, record: logging.LogRecord) -> str:
        add_context(record)
        # Set for this formatter only: other handlers share the record.
        created = datetime.fromtimestamp(record.created, UTC)
        fields = record.__dict__
        fields["time"] = created.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        exception = exception_type(record)
        if exception:
            fields["exception"] = exception
        exc_info, exc_text, stack_info = record.exc_info, record.exc_text, record.stack_info
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        try:
            return super().format(record)
        finally:
            record.exc_info, record.exc_text, record.stack_info = exc_info, exc_text, stack_info
            fields.pop("time", None)
            fields.pop("exception", None)

    def process_log_record(self, log_data: dict[str, Any]) -> dict[str, Any]:
        # Django's request object: its id is logged, the rest would only repeat the path.
        log_data.pop("request", None)
        for name in CONTEXT_FIELDS[1:]:
            if not log_data.get(name):
                log_data.pop(name, None)
        return {key: _masked(value) for key, value in log_data.items()}


class Throttled:
    """Logs a repeated warning at most once per `seconds`, saying how many were held back.

    An outage (Redis restarting, say) makes every reply's every batch fail the same way:
    one line every few seconds tells the operator as much as thousands would.
    """

    def __init__(self, logger: logging.Logger, seconds: float = 10.0) -> None:
        self.logger = logger
        self.seconds = seconds
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def warning(self, message: str, *args: object) -> None:
        now = time.monotonic()
        with self._lock:
            if now - self._last.get(message, -self.seconds) < self.seconds:
                self._held[message] = self._held.get(message, 0) + 1
                return
            self._last[message] = now
            held = self._held.pop(message, 0)
        if held:
            self.logger.warning(message + " (and %d more like it)", *args, held)
        else:
            self.logger.warning(message, *args)
