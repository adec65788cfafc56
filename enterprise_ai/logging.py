"""Log formatting that keeps stack traces (and the secrets they may hold) out of logs."""

from __future__ import annotations

import logging


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
