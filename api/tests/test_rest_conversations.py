"""The REST API's conversation endpoints and per-call settings against a real server
(api/tests/live.py): creating a conversation with or without a first message, deleting one
(erased, gone from every answer, refused under legal hold), a system prompt stored and
screened with the message, and a key's own request limit and budget."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from api.tests.live import Api, assert_error, live_api

pytestmark = pytest.mark.e2e

SETUP = """
import json
from datetime import timedelta
from decimal import Decimal
from django.utils import timezone
from accounts.api_keys import api_key_create
from accounts.models import User
from conversations.models import Conversation
from costs.models import ModelPrice
from providers.models import AIModel

alice = User.objects.create_user(username="alice", email="alice@example.com", password="x-pw-1")
bob = User.objects.create_user(username="bob", email="bob@example.com", password="x-pw-2")
everything = ["chat", "conversations:read", "conversations:write", "models:read", "usage:read"]
keys = {}
_, keys["alice"] = api_key_create(owner=alice, name="all", scopes=everything, actor=None)
_, keys["no_chat"] = api_key_create(
    owner=alice, name="write", scopes=["conversations:read", "conversations:write"], actor=None)
_, keys["read_only"] = api_key_create(
    owner=alice, name="read", scopes=["conversations:read"], actor=None)
_, keys["three_a_minute"] = api_key_create(
    owner=bob, name="slow", scopes=everything, actor=None, rate_limit_per_minute=3)
capped, keys["capped"] = api_key_create(
    owner=alice, name="capped", scopes=everything, actor=None, budget_limit=Decimal("0"),
    budget_period="daily")
keys["capped_prefix"] = capped.prefix
metered, keys["metered"] = api_key_create(
    owner=alice, name="metered", scopes=everything, actor=None, budget_limit=Decimal("5"))
keys["metered_prefix"] = metered.prefix
ModelPrice.objects.create(model=AIModel.objects.get(key="demo"), input_per_million=Decimal("3"),
                          output_per_million=Decimal("15"),
                          effective_from=timezone.now() - timedelta(days=1))
bobs = Conversation.objects.create(owner=bob, title="Bob's plans", model="demo")
keys["bobs_conversation"] = str(bobs.public_id)
print(json.dumps(keys))
"""


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    with live_api(tmp_path_factory.mktemp("rest-conversations"), SETUP) as served:
        yield served


def stored(api: Api, code: str) -> Any:
    """The last line of `code` run in the server's database (`print(json.dumps(...))`)."""
    return json.loads(api.manage_python(code).splitlines()[-1])


def audited(api: Api, action: str) -> list[dict[str, Any]]:
    return stored(
        api,
        "import json; from audit.models import AuditEvent; print(json.dumps([{'outcome': "
        "e.outcome, 'target': e.target_id, 'details': e.details} for e in AuditEvent.objects"
        f".filter(action={action!r}).order_by('sequence')]))",
    )


# --- Creating ---------------------------------------------------------------------------------


def test_an_empty_conversation_is_created_then_named_by_its_first_message(api: Api) -> None:
    status, _, created = api.call("POST", "/conversations", {"model": "demo"})
    assert status == 201, created
    assert created["messages"] == [] and created["source"] == "api" and created["title"] == ""
    assert any(e["target"] == created["id"] for e in audited(api, "conversation.created"))

    status, _, reply = api.call(
        "POST", "/chat", {"message": "Quarterly plan", "conversation_id": created["id"]}
    )
    assert status == 200, reply
    status, _, detail = api.call("GET", f"/conversations/{created['id']}")
    assert status == 200 and detail["title"] == "Quarterly plan"
    assert [m["role"] for m in detail["messages"]] == ["user", "assistant"]


def test_a_conversation_created_with_a_message_answers_as_chat(api: Api) -> None:
    status, _, body = api.call(
        "POST", "/conversations", {"message": "Start here", "title": "ignored when a message"}
    )
    assert status == 200, body
    assert body["status"] == "complete" and body["message"].strip()
    status, _, detail = api.call("GET", f"/conversations/{body['conversation_id']}")
    assert detail["messages"][0]["content"] == "Start here"


def test_creating_with_a_message_needs_the_chat_scope(api: Api) -> None:
    status, _, body = api.call("POST", "/conversations", {"message": "hi"}, key="no_chat")
    assert status == 403
    assert_error(body, "scope_missing")
    status, _, body = api.call("POST", "/conversations", {}, key="read_only")
    assert status == 403
    assert_error(body, "scope_missing")


def test_a_model_the_owner_may_not_use_is_refused(api: Api) -> None:
    status, _, body = api.call("POST", "/conversations", {"model": "no-such-model"})
    assert status == 403
    assert_error(body, "model_unavailable")


# --- Deleting ---------------------------------------------------------------------------------


def test_deleting_erases_the_text_and_hides_it_but_keeps_the_ledger(api: Api) -> None:
    status, _, reply = api.call("POST", "/chat", {"message": "Delete me later, secret plan"})
    assert status == 200, reply
    conversation = reply["conversation_id"]

    status, _, body = api.call("DELETE", f"/conversations/{conversation}")
    assert status == 204 and body is None

    status, _, body = api.call("GET", f"/conversations/{conversation}")
    assert status == 404
    assert_error(body, "not_found")
    _, _, page = api.call("GET", "/conversations")
    assert conversation not in {c["id"] for c in page["conversations"]}
    status, _, body = api.call(
        "POST", "/chat", {"message": "more", "conversation_id": conversation}
    )
    assert status == 404
    status, _, body = api.call("DELETE", f"/conversations/{conversation}")
    assert status == 404

    texts, ledger = stored(
        api,
        "import json; from conversations.models import Message; from costs.models import "
        f"CostEntry; q = Message.objects.filter(conversation__public_id='{conversation}'); "
        "print(json.dumps([[m.content for m in q], CostEntry.objects.filter("
        f"conversation__public_id='{conversation}').count()]))",
    )
    assert texts == ["", ""]  # both rows kept, neither with its text
    assert ledger == 1  # what the reply cost stays in the ledger
    (event,) = [e for e in audited(api, "conversation.deleted") if e["target"] == conversation]
    assert event["details"]["messages"] == 2


def test_a_conversation_under_legal_hold_cannot_be_deleted(api: Api) -> None:
    _, _, reply = api.call("POST", "/chat", {"message": "Evidence"})
    conversation = reply["conversation_id"]
    api.manage_python(
        "from conversations.models import Conversation; Conversation.objects.filter("
        f"public_id='{conversation}').update(legal_hold=True)"
    )
    status, _, body = api.call("DELETE", f"/conversations/{conversation}")
    assert status == 409
    assert_error(body, "legal_hold")
    assert "legal hold" in body["error"]["message"]
    status, _, detail = api.call("GET", f"/conversations/{conversation}")
    assert status == 200 and detail["messages"][0]["content"] == "Evidence"
    refusals = audited(api, "conversation.delete_refused")
    assert any(e["target"] == conversation and e["outcome"] == "denied" for e in refusals)


def test_another_persons_conversation_cannot_be_deleted(api: Api) -> None:
    bobs = api.keys["bobs_conversation"]
    status, _, body = api.call("DELETE", f"/conversations/{bobs}")
    assert status == 404
    assert_error(body, "not_found")
    assert any(e["target"] == bobs for e in audited(api, "conversation.access_denied"))
    assert stored(
        api,
        "import json; from conversations.models import Conversation; print(json.dumps("
        f"Conversation.objects.get(public_id='{bobs}').deleted_at is None))",
    )


# --- Per-call settings and per-key limits -----------------------------------------------------


def test_a_system_prompt_is_stored_with_the_message_it_governs(api: Api) -> None:
    status, _, reply = api.call(
        "POST",
        "/chat",
        {"message": "Summarise", "system_prompt": "Answer in French.", "max_output_tokens": 50},
    )
    assert status == 200, reply
    _, _, detail = api.call("GET", f"/conversations/{reply['conversation_id']}")
    assert detail["messages"][0]["content"] == "System: Answer in French.\n\nUser: Summarise"
    (sent,) = [e for e in audited(api, "message.sent") if e["target"] == reply["conversation_id"]]
    assert sent["details"]["options"] == {"max_output_tokens": 50}
    assert sent["details"]["api_key"].startswith("eai_")


def test_a_key_over_its_own_request_limit_is_429_with_retry_after(api: Api) -> None:
    # Limits count per clock minute: start early in one, so every request falls in it.
    if time.time() % 60 > 40:
        time.sleep(60 - time.time() % 60 + 0.5)
    for _ in range(3):  # every endpoint counts
        status, _, _ = api.call("GET", "/models", key="three_a_minute")
        assert status == 200
    status, headers, body = api.call("GET", "/usage", key="three_a_minute")
    assert status == 429
    assert_error(body, "rate_limited")
    assert 0 < int(headers["Retry-After"]) <= 60
    refusals = [
        e for e in audited(api, "api_key.refused") if e["details"]["code"] == "rate_limited"
    ]
    assert len(refusals) == 1
    status, _, _ = api.call("GET", "/usage", key="three_a_minute")
    assert status == 429  # refused again, not audited again
    assert (
        len([e for e in audited(api, "api_key.refused") if e["details"]["code"] == "rate_limited"])
        == 1
    )


def test_a_keys_own_budget_refuses_and_shows_in_its_usage(api: Api) -> None:
    status, _, body = api.call("POST", "/chat", {"message": "Plan a launch"}, key="capped")
    assert status == 402
    assert_error(body, "budget_exceeded")
    assert api.keys["capped_prefix"] in body["error"]["message"]
    status, _, usage = api.call("GET", "/usage", key="capped")
    assert status == 200
    names = [b["name"] for b in usage["budgets"]]
    assert f"API key {api.keys['capped_prefix']}" in names
    # The owner's other key is not limited by it.
    status, _, usage = api.call("GET", "/usage")
    assert f"API key {api.keys['capped_prefix']}" not in [b["name"] for b in usage["budgets"]]
    status, _, body = api.call("POST", "/chat", {"message": "Plan a launch"})
    assert status == 200, body


def test_a_keys_own_budget_is_charged_what_its_calls_cost(api: Api) -> None:
    name = f"API key {api.keys['metered_prefix']}"
    status, _, reply = api.call("POST", "/chat", {"message": "Count this"}, key="metered")
    assert status == 200, reply
    status, _, usage = api.call("GET", "/usage", key="metered")
    (budget,) = [b for b in usage["budgets"] if b["name"] == name]
    # Settled at the call's real cost, not only held while it ran.
    assert budget["spent"] == reply["cost"] and float(reply["cost"]) > 0
