"""Refused tool calls (OWASP LLM06): the model is told no, and the audit trail records it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from audit import context as audit_context
from audit.models import AuditEvent
from providers.base import ToolCall
from tools import registry
from tools.registry import Tool, ToolRefused, run_tool

pytestmark = pytest.mark.django_db


def refusals() -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(action="tool.refused").order_by("sequence"))


@pytest.fixture
def hr_files(monkeypatch) -> list[str]:
    """A tool only holders of accounts.view_user may use; records who it ran for."""
    ran_for: list[str] = []

    def read_files(arguments: Mapping[str, Any], user: Any) -> str:
        ran_for.append(user.username)
        return "files"

    tool = Tool(
        name="read_hr_files",
        description="Read HR files.",
        parameters={"type": "object", "properties": {}},
        run=read_files,
        permission="accounts.view_user",
    )
    monkeypatch.setitem(registry.TOOLS, tool.name, tool)
    return ran_for


def test_an_unknown_tool_is_refused_and_audited(owner) -> None:
    with audit_context.bind(audit_context.AuditContext(request_id="req-unknown-1")):
        result = run_tool(ToolCall("c1", "delete_everything", {"who": "all"}), user=owner)
    assert result.is_error and "not available" in result.content
    [event] = refusals()
    assert event.actor_id == owner.pk and event.outcome == "denied"
    assert event.details == {"tool": "delete_everything", "reason": "unknown_tool"}
    assert event.request_id == "req-unknown-1"
    assert (event.target_type, event.target_id) == ("", "")


def test_a_tool_the_user_may_not_use_is_refused_and_audited(colleague, hr_files) -> None:
    result = run_tool(ToolCall("c2", "read_hr_files", {}), user=colleague)
    assert result.is_error and "not available" in result.content
    assert hr_files == []
    [event] = refusals()
    assert event.actor_id == colleague.pk
    assert event.details == {"tool": "read_hr_files", "reason": "not_permitted"}


def test_an_inactive_user_may_use_no_tool(owner, hr_files) -> None:
    from django.contrib.auth.models import Permission

    owner.user_permissions.add(Permission.objects.get(codename="view_user"))
    owner.is_active = False
    owner.save(update_fields=["is_active"])
    result = run_tool(ToolCall("c3", "read_hr_files", {}), user=owner)
    assert result.is_error and hr_files == []
    assert refusals()[0].details["reason"] == "not_permitted"


def test_a_permitted_call_is_not_audited_as_refused(owner, hr_files) -> None:
    from django.contrib.auth.models import Permission

    owner.user_permissions.add(Permission.objects.get(codename="view_user"))
    result = run_tool(ToolCall("c4", "read_hr_files", {}), user=owner)
    assert not result.is_error and hr_files == ["alice"]
    assert refusals() == []


def test_a_tool_that_refuses_is_audited_with_its_target(owner, monkeypatch) -> None:
    def guarded(arguments: Mapping[str, Any], user: Any) -> str:
        raise ToolRefused(
            "not_owner",
            target=("conversation", "0b7c1d1e-0000-4000-8000-000000000001"),
            message="No such thing.",
        )

    tool = Tool("guarded", "Guarded.", {"type": "object", "properties": {}}, run=guarded)
    monkeypatch.setitem(registry.TOOLS, "guarded", tool)
    result = run_tool(ToolCall("c5", "guarded", {"note": "free text " * 50}), user=owner)
    assert (result.content, result.is_error) == ("No such thing.", True)
    [event] = refusals()
    assert (event.target_type, event.target_id) == (
        "conversation",
        "0b7c1d1e-0000-4000-8000-000000000001",
    )
    assert event.details == {"tool": "guarded", "reason": "not_owner"}  # no arguments
    assert "free text" not in str(event.details)


def test_a_model_chosen_tool_name_is_bounded_in_the_trail(owner) -> None:
    run_tool(ToolCall("c6", "x" * 5000, {}), user=owner)
    assert refusals()[0].details["tool"] == "x" * 100
