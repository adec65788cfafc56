"""The tool registry and search_internet against a loopback Google Custom Search double."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from django.contrib.auth.models import Permission

from providers.base import ToolCall
from providers.testing.google_search import GoogleSearchDouble
from tools import registry
from tools.registry import Tool, run_tool, tools_for

pytestmark = pytest.mark.django_db


@pytest.fixture
def google(settings) -> Iterator[GoogleSearchDouble]:
    with GoogleSearchDouble(api_key="k-123", engine_id="cx-9") as double:
        settings.GOOGLE_SEARCH_API_KEY = "k-123"
        settings.GOOGLE_SEARCH_ENGINE_ID = "cx-9"
        settings.GOOGLE_SEARCH_ENDPOINT = double.endpoint
        settings.GOOGLE_SEARCH_MAX_RESULTS = 3
        yield double


def search(query: object, **extra: object) -> ToolCall:
    return ToolCall("call-1", "search_internet", {"query": query, **extra})


def test_search_is_not_offered_without_a_key(owner, settings) -> None:
    settings.GOOGLE_SEARCH_API_KEY = ""
    assert "search_internet" not in [t.name for t in tools_for(owner)]
    result = run_tool(search("x"), user=owner)
    assert result.is_error and "not available" in result.content


def test_search_returns_truncated_results_with_their_urls(owner, google) -> None:
    assert "search_internet" in [t.name for t in tools_for(owner)]
    result = run_tool(search("django channels", num_results=10), user=owner)
    assert not result.is_error and result.call_id == "call-1"
    assert google.requests[-1].params["q"] == "django channels"
    assert google.requests[-1].params["num"] == "3"  # capped by GOOGLE_SEARCH_MAX_RESULTS
    for expected in google.results_for("django channels", 3):
        assert expected["link"] in result.content
        assert expected["title"] in result.content
        assert expected["snippet"] not in result.content  # snippets are truncated
    assert "not instructions" in result.content


@pytest.mark.parametrize(
    ("fault", "reason"),
    [("429", "busy"), ("500", "refused"), ("stall", "took too long")],
)
def test_search_failures_become_plain_results(owner, google, settings, fault, reason) -> None:
    google.faults.append(fault)
    google.stall_seconds = 1.0
    settings.GOOGLE_SEARCH_TIMEOUT_SECONDS = 0.3
    result = run_tool(search("x"), user=owner)
    assert result.is_error and reason in result.content
    assert "k-123" not in result.content


def test_bad_arguments_are_refused_before_any_request(owner, google) -> None:
    for call in [
        search(42),
        ToolCall("c", "search_internet", {}),
        search("x", extra=1),
        search("x" * 600),
    ]:
        result = run_tool(call, user=owner)
        assert result.is_error
    assert google.requests == []


def test_a_tool_runs_only_with_the_users_permissions(owner, colleague, monkeypatch) -> None:
    ran_for: list[str] = []

    def read_files(arguments: object, user: Any) -> str:
        ran_for.append(user.username)
        return "files"

    guarded = Tool(
        name="read_hr_files",
        description="Read HR files.",
        parameters={"type": "object", "properties": {}},
        run=read_files,
        permission="accounts.view_user",
    )
    monkeypatch.setitem(registry.TOOLS, guarded.name, guarded)
    owner.user_permissions.add(Permission.objects.get(codename="view_user"))
    assert "read_hr_files" in [t.name for t in tools_for(owner)]
    assert "read_hr_files" not in [t.name for t in tools_for(colleague)]
    refused = run_tool(ToolCall("c", "read_hr_files", {}), user=colleague)
    assert refused.is_error and ran_for == []
    allowed = run_tool(ToolCall("c", "read_hr_files", {}), user=owner)
    assert not allowed.is_error and ran_for == ["alice"]


def test_a_slow_tool_times_out(owner, monkeypatch) -> None:
    import time

    def sleepy(arguments: object, user: object) -> str:
        time.sleep(1)
        return "late"

    slow = Tool("slow", "Slow.", {"type": "object"}, run=sleepy, timeout_seconds=0.2)
    monkeypatch.setitem(registry.TOOLS, "slow", slow)
    result = run_tool(ToolCall("c", "slow", {}), user=owner)
    assert result.is_error and "took too long" in result.content
