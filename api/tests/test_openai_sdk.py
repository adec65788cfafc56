"""The OpenAI-compatible endpoint with the official `openai` SDK, unchanged, against a real
server (daphne in a subprocess, as api/tests/test_rest.py): the completions, the stream, the
models, and the SDK's own exception for every refusal of the governance path. A loopback
OpenAI double stands in for an upstream model where the test needs to see what the provider
received."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from providers.testing.openai_server import OpenAIDouble
from tests.e2e.conftest import RestartableServer

pytestmark = pytest.mark.e2e

# Above what one person sends in this module, so that only the limit test meets it.
MESSAGES_PER_MINUTE = 40
CARD = "4111 1111 1111 1111"

SETUP = """
import json
from datetime import timedelta
from decimal import Decimal
from django.utils import timezone
from accounts.api_keys import api_key_create, api_key_revoke
from accounts.models import ApiKey, User
from costs.models import Budget, ModelPrice
from providers.models import AIModel

people = {name: User.objects.create_user(username=name, email=f"{name}@example.com",
                                         password="x-pw-1")
          for name in ("alice", "dave", "erin")}
scopes = ["chat", "models:read"]
keys = {name: api_key_create(owner=user, name="sdk", scopes=scopes, actor=None)[1]
        for name, user in people.items()}
_, keys["read_only"] = api_key_create(owner=people["alice"], name="read", scopes=["models:read"],
                                      actor=None)
revoked, keys["revoked"] = api_key_create(owner=people["alice"], name="gone", scopes=scopes,
                                          actor=None)
api_key_revoke(key=revoked, actor=people["alice"])
expired, keys["expired"] = api_key_create(owner=people["alice"], name="old", scopes=scopes,
                                          actor=None)
ApiKey.objects.filter(pk=expired.pk).update(expires_at=timezone.now() - timedelta(minutes=1))
AIModel.objects.create(key="restricted", display_name="Restricted", provider="demo",
                       provider_model_id="demo-1", available_to_everyone=False)
AIModel.objects.create(key="slow-demo", display_name="Slow demo", provider="demo",
                       provider_model_id="demo-1", available_to_everyone=True,
                       options={"tokens_per_second": 5})
AIModel.objects.create(key="upstream", display_name="Upstream", provider="openai-compatible",
                       provider_model_id="double-model", available_to_everyone=True,
                       context_window=16384, max_output_tokens=2048,
                       options={"base_url": UPSTREAM})
ModelPrice.objects.create(model=AIModel.objects.get(key="demo"), input_per_million=Decimal("3"),
                          output_per_million=Decimal("15"),
                          effective_from=timezone.now() - timedelta(days=1))
Budget.objects.create(name="Erin's pilot", scope="user", user=people["erin"], period="monthly",
                      limit_amount=Decimal("0"))
# Per-key limits: a key allowed two requests a minute, a key with a budget of its own.
frank = User.objects.create_user(username="frank", email="frank@example.com", password="x-pw-1")
_, keys["two_a_minute"] = api_key_create(owner=frank, name="slow", scopes=scopes, actor=None,
                                         rate_limit_per_minute=2)
budgeted, keys["budgeted"] = api_key_create(owner=people["alice"], name="capped", scopes=scopes,
                                            actor=None, budget_limit=Decimal("0"))
keys["budgeted_prefix"] = budgeted.prefix
gina = User.objects.create_user(username="gina", email="gina@example.com", password="x-pw-1")
_, keys["inactive"] = api_key_create(owner=gina, name="left", scopes=scopes, actor=None)
User.objects.filter(pk=gina.pk).update(is_active=False)
AIModel.objects.create(key="tiny", display_name="Tiny", provider="demo",
                       provider_model_id="demo-1", available_to_everyone=True,
                       context_window=600, max_output_tokens=100)
print(json.dumps(keys))
"""


@dataclass(frozen=True)
class Site:
    server: RestartableServer
    keys: dict[str, str]
    upstream: OpenAIDouble

    def client(self, key: str = "alice") -> openai.OpenAI:
        return openai.OpenAI(
            base_url=f"{self.server.base_url}/v1",
            api_key=self.keys.get(key, key),
            max_retries=0,
            timeout=30,
        )

    def python(self, code: str) -> str:
        return self.server.manage("shell", "-c", code).strip().splitlines()[-1]

    @contextmanager
    def policy(self, **fields: str) -> Iterator[None]:
        """The guardrail policy with `fields` set, as it was afterwards."""
        names = json.dumps(list(fields))
        before = self.python(
            "import json; from guardrails.models import GuardrailPolicy; p = "
            f"GuardrailPolicy.current(); print(json.dumps({{n: getattr(p, n) for n in {names}}}))"
        )
        self._set_policy(fields)
        try:
            yield
        finally:
            self._set_policy(json.loads(before))

    def _set_policy(self, fields: dict[str, str]) -> None:
        self.python(
            "from guardrails.models import GuardrailPolicy; p = GuardrailPolicy.current()\n"
            f"for n, v in {fields!r}.items(): setattr(p, n, v)\n"
            "p.full_clean(); p.save(); print('ok')"
        )

    def stored_reply(self, completion_id: str) -> tuple[str, str]:
        """(content, conversation source) of the reply a completion id names."""
        public_id = uuid.UUID(completion_id.removeprefix("chatcmpl-"))
        content, source = json.loads(
            self.python(
                "import json; from conversations.models import Message; m = Message.objects"
                f".select_related('conversation').get(public_id='{public_id}'); "
                "print(json.dumps([m.content, m.conversation.source]))"
            )
        )
        return content, source


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    data_dir: Path = tmp_path_factory.mktemp("openai-api")
    with OpenAIDouble() as upstream:
        server = RestartableServer(
            data_dir,
            {
                "DEMO_FIRST_TOKEN_DELAY_MS": "0",
                "DEMO_TOKENS_PER_SECOND": "400",
                "CHAT_MESSAGES_PER_MINUTE": str(MESSAGES_PER_MINUTE),
            },
        )
        setup = f"UPSTREAM = {upstream.base_url!r}\n{SETUP}"
        keys = json.loads(server.manage("shell", "-c", setup).strip().splitlines()[-1])
        server.start()
        try:
            yield Site(server, keys, upstream)
        finally:
            server.stop()


def ask(text: str = "Hello from the SDK") -> list[ChatCompletionMessageParam]:
    return [{"role": "user", "content": text}]


# --- Completions ------------------------------------------------------------------------------


def test_a_completion_returns_the_stored_reply_and_its_usage(site: Site) -> None:
    completion = site.client().chat.completions.create(
        model="demo", messages=ask(), max_tokens=200, temperature=0.2, user="script-7"
    )
    assert completion.object == "chat.completion"
    assert completion.id.startswith("chatcmpl-")
    assert completion.model == "demo"
    (choice,) = completion.choices
    assert choice.message.role == "assistant"
    assert choice.message.content and choice.message.content.strip()
    assert choice.finish_reason == "stop"
    assert completion.usage is not None
    assert completion.usage.prompt_tokens > 0 and completion.usage.completion_tokens > 0
    assert completion.usage.total_tokens == (
        completion.usage.prompt_tokens + completion.usage.completion_tokens
    )
    assert site.stored_reply(completion.id) == (choice.message.content, "openai")


def test_a_stream_yields_the_stored_reply_then_the_usage(site: Site) -> None:
    stream = site.client().chat.completions.create(
        model="demo",
        messages=ask("Stream this, please"),
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) >= 2
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens > 0
    assert {c.id for c in chunks} == {chunks[0].id}
    assert site.stored_reply(chunks[0].id) == (text, "openai")


def test_a_stream_without_include_usage_has_no_usage_chunk(site: Site) -> None:
    chunks = list(site.client().chat.completions.create(model="demo", messages=ask(), stream=True))
    assert all(c.choices for c in chunks) and all(c.usage is None for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_a_client_that_closes_the_stream_stops_the_reply(site: Site) -> None:
    stream = site.client().chat.completions.create(
        model="slow-demo", messages=ask("Go slowly"), stream=True
    )
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            break
    stream.close()  # the client goes away after the first piece of text
    query = (
        "from conversations.models import Message; m = Message.objects.get("
        f"public_id='{uuid.UUID(chunk.id.removeprefix('chatcmpl-'))}'); "
        "print(m.status, m.stop_reason or '-')"
    )
    deadline = time.monotonic() + 15
    while (outcome := site.python(query).split())[0] in {"pending", "streaming"}:
        assert time.monotonic() < deadline, outcome
        time.sleep(0.5)
    assert outcome == ["cancelled", "stopped"]


def test_models_lists_only_the_models_the_owner_may_use(site: Site) -> None:
    page = site.client("read_only").models.list()
    ids = {model.id for model in page.data}
    assert {"demo", "upstream"} <= ids and "restricted" not in ids
    demo = next(model for model in page.data if model.id == "demo")
    assert demo.object == "model" and demo.owned_by == "demo" and demo.created > 0


# --- Refusals, as the SDK's exceptions ---------------------------------------------------------


@pytest.mark.parametrize("key", ["eai_nope_not_a_key", "revoked", "expired"])
def test_a_bad_revoked_or_expired_key_is_an_authentication_error(site: Site, key: str) -> None:
    with pytest.raises(openai.AuthenticationError) as caught:
        site.client(key).chat.completions.create(model="demo", messages=ask())
    assert caught.value.status_code == 401 and caught.value.code == "invalid_api_key"


def test_a_key_without_the_chat_scope_is_a_permission_error(site: Site) -> None:
    with pytest.raises(openai.PermissionDeniedError):
        site.client("read_only").chat.completions.create(model="demo", messages=ask())


def test_a_model_the_key_may_not_use_is_not_found(site: Site) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        site.client().chat.completions.create(model="restricted", messages=ask())
    assert caught.value.code == "model_not_found"


def test_too_many_messages_is_a_rate_limit_error(site: Site) -> None:
    client = site.client("dave")
    for _ in range(MESSAGES_PER_MINUTE):  # refused ones count as well
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(model="no-such-model", messages=ask())
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model="demo", messages=ask())
    assert caught.value.code == "rate_limit_exceeded"
    assert 0 < int(caught.value.response.headers["Retry-After"]) <= 60


def test_a_budget_refusal_is_a_rate_limit_error_naming_the_budget(site: Site) -> None:
    with pytest.raises(openai.RateLimitError) as caught:
        site.client("erin").chat.completions.create(model="demo", messages=ask("Plan a launch"))
    assert caught.value.type == "insufficient_quota"
    assert "Erin's pilot" in caught.value.message


def test_a_guardrail_block_is_a_bad_request(site: Site) -> None:
    with site.policy(dlp_mode="block"), pytest.raises(openai.BadRequestError) as caught:
        site.client().chat.completions.create(model="demo", messages=ask(f"My card is {CARD}."))
    assert caught.value.code == "guardrail_blocked"
    assert "card" in caught.value.message


def test_invalid_parameters_are_bad_requests(site: Site) -> None:
    client = site.client()
    bad: list[dict[str, Any]] = [
        {"max_tokens": 0},
        {"temperature": 3},
        {"tools": [{"type": "code_interpreter"}]},
        {"tools": [WEATHER], "tool_choice": "required"},
        {"messages": [{"role": "assistant", "content": "I speak last"}]},
        {"messages": [{"role": "tool", "tool_call_id": "nobody_asked", "content": "42"}]},
    ]
    for extra in bad:
        with pytest.raises(openai.BadRequestError) as caught:
            client.chat.completions.create(**{"model": "demo", "messages": ask(), **extra})
        assert caught.value.type == "invalid_request_error", extra


def test_a_key_over_its_own_rate_limit_is_a_rate_limit_error(site: Site) -> None:
    client = site.client("two_a_minute")
    # Limits count per clock minute: start early in one, so every request falls in it.
    if time.time() % 60 > 40:
        time.sleep(60 - time.time() % 60 + 0.5)
    assert client.models.list().data and client.models.list().data  # every endpoint counts
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model="demo", messages=ask())
    assert caught.value.code == "rate_limit_exceeded" and "API key" in caught.value.message
    assert 0 < int(caught.value.response.headers["Retry-After"]) <= 60


def test_a_keys_own_budget_refuses_while_its_owners_other_keys_still_work(site: Site) -> None:
    with pytest.raises(openai.RateLimitError) as caught:
        site.client("budgeted").chat.completions.create(model="demo", messages=ask("Plan"))
    assert caught.value.type == "insufficient_quota"
    assert site.keys["budgeted_prefix"] in caught.value.message
    # The same owner through another key: only the key's own budget refused.
    completion = site.client("alice").chat.completions.create(model="demo", messages=ask("Plan"))
    assert completion.choices[0].message.content


def test_a_deactivated_owners_key_is_a_permission_error(site: Site) -> None:
    with pytest.raises(openai.PermissionDeniedError) as caught:
        site.client("inactive").chat.completions.create(model="demo", messages=ask())
    assert caught.value.code == "inactive_owner"


def test_a_message_over_the_context_window_is_context_length_exceeded(site: Site) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        site.client().chat.completions.create(model="tiny", messages=ask("word " * 2000))
    assert caught.value.code == "context_length_exceeded"


def test_max_tokens_and_temperature_reach_the_provider(site: Site) -> None:
    site.upstream.reset()
    completion = site.client().chat.completions.create(
        model="upstream", messages=ask("Be brief"), max_completion_tokens=7, temperature=0.25
    )
    assert completion.choices[0].message.content
    (request,) = site.upstream.model_requests()
    assert request.body["max_tokens"] == 7 and request.body["temperature"] == 0.25
    # Over the model's maximum (2048): the model's maximum applies.
    site.upstream.reset()
    site.client().chat.completions.create(model="upstream", messages=ask("Go"), max_tokens=10**6)
    (request,) = site.upstream.model_requests()
    assert request.body["max_tokens"] == 2048


def test_a_provider_failure_mid_stream_raises_in_the_sdk(site: Site) -> None:
    site.upstream.reset()
    site.upstream.inject("drop_connection", after_deltas=2)
    stream = site.client().chat.completions.create(
        model="upstream", messages=ask("Tell me a long story"), stream=True
    )
    received: list[str] = []
    with pytest.raises(openai.APIError) as caught:
        for chunk in stream:
            received.extend(choice.delta.content or "" for choice in chunk.choices)
    assert caught.value.message and "Traceback" not in caught.value.message


# --- The caller's own tools -------------------------------------------------------------------

WEATHER: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city now.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


def test_a_tool_call_goes_back_to_the_caller_and_its_result_to_the_model(site: Site) -> None:
    site.upstream.reset()
    site.upstream.script_tool_call("get_weather", {"city": "Paris"}, call_id="call_w1")
    client = site.client()
    question = ask("What is the weather in Paris?")
    first = client.chat.completions.create(model="upstream", messages=question, tools=[WEATHER])
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls or []
    assert call.id == "call_w1" and call.type == "function"
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}
    (request,) = site.upstream.model_requests()
    assert [t["function"]["name"] for t in request.body["tools"]] == ["get_weather"]

    # The caller runs the tool and sends its result back: the model gets it natively.
    site.upstream.reset()
    second = client.chat.completions.create(
        model="upstream",
        tools=[WEATHER],
        messages=[
            *question,
            choice.message.model_dump(exclude_none=True),  # type: ignore[list-item]
            {"role": "tool", "tool_call_id": "call_w1", "content": "18 degrees, sunny"},
        ],
    )
    assert second.choices[0].finish_reason == "stop" and second.choices[0].message.content
    (request,) = site.upstream.model_requests()
    sent = request.body["messages"]
    assert sent[-2]["role"] == "assistant" and sent[-2]["tool_calls"][0]["id"] == "call_w1"
    assert sent[-1]["role"] == "tool" and sent[-1]["tool_call_id"] == "call_w1"
    assert "18 degrees, sunny" in sent[-1]["content"]  # delimited as data, like our own tools'
    # The stored conversation shows every word that was sent.
    content, source = site.stored_reply(second.id)
    assert source == "openai" and content == second.choices[0].message.content


def test_a_streamed_tool_call_arrives_in_chunks_the_sdk_assembles(site: Site) -> None:
    site.upstream.reset()
    site.upstream.script_tool_call("get_weather", {"city": "Oslo"}, call_id="call_s1")
    stream = site.client().chat.completions.create(
        model="upstream", messages=ask("Weather in Oslo?"), tools=[WEATHER], stream=True
    )
    calls: dict[int, dict[str, str]] = {}
    finish = None
    for chunk in stream:
        for choice in chunk.choices:
            for delta in choice.delta.tool_calls or []:
                entry = calls.setdefault(delta.index, {"id": "", "name": "", "arguments": ""})
                entry["id"] += delta.id or ""
                entry["name"] += (delta.function and delta.function.name) or ""
                entry["arguments"] += (delta.function and delta.function.arguments) or ""
            finish = choice.finish_reason or finish
    assert finish == "tool_calls"
    assert calls[0]["id"] == "call_s1" and calls[0]["name"] == "get_weather"
    assert json.loads(calls[0]["arguments"]) == {"city": "Oslo"}


def test_a_tool_result_with_personal_data_is_redacted_for_the_model(site: Site) -> None:
    site.upstream.reset()
    messages: Any = [
        *ask("Look up the customer"),
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_c1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_c1", "content": f"Card on file: {CARD}"},
    ]
    with site.policy(dlp_mode="redact"):
        site.client().chat.completions.create(model="upstream", messages=messages, tools=[WEATHER])
    (request,) = site.upstream.model_requests()
    sent = json.dumps(request.body)
    assert "[CARD_1]" in sent and CARD not in sent


def test_tools_on_a_model_that_cannot_use_them_are_a_bad_request(site: Site) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        site.client().chat.completions.create(model="demo", messages=ask(), tools=[WEATHER])
    assert caught.value.code == "tools_unsupported"


# --- Guardrails see every word the provider sees ------------------------------------------------


def test_redaction_applies_to_every_message_the_provider_receives(site: Site) -> None:
    site.upstream.reset()
    messages: list[ChatCompletionMessageParam] = [
        {"role": "system", "content": f"The customer's card is {CARD}."},
        {"role": "user", "content": "Summarise the customer's details."},
    ]
    with site.policy(dlp_mode="redact"):
        completion = site.client().chat.completions.create(model="upstream", messages=messages)
    assert completion.choices[0].message.content
    (request,) = site.upstream.model_requests()
    sent = json.dumps(request.body)
    assert "[CARD_1]" in sent and CARD not in sent
    assert "Summarise the customer's details." in sent
