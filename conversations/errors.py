"""Errors the chat answers with. `code` is machine-readable, the message is for people."""

from __future__ import annotations


class ChatError(Exception):
    """A request from the user could not be carried out; nothing was stored."""

    def __init__(self, code: str, reason: str, *, retry_after: int | None = None) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
        # Seconds after which the same request may succeed (rate limits), else None.
        self.retry_after = retry_after


def not_found() -> ChatError:
    # The same answer for "does not exist" and "is not yours", so ids cannot be probed.
    return ChatError("not_found", "That conversation does not exist or is not yours.")
