"""Errors the chat answers with. `code` is machine-readable, the message is for people."""

from __future__ import annotations


class ChatError(Exception):
    """A request from the user could not be carried out; nothing was stored."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def not_found() -> ChatError:
    # The same answer for "does not exist" and "is not yours", so ids cannot be probed.
    return ChatError("not_found", "That conversation does not exist or is not yours.")
