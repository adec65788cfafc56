"""Log formatting that keeps stack traces (and the secrets they may hold) out of logs."""

from __future__ import annotations

import logging
import threading
import time


class NoTracebackFormatter(logging.Formatter):
    """Formats a record with its exception's type only, never the traceback or its text.

    An exception's message may quote request data or credentials (a provider SDK echoing a
    URL with a key, say), so only the class name is kept.
    """

    def format(self, record: logging.LogRecord) -> str:
        exc_info, exc_text, stack_info = record.exc_info, record.exc_text, record.stack_info
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        try:
            message = super().format(record)
        finally:
            record.exc_info, record.exc_text, record.stack_info = exc_info, exc_text, stack_info
        if exc_info and exc_info[0] is not None:
            message += f" [exception: {exc_info[0].__name__}]"
        return message


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
