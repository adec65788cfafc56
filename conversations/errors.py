"""Errors the chat answers with. `code` is machine-readable, the message is for people."""

from __future__ import annotations


class ChatError(Exception):
    """A request from the user could not be carried out; nothing was stored."""

    def __init__(
        self, code: str, reason: str, *, retry_after: int | None = None, error_id: str = ""
    ) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
        # Seconds after which the same request may succeed (rate limits), else None.
        self.retry_after = retry_after
        # An unexpected error's id (`internal`): in the reason, and on its log line.
        self.error_id = error_id


def not_found() -> ChatError:
    # The same answer for "does not exist" and "is not yours", so ids cannot be probed.
    return ChatError("not_found", "That conversation does not exist or is not yours.")


def with_error_id(reason: str, error_id: str) -> str:
    """`reason` and the id of an unexpected error, for the person to quote to support; the
    log line of the error carries the same id (`error_id`)."""
    return f"{reason} If it keeps happening, quote error id {error_id}."


def internal(error_id: str) -> ChatError:
    """An unexpected failure of a frame: a generic reason and the error's id, never details."""
    reason = with_error_id("Something went wrong. Please try again.", error_id)
    return ChatError("internal", reason, error_id=error_id)
