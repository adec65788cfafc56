"""The REST API against a real server (api/tests/live.py: daphne in a subprocess, as `make run`
serves it, the demo model paced fast) with a plain HTTP client (urllib), so that what is
tested is what an integrator's script sees on the wire."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from api.tests.live import Api, assert_error, live_api

pytestmark = pytest.mark.e2e

SETUP = """
import json
from django.conf import settings
from django.test import Client
from accounts.api_keys import api_key_create
from accounts.models import User
from conversations.models import Conversation

alice = User.objects.create_user(username="alice", email="alice@example.com", password="x-pw-1")
bob = User.objects.create_user(username="bob", email="bob@example.com", password="x-pw-2")
everything = ["chat", "conversations:read", "models:read", "usage:read"]
_, alice_key = api_key_create(owner=alice, name="all", scopes=everything, actor=None)
_, alice_read = api_key_create(owner=alice, name="read", scopes=["models:read"], actor=None)
revoked, revoked_key = api_key_create(owner=alice, name="gone", scopes=everything, actor=None)
from accounts.api_keys import api_key_revoke
api_key_revoke(key=revoked, actor=alice)
from providers.models import AIModel
AIModel.objects.create(key="slow-demo", display_name="Slow demo", provider="demo",
                       provider_model_id="demo-1", available_to_everyone=True,
                       options={"tokens_per_second": 5})
bobs = Conversation.objects.create(owner=bob, title="Bob's plans", model="demo")
client = Client()
client.force_login(alice)
cookie = f"{settings.SESSION_COOKIE_NAME}={client.cookies[settings.SESSION_COOKIE_NAME].value}"
client = Client()
client.force_login(bob)
bob_cookie = f"{settings.SESSION_COOKIE_NAME}={client.cookies[settings.SESSION_COOKIE_NAME].value}"
print(json.dumps({"alice": alice_key, "alice_read": alice_read, "revoked": revoked_key,
                  "bobs_conversation": str(bobs.public_id), "alice_cookie": cookie,
                  "bob_cookie": bob_cookie}))
"""


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    with live_api(tmp_path_factory.mktemp("rest-api"), SETUP) as served:
        yield served


# --- Models and authentication ----------------------------------------------------------------


def test_models_lists_what_the_owner_may_use(api: Api) -> None:
    status, _, body = api.call("GET", "/models", key="alice_read")
    assert status == 200
    demo = next(model for model in body["models"] if model["id"] == "demo")
    assert demo["provider"] == "demo"
    assert demo["display_name"]
    assert demo["context_window"] > 0 and demo["max_output_tokens"] > 0


@pytest.mark.parametrize(
    ("key", "code"),
    [(None, "missing_key"), ("eai_nope", "invalid_key"), ("revoked", "revoked_key")],
)
def test_a_missing_bad_or_revoked_key_is_401_in_the_error_shape(
    api: Api, key: str | None, code: str
) -> None:
    status, headers, body = api.call("GET", "/models", key=key)
    assert status == 401
    assert headers["WWW-Authenticate"].startswith("Bearer")
    assert_error(body, code)


def test_a_session_cookie_alone_is_ignored(api: Api) -> None:
    status, _, body = api.call(
        "GET", "/models", key=None, headers={"Cookie": api.keys["alice_cookie"]}
    )
    assert status == 401
    assert_error(body, "missing_key")


def test_a_key_acts_as_its_owner_whatever_session_comes_with_it(api: Api) -> None:
    cookie = {"Cookie": api.keys["bob_cookie"]}
    status, _, sent = api.call("POST", "/chat", {"message": "Whose is this?"}, headers=cookie)
    assert status == 200, sent
    status, _, page = api.call("GET", "/conversations", headers=cookie)
    assert status == 200
    ids = {c["id"] for c in page["conversations"]}
    assert sent["conversation_id"] in ids and api.keys["bobs_conversation"] not in ids


def test_a_key_without_the_chat_scope_cannot_chat(api: Api) -> None:
    status, _, body = api.call("POST", "/chat", {"message": "hello"}, key="alice_read")
    assert status == 403
    assert_error(body, "scope_missing")


# --- Chat -------------------------------------------------------------------------------------


def test_chat_answers_with_the_reply_its_usage_and_cost(api: Api) -> None:
    status, _, body = api.call("POST", "/chat", {"message": "Hello from a script"})
    assert status == 200, body
    assert body["message"].strip()
    assert body["model"] == "demo"
    assert body["status"] == "complete"
    assert body["usage"]["input_tokens"] > 0 and body["usage"]["output_tokens"] > 0
    assert body["currency"] == "USD"
    assert body["cost"] is not None and float(body["cost"]) >= 0

    # It is stored, and the conversation continues by its id.
    status, _, again = api.call(
        "POST", "/chat", {"message": "And again", "conversation_id": body["conversation_id"]}
    )
    assert status == 200, again
    assert again["conversation_id"] == body["conversation_id"]
    status, _, detail = api.call("GET", f"/conversations/{body['conversation_id']}")
    assert status == 200
    assert detail["source"] == "api"
    assert [m["role"] for m in detail["messages"]] == ["user", "assistant"] * 2
    assert detail["messages"][0]["content"] == "Hello from a script"
    assert detail["messages"][1]["content"] == body["message"]
    assert detail["messages"][1]["usage"]["output_tokens"] == body["usage"]["output_tokens"]


def test_chat_streams_deltas_then_done_with_the_stored_reply(api: Api) -> None:
    events = api.stream({"message": "Stream this, please"})
    names = [name for name, _ in events]
    assert names[0] == "accepted" and names[-1] == "done", events
    assert names.count("delta") >= 2
    assert set(names[1:-1]) <= {"delta", "notice"}
    done = events[-1][1]
    # The ids come first, before any text: enough to stop or look up the reply.
    assert events[0][1] == {
        "conversation_id": done["conversation_id"],
        "message_id": done["message_id"],
    }
    streamed = "".join(data["text"] for name, data in events if name == "delta")
    assert streamed == done["message"]
    assert done["usage"]["output_tokens"] > 0
    _, _, detail = api.call("GET", f"/conversations/{done['conversation_id']}")
    assert detail["messages"][-1]["content"] == done["message"]


def test_a_client_that_disconnects_mid_stream_stops_the_reply(api: Api) -> None:
    response = urllib.request.urlopen(
        api.stream_request({"message": "Go slowly", "model": "slow-demo"}), timeout=30
    )
    for raw in response:
        if raw.startswith(b"event: delta"):
            break
    response.close()  # the client goes away after the first delta
    query = (
        "from conversations.models import Message; from conversations.selectors import "
        "reply_usage; m = Message.objects.filter(role='assistant', model='slow-demo')"
        ".latest('id'); u = reply_usage(m); "
        "print(m.status, m.stop_reason or '-', u['output_tokens'], u['cost'] is not None)"
    )
    deadline = time.monotonic() + 15
    while True:
        status, stop_reason, output_tokens, costed = api.manage_python(query).split()[-4:]
        if status not in {"pending", "streaming"} or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    # The whole demo reply is about 80 pieces at 5 a second: stopped long before that, and
    # charged for what was produced (the ledger's estimate, the provider reported none).
    assert (status, stop_reason) == ("cancelled", "stopped")
    assert 0 < int(output_tokens) < 40
    assert costed == "True"


def test_an_unknown_model_is_refused_with_its_code(api: Api) -> None:
    status, _, body = api.call("POST", "/chat", {"message": "hi", "model": "no-such-model"})
    assert status == 403
    assert_error(body, "model_unavailable")


@pytest.mark.parametrize("body", [{}, {"message": 42}, {"message": "hi", "stream": "yes"}])
def test_an_invalid_body_is_422_in_the_error_shape(api: Api, body: dict[str, Any]) -> None:
    status, _, answer = api.call("POST", "/chat", body)
    assert status == 422
    assert_error(answer, "invalid")


# --- Conversations ----------------------------------------------------------------------------


def test_conversations_lists_the_owners_conversations_of_every_source(api: Api) -> None:
    _, _, sent = api.call("POST", "/chat", {"message": "Listed?"})
    status, _, body = api.call("GET", "/conversations")
    assert status == 200
    ids = [c["id"] for c in body["conversations"]]
    assert sent["conversation_id"] in ids
    assert api.keys["bobs_conversation"] not in ids
    assert {c["source"] for c in body["conversations"]} == {"api"}
    assert "next" in body


def test_another_persons_conversation_is_404_and_audited(api: Api) -> None:
    bobs = api.keys["bobs_conversation"]
    status, _, body = api.call("GET", f"/conversations/{bobs}")
    assert status == 404
    assert_error(body, "not_found")
    status, _, body = api.call("POST", "/chat", {"message": "hi", "conversation_id": bobs})
    assert status == 404
    assert_error(body, "not_found")
    count = api.manage_python(
        "from audit.models import AuditEvent; print(AuditEvent.objects.filter("
        f"action='conversation.access_denied', target_id='{bobs}', "
        "actor__username='alice').count())"
    )
    assert int(count.splitlines()[-1]) >= 2


# --- The schema -------------------------------------------------------------------------------


def test_the_openapi_document_is_served_and_lists_the_endpoints(api: Api) -> None:
    status, _, schema = api.call("GET", "/openapi.json", key=None)
    assert status == 200
    assert schema["openapi"].startswith("3.1")
    paths = set(schema["paths"])
    assert {
        "/api/v1/models",
        "/api/v1/chat",
        "/api/v1/conversations",
        "/api/v1/conversations/{conversation_id}",
        "/api/v1/usage",
    } <= paths
    with urllib.request.urlopen(api.url("/docs"), timeout=10) as response:
        assert response.status == 200
