from __future__ import annotations

import pytest

from providers.base import ChatMessage, ChatRequest, Finish, ModelSpec, StopReason, TextDelta, Usage
from providers.demo import DemoProvider, demo_reply, estimate_tokens
from providers.registry import UnknownModel, get_model, provider_for

FAST = ModelSpec(
    "demo", "Demo", "demo", "demo-1", True, {"first_token_delay_ms": 0, "tokens_per_second": 10_000}
)


def request(text: str, max_tokens: int = 1000) -> ChatRequest:
    return ChatRequest(
        model="demo-1",
        system_prompt="sys",
        messages=[ChatMessage("user", text)],
        max_output_tokens=max_tokens,
    )


def test_streams_a_deterministic_reply_then_usage_then_finish() -> None:
    events = list(DemoProvider(FAST).stream(request("hello")))
    deltas = [e for e in events if isinstance(e, TextDelta)]
    assert len(deltas) > 20
    assert "".join(d.text for d in deltas) == demo_reply("hello")
    assert events[-2] == Usage(
        input_tokens=estimate_tokens("sys") + estimate_tokens("hello"), output_tokens=len(deltas)
    )
    assert events[-1] == Finish(StopReason.END_TURN)
    assert list(DemoProvider(FAST).stream(request("hello"))) == events


def test_different_prompts_get_different_replies() -> None:
    assert demo_reply("alpha") != demo_reply("beta")
    assert "demo model" in demo_reply("alpha")


def test_max_output_tokens_truncates_with_the_reason() -> None:
    events = list(DemoProvider(FAST).stream(request("hello", max_tokens=5)))
    assert len([e for e in events if isinstance(e, TextDelta)]) == 5
    assert events[-1] == Finish(StopReason.MAX_TOKENS)


def test_token_estimate() -> None:
    assert estimate_tokens("") == 0
    assert estimate_tokens("abc") == 1
    assert estimate_tokens("a" * 400) == 100


@pytest.mark.django_db
def test_the_seeded_demo_model_is_served_by_the_demo_provider() -> None:
    spec = get_model("demo")
    assert spec.is_demo and spec.provider == "demo"
    assert isinstance(provider_for(spec), DemoProvider)
    with pytest.raises(UnknownModel):
        get_model("nope")
