"""The tool registry: what each tool is, who may use it, and running it safely.

A tool has a name, a description and a JSON schema (offered to the model), a callable, a
timeout and an optional Django permission. It runs with the permissions of the user who
sent the message: a tool that user may not use is neither offered nor run. Whatever
happens, running a tool yields a `ToolResult` for the model; failures become a plain
sentence, never a stack trace.

Refusals (OWASP LLM06, excessive agency) are recorded as `tool.refused` audit events: a call
for a tool that does not exist, is switched off, or the user may not use, and a call a tool
itself refuses by raising `ToolRefused` — typically an object the user may not touch. The
model is told as little as possible: the same sentence whether an object is someone else's
or does not exist.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any

from django.db import connections

from accounts.models import User
from audit.catalogue import AuditAction, AuditOutcome
from audit.services import audit_record
from providers.base import ToolCall, ToolResult, ToolSpec

logger = logging.getLogger(__name__)

MAX_RESULT_CHARS = 8000
_executor = ThreadPoolExecutor(max_workers=8, thread_name_prefix="tool")


class ToolFailed(Exception):
    """A tool could not do its job. The message is shown to the model (and the user)."""


class ToolRefused(Exception):
    """The user the tool runs for may not do what the call asks.

    `reason` is a short code for the audit trail (`not_owner`, `not_found`, ...), `target`
    the (TargetType, id) the call was about, if any, and `message` the only thing the model
    learns. `run_tool` records the refusal and turns it into a result.
    """

    def __init__(self, reason: str, *, target: tuple[str, str] | None = None, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.target = target
        self.message = message


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    parameters: Mapping[str, Any]
    run: Callable[[Mapping[str, Any], User], str]
    timeout_seconds: float = 15.0
    # A Django permission ("app_label.codename") the user must hold, or None for everyone.
    permission: str | None = None
    is_enabled: Callable[[], bool] = field(default=lambda: True)

    def spec(self) -> ToolSpec:
        return ToolSpec(self.name, self.description, self.parameters)


TOOLS: dict[str, Tool] = {}


def register(tool: Tool) -> Tool:
    TOOLS[tool.name] = tool
    return tool


def _refusal(tool: Tool | None, user: User) -> str | None:
    """Why `user` may not use `tool` (an audit reason), or None when they may."""
    if tool is None:
        return "unknown_tool"
    if not tool.is_enabled():
        return "disabled"
    if not user.is_active or (tool.permission is not None and not user.has_perm(tool.permission)):
        return "not_permitted"
    return None


def _allowed(tool: Tool, user: User) -> bool:
    return _refusal(tool, user) is None


def _audit_refusal(
    call: ToolCall, *, user: User, reason: str, target: tuple[str, str] | None = None
) -> None:
    # Facts only: the tool's name (model-chosen text, so bounded) and ids, never arguments.
    audit_record(
        action=AuditAction.TOOL_REFUSED,
        actor=user,
        target=target,
        outcome=AuditOutcome.DENIED,
        details={"tool": call.name[:100], "reason": reason},
    )


def tools_for(user: User) -> list[Tool]:
    """The tools offered to models on behalf of `user`: enabled ones the user may use."""
    _load_builtin_tools()
    return [tool for tool in TOOLS.values() if _allowed(tool, user)]


def validate_arguments(schema: Mapping[str, Any], arguments: Mapping[str, Any]) -> None:
    """Check the model's arguments against the schema's object properties. Raises ToolFailed."""
    if not isinstance(arguments, Mapping):
        raise ToolFailed("The tool's arguments must be an object.")
    properties: Mapping[str, Any] = schema.get("properties", {})
    for name in schema.get("required", []):
        if name not in arguments:
            raise ToolFailed(f"The argument '{name}' is required.")
    types: dict[str, type | tuple[type, ...]] = {
        "string": str,
        "integer": int,
        "number": (int, float),
        "boolean": bool,
        "object": dict,
    }
    for name, value in arguments.items():
        if name not in properties:
            if schema.get("additionalProperties") is False:
                raise ToolFailed(f"Unknown argument '{name}'.")
            continue
        expected = types.get(properties[name].get("type", ""))
        if expected is not None and (
            not isinstance(value, expected) or (expected is int and isinstance(value, bool))
        ):
            raise ToolFailed(f"The argument '{name}' must be of type {properties[name]['type']}.")
        if isinstance(value, str) and len(value) > properties[name].get("maxLength", 10_000):
            raise ToolFailed(f"The argument '{name}' is too long.")


def _run_with_connection_cleanup(tool: Tool, arguments: Mapping[str, Any], user: User) -> str:
    try:
        return tool.run(arguments, user)
    finally:
        connections.close_all()


def run_tool(call: ToolCall, *, user: User) -> ToolResult:
    """Run the tool a model asked for, as `user`.

    Failures of the tool become results. A refused call (unknown, disabled or not permitted
    tool, or `ToolRefused`) becomes a result too, and is recorded in the audit trail with
    `user` as the actor and the bound audit context's request id; only a failure to write
    that record propagates (like every `audit_record` failure).
    """
    _load_builtin_tools()
    tool = TOOLS.get(call.name)
    reason = _refusal(tool, user)
    if tool is None or reason is not None:
        _audit_refusal(call, user=user, reason=reason or "unknown_tool")
        return ToolResult(call.id, call.name, f"The tool '{call.name}' is not available.", True)
    try:
        validate_arguments(tool.parameters, call.arguments)
        future = _executor.submit(_run_with_connection_cleanup, tool, call.arguments, user)
        content = future.result(timeout=tool.timeout_seconds)
    except FutureTimeout:
        return ToolResult(call.id, call.name, f"The tool '{call.name}' took too long.", True)
    except ToolFailed as exc:
        return ToolResult(call.id, call.name, str(exc), True)
    except ToolRefused as exc:
        # Audited here, not in the tool: the audit context is bound to this thread only.
        _audit_refusal(call, user=user, reason=exc.reason, target=exc.target)
        return ToolResult(call.id, call.name, exc.message, True)
    except Exception as exc:
        logger.error("tool %s failed: %s", call.name, type(exc).__name__)
        return ToolResult(call.id, call.name, f"The tool '{call.name}' failed.", True)
    if len(content) > MAX_RESULT_CHARS:
        content = content[:MAX_RESULT_CHARS] + "\n[truncated]"
    return ToolResult(call.id, call.name, content)


def describe_call(call: ToolCall) -> str:
    return json.dumps(dict(call.arguments), ensure_ascii=False, sort_keys=True)


_loaded = False


def _load_builtin_tools() -> None:
    global _loaded
    if not _loaded:
        from tools import recall, search  # noqa: F401  (they register their tools)

        _loaded = True
