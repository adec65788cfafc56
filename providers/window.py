"""The conversation window: which earlier turns fit in a model's context.

Token counts are estimated, not measured: no tokenizer is downloaded at run time, and each
provider counts differently. The estimate is one token per four characters of text (JSON for
tool calls and results), plus four tokens of framing per message. It errs towards
overestimating for English prose, which keeps requests inside the real limit.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from providers.base import ChatMessage, ToolSpec

MESSAGE_OVERHEAD_TOKENS = 4


def estimate_tokens(text: str) -> int:
    """One token per four characters, rounded up; zero for no text."""
    return (len(text) + 3) // 4


def message_tokens(message: ChatMessage) -> int:
    tokens = MESSAGE_OVERHEAD_TOKENS + estimate_tokens(message.content)
    for call in message.tool_calls:
        tokens += estimate_tokens(call.name + json.dumps(dict(call.arguments)))
    for result in message.tool_results:
        tokens += estimate_tokens(result.content) + MESSAGE_OVERHEAD_TOKENS
    return tokens


def input_budget(
    *,
    context_window: int,
    max_output_tokens: int,
    system_prompt: str,
    tools: Sequence[ToolSpec] = (),
) -> int:
    """Tokens left for the conversation once the reply, system prompt and tools are counted."""
    fixed = estimate_tokens(system_prompt) + tools_tokens(tools)
    return context_window - max_output_tokens - fixed


def tools_tokens(tools: Sequence[ToolSpec]) -> int:
    """Estimated input tokens of the tools offered to a model (names, descriptions, schemas)."""
    return sum(
        estimate_tokens(tool.name + tool.description + json.dumps(dict(tool.parameters)))
        for tool in tools
    )


def fit_window(messages: Sequence[ChatMessage], *, budget: int) -> list[ChatMessage]:
    """The newest turns whose estimated size fits `budget`, oldest first.

    The last message (the turn being answered) is always kept. The window never starts with
    an assistant turn or with tool results whose call was dropped, which providers reject.
    """
    if not messages:
        return []
    kept: list[ChatMessage] = [messages[-1]]
    used = message_tokens(messages[-1])
    for message in reversed(messages[:-1]):
        cost = message_tokens(message)
        if used + cost > budget:
            break
        kept.append(message)
        used += cost
    kept.reverse()
    while len(kept) > 1 and (kept[0].role == "assistant" or kept[0].tool_results):
        kept.pop(0)
    return kept


def merge_consecutive(messages: Sequence[ChatMessage]) -> list[ChatMessage]:
    """Join neighbouring text turns of the same role (left by a failed reply), since several
    providers require user and assistant turns to alternate."""
    merged: list[ChatMessage] = []
    for message in messages:
        previous = merged[-1] if merged else None
        if (
            previous is not None
            and previous.role == message.role
            and not (previous.tool_calls or previous.tool_results)
            and not (message.tool_calls or message.tool_results)
        ):
            merged[-1] = ChatMessage(previous.role, f"{previous.content}\n\n{message.content}")
        else:
            merged.append(message)
    return merged
