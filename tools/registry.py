"""The tool registry: what each tool is, who may use it, and running it safely.

A tool has a name, a description and a JSON schema (offered to the model), a callable, a
timeout and an optional Django permission. It runs with the permissions of the user who
sent the message: a tool that user may not use is neither offered nor run. Whatever
happens, running a tool yields a `ToolResult` for the model; failures become a plain
sentence, never a stack trace.
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
from providers.base import ToolCall, ToolResult, ToolSpec

logger = logging.getLogger(__name__)

MAX_RESULT_CHARS = 8000
_executor = ThreadPoolExecutor(max_workers=8, thread_name_prefix="tool")


class ToolFailed(Exception):
    """A tool could not do its job. The message is shown to the model (and the user)."""


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


def _allowed(tool: Tool, user: User) -> bool:
    return (
        user.is_active
        and tool.is_enabled()
        and (tool.permission is None or user.has_perm(tool.permission))
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
    """Run the tool a model asked for, as `user`. Never raises: failures become results."""
    _load_builtin_tools()
    tool = TOOLS.get(call.name)
    if tool is None or not _allowed(tool, user):
        # Seam: the security issue audits refused tool calls here (OWASP LLM06).
        return ToolResult(call.id, call.name, f"The tool '{call.name}' is not available.", True)
    try:
        validate_arguments(tool.parameters, call.arguments)
        future = _executor.submit(_run_with_connection_cleanup, tool, call.arguments, user)
        content = future.result(timeout=tool.timeout_seconds)
    except FutureTimeout:
        return ToolResult(call.id, call.name, f"The tool '{call.name}' took too long.", True)
    except ToolFailed as exc:
        return ToolResult(call.id, call.name, str(exc), True)
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
        from tools import search  # noqa: F401  (registers search_internet)

        _loaded = True
