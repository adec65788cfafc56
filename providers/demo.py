"""The offline demo model: a deterministic, Markdown-formatted reply streamed token by token.

It stands in for a real model when no AI service is configured, so the whole chat path
(consumer, task, channel layer, UI) can be seen and tested without credentials or network.
Pacing: DEMO_FIRST_TOKEN_DELAY_MS and DEMO_TOKENS_PER_SECOND, or per model the options
`first_token_delay_ms` and `tokens_per_second`.

Token counts are estimates: roughly four characters per token for the input (no tokenizer
download at run time) and one emitted piece per output token.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Iterator

from django.conf import settings

from providers.base import ChatRequest, Finish, Provider, StopReason, StreamEvent, TextDelta, Usage

_PIECES = re.compile(r"\S+\s*|\s+")

_TOPICS = [
    "Break the work into small steps and check each one before moving on.",
    "Write down the assumptions, then test the riskiest one first.",
    "Ask the people who will use the result what *done* looks like to them.",
    "Keep a short log of decisions so the next person knows why, not just what.",
    "Prefer a boring, proven approach unless there is a clear reason not to.",
    "Measure before optimising; the slow part is rarely where you expect.",
]


def estimate_tokens(text: str) -> int:
    """A documented estimate: one token per four characters, at least one for any text."""
    return max(1, (len(text) + 3) // 4) if text else 0


def demo_reply(prompt: str) -> str:
    """The demo model's whole reply to `prompt`. The same prompt always gets the same reply."""
    digest = hashlib.sha256(prompt.encode("utf-8")).digest()
    first_line = prompt.strip().splitlines()[0] if prompt.strip() else ""
    quoted = first_line[:200] + ("…" if len(first_line) > 200 else "")
    points = [_TOPICS[(digest[i] + i) % len(_TOPICS)] for i in range(3)]
    return (
        "This is the **demo model**: no external AI service is configured, so this reply "
        "is generated offline and says nothing about your question.\n\n"
        f"> {quoted}\n\n"
        "Some general advice while you wait for a real model:\n\n"
        + "".join(f"{n}. {point}\n" for n, point in enumerate(points, start=1))
        + "\nAn administrator can connect AWS Bedrock, OpenAI, Azure OpenAI or an on-premises "
        "model; see the `docs/` folder for how."
    )


class DemoProvider(Provider):
    name = "demo"
    supports_tools = False  # canned text: it never asks for a tool

    def stream(self, request: ChatRequest) -> Iterator[StreamEvent]:
        options = self.spec.options
        first_token_delay = (
            float(options.get("first_token_delay_ms", settings.DEMO_FIRST_TOKEN_DELAY_MS)) / 1000
        )
        tokens_per_second = float(options.get("tokens_per_second", settings.DEMO_TOKENS_PER_SECOND))
        prompt = request.messages[-1].content if request.messages else ""
        pieces = _PIECES.findall(demo_reply(prompt))

        input_tokens = estimate_tokens(request.system_prompt) + sum(
            estimate_tokens(message.content) for message in request.messages
        )
        stop_reason = StopReason.END_TURN
        if len(pieces) > request.max_output_tokens:
            pieces = pieces[: request.max_output_tokens]
            stop_reason = StopReason.MAX_TOKENS

        time.sleep(first_token_delay)
        interval = 1 / tokens_per_second
        started = time.monotonic()
        for index, piece in enumerate(pieces):
            # Pace against the start time, not the previous piece, so the rate holds even
            # when the consumer of this iterator is slow.
            delay = started + index * interval - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            yield TextDelta(piece)
        yield Usage(input_tokens=input_tokens, output_tokens=len(pieces))
        yield Finish(stop_reason)
