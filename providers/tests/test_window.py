"""The window keeps the newest turns within the model's limit; the system prompt is kept."""

from __future__ import annotations

from providers.base import ChatMessage, ToolCall, ToolResult, ToolSpec
from providers.window import (
    estimate_tokens,
    fit_window,
    input_budget,
    merge_consecutive,
    message_tokens,
)


def turns(count: int, size: int = 40) -> list[ChatMessage]:
    return [
        ChatMessage("user" if n % 2 == 0 else "assistant", f"{n:03d}" + "x" * (size - 3))
        for n in range(count)
    ]


def test_keeps_the_newest_turns_within_the_budget() -> None:
    history = turns(21)  # user, assistant, …, user
    per_turn = message_tokens(history[0])
    window = fit_window(history, budget=per_turn * 5)
    assert window == history[-5:]
    assert sum(map(message_tokens, window)) <= per_turn * 5


def test_everything_fits_when_the_budget_allows() -> None:
    history = turns(7)
    assert fit_window(history, budget=10_000) == history


def test_the_current_turn_is_kept_even_alone() -> None:
    history = turns(5)
    assert fit_window(history, budget=1) == [history[-1]]


def test_the_window_never_starts_with_an_assistant_turn() -> None:
    history = turns(5)  # u a u a u
    per_turn = message_tokens(history[0])
    window = fit_window(history, budget=per_turn * 4)  # would be a u a u
    assert window[0].role == "user"
    assert window == history[-3:]


def test_tool_results_are_not_kept_without_their_call() -> None:
    call = ToolCall("c1", "search_internet", {"query": "x"})
    history = [
        ChatMessage("user", "question"),
        ChatMessage("assistant", "", tool_calls=(call,)),
        ChatMessage("user", "", tool_results=(ToolResult("c1", "search_internet", "r" * 400),)),
        ChatMessage("assistant", "answer"),
        ChatMessage("user", "follow-up"),
    ]
    budget = sum(message_tokens(m) for m in history[2:])
    window = fit_window(history, budget=budget)
    assert window == history[-1:]


def test_budget_keeps_room_for_reply_system_prompt_and_tools() -> None:
    tool = ToolSpec("search_internet", "Search the web.", {"type": "object"})
    budget = input_budget(
        context_window=1000, max_output_tokens=200, system_prompt="s" * 400, tools=[tool]
    )
    assert budget < 1000 - 200 - 100
    assert estimate_tokens("abcd") == 1 and estimate_tokens("abcde") == 2


def test_consecutive_user_turns_are_merged() -> None:
    merged = merge_consecutive(
        [ChatMessage("user", "a"), ChatMessage("user", "b"), ChatMessage("assistant", "c")]
    )
    assert merged == [ChatMessage("user", "a\n\nb"), ChatMessage("assistant", "c")]
