"""Each event of the catalogue is written by the action that causes it, with the right actor,
outcome and context — and never with message text or passwords."""

from __future__ import annotations

import re
import uuid
from pathlib import Path
from typing import Any

import pytest
from channels.db import database_sync_to_async
from django.contrib.auth.models import Group
from django.test import Client
from django.urls import reverse

from audit import personal
from audit.catalogue import AuditAction, AuditOutcome
from audit.models import AuditEvent
from audit.verify import verify_chain
from conftest import PASSWORD
from conversations.models import Conversation, Message
from providers.models import AIModel
from tests.support import communicator, connected, is_final, receive_until

ROOT = Path(__file__).resolve().parents[2]


def events(action: str) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(action=action).order_by("sequence"))


def only(action: str) -> AuditEvent:
    found = events(action)
    assert len(found) == 1, f"expected one {action}, got {found}"
    return found[0]


# --- Sign-in ----------------------------------------------------------------------------------


@pytest.mark.django_db
def test_login_is_recorded_with_ip_user_agent_session_and_request_id(owner) -> None:
    client = Client(HTTP_USER_AGENT="Firefox/999", REMOTE_ADDR="192.0.2.10")
    response = client.post(reverse("login"), {"username": "alice", "password": PASSWORD})
    assert response.status_code == 302
    event = only(AuditAction.LOGIN)
    assert event.actor == owner and event.outcome == AuditOutcome.SUCCESS
    # The address is sealed with the e-mail under the person's key (audit/personal.py).
    assert event.ip is None and "192.0.2.10" not in event.actor_email
    shown = personal.reveal(event)
    assert (shown.actor_email, shown.ip) == ("alice@example.com", "192.0.2.10")
    assert event.user_agent == "Firefox/999"
    session_key = client.session.session_key
    assert session_key and event.session_hash and session_key not in event.session_hash
    assert len(event.request_id) == 32
    assert response["X-Request-ID"] == event.request_id


@pytest.mark.django_db
def test_a_clients_request_id_is_ignored_unless_a_proxy_is_trusted(owner, settings) -> None:
    client = Client(HTTP_X_REQUEST_ID="edge-4f1c2a9b")
    client.post(reverse("login"), {"username": "alice", "password": PASSWORD})
    assert only(AuditAction.LOGIN).request_id != "edge-4f1c2a9b"

    settings.AUDIT_TRUST_REQUEST_ID_HEADER = True
    client.post(reverse("logout"))
    assert only(AuditAction.LOGOUT).request_id == "edge-4f1c2a9b"


@pytest.mark.django_db
def test_login_failure_is_recorded_without_the_password(owner) -> None:
    Client().post(reverse("login"), {"username": "alice", "password": "hunter2-wrong"})
    event = only(AuditAction.LOGIN_FAILED)
    assert event.actor is None and event.outcome == AuditOutcome.FAILED
    # The user name is sealed under the account's key; readers see it through reveal.
    assert set(event.details) == {"known_user", "_sealed"}
    assert personal.reveal(event).details == {"username": "alice", "known_user": True}
    assert event.target_id == str(owner.public_id)
    assert "hunter2" not in str(AuditEvent.objects.values_list("details", flat=True)[::1])


@pytest.mark.django_db
def test_lockout_is_recorded(owner, settings) -> None:
    client = Client()
    for _ in range(settings.AXES_FAILURE_LIMIT):
        client.post(reverse("login"), {"username": "alice", "password": "wrong"})
    lockout = only(AuditAction.LOCKOUT)
    assert lockout.outcome == AuditOutcome.DENIED
    assert "username" not in lockout.details
    assert personal.reveal(lockout).details["username"] == "alice"
    assert len(events(AuditAction.LOGIN_FAILED)) == settings.AXES_FAILURE_LIMIT


@pytest.mark.django_db
def test_logout_is_recorded(owner) -> None:
    client = Client()
    client.force_login(owner)
    client.post(reverse("logout"))
    event = only(AuditAction.LOGOUT)
    assert event.actor == owner and event.session_hash


@pytest.mark.django_db
def test_password_change_is_recorded_but_a_first_password_is_not(owner) -> None:
    assert events(AuditAction.PASSWORD_CHANGED) == []  # create_user set the first one
    owner.set_password("a whole new passphrase 42")
    owner.save()
    event = only(AuditAction.PASSWORD_CHANGED)
    assert event.target_id == str(owner.public_id)
    # Rehashing on login (a hasher upgrade) is not a change.
    owner.check_password("a whole new passphrase 42")
    assert len(events(AuditAction.PASSWORD_CHANGED)) == 1


@pytest.mark.django_db
def test_password_change_by_an_administrator_names_both(owner) -> None:
    root = type(owner).objects.create_superuser("root", "root@example.com", PASSWORD)
    client = Client()
    client.force_login(root)
    response = client.post(
        reverse("admin:auth_user_password_change", args=[owner.pk]),
        {"password1": "Another-long-passphrase-9", "password2": "Another-long-passphrase-9"},
    )
    assert response.status_code == 302
    event = only(AuditAction.PASSWORD_CHANGED)
    assert event.actor == root and event.target_id == str(owner.public_id)


# --- Chat socket ------------------------------------------------------------------------------

socket_db = pytest.mark.django_db(transaction=True)


@socket_db
async def test_socket_connect_and_disconnect_are_recorded(owner, session_cookie) -> None:
    comm = await connected(await database_sync_to_async(session_cookie)(owner))
    await comm.disconnect()
    connect = await database_sync_to_async(only)(AuditAction.WS_CONNECT)
    disconnect = await database_sync_to_async(only)(AuditAction.WS_DISCONNECT)
    assert connect.actor_id == disconnect.actor_id == owner.pk
    assert connect.target_id == disconnect.target_id  # the connection id ties them together
    assert "seconds_open" in disconnect.details


@socket_db
async def test_anonymous_socket_refusal_is_recorded_with_its_reason() -> None:
    ok, _ = await communicator(cookie=None).connect()
    assert not ok
    event = await database_sync_to_async(only)(AuditAction.WS_REFUSED)
    assert event.outcome == AuditOutcome.DENIED and event.details["reason"] == "not_signed_in"


@socket_db
async def test_foreign_origin_refusal_is_recorded(owner, session_cookie) -> None:
    cookie = await database_sync_to_async(session_cookie)(owner)
    ok, _ = await communicator(cookie, origin=b"https://evil.example").connect()
    assert not ok
    event = await database_sync_to_async(only)(AuditAction.WS_REFUSED)
    assert event.details == {"reason": "origin_not_allowed", "origin": "https://evil.example"}


@socket_db
async def test_inactive_user_refusal_is_recorded(owner, session_cookie) -> None:
    cookie = await database_sync_to_async(session_cookie)(owner)
    owner.is_active = False
    await database_sync_to_async(owner.save)(update_fields=["is_active"])
    ok, _ = await communicator(cookie).connect()
    assert not ok
    event = await database_sync_to_async(only)(AuditAction.WS_REFUSED)
    # Deactivating deletes the person's sessions (accounts/receivers.py): the cookie no
    # longer names a session at all.
    assert event.details["reason"] == "not_signed_in"


@socket_db
async def test_message_and_completed_reply_are_recorded_without_their_text(
    owner, session_cookie, fast_demo
) -> None:
    comm = await connected(await database_sync_to_async(session_cookie)(owner))
    await comm.send_json_to({"type": "send", "text": "Top secret launch plan", "model": "demo"})
    frames = await receive_until(comm, is_final)
    await comm.disconnect()
    assert frames[-1]["type"] == "done"

    sent = await database_sync_to_async(only)(AuditAction.MESSAGE_SENT)
    completed = await database_sync_to_async(only)(AuditAction.REPLY_COMPLETED)
    reply = await database_sync_to_async(Message.objects.get)(role="assistant")
    assert sent.actor_id == completed.actor_id == owner.pk
    assert sent.target_id == completed.target_id == frames[0]["conversation"]
    assert sent.details["characters"] == len("Top secret launch plan")
    assert completed.details["reply"] == str(reply.public_id)
    assert completed.details["output_tokens"] == reply.output_tokens
    assert completed.details["duration_ms"] == reply.duration_ms
    # The reply's events carry the request id of the frame that asked for it.
    assert completed.request_id == sent.request_id == reply.request_id
    everything = await database_sync_to_async(
        lambda: str(list(AuditEvent.objects.values_list("details", flat=True)))
    )()
    assert "Top secret" not in everything and reply.content[:20] not in everything
    assert (await database_sync_to_async(verify_chain)()).ok


@socket_db
async def test_cancelled_reply_is_recorded(owner, session_cookie, slow_demo) -> None:
    comm = await connected(await database_sync_to_async(session_cookie)(owner))
    await comm.send_json_to({"type": "send", "text": "Write a long essay", "model": "demo"})
    accepted = await comm.receive_json_from(timeout=10)
    await comm.send_json_to({"type": "stop", "message": accepted["message"]})
    frames = await receive_until(comm, is_final)
    await comm.disconnect()
    assert frames[-1]["status"] == "cancelled"
    event = await database_sync_to_async(only)(AuditAction.REPLY_CANCELLED)
    assert event.details["reply"] == accepted["message"]


@socket_db
async def test_failed_reply_is_recorded(owner, session_cookie, fast_demo) -> None:
    await database_sync_to_async(AIModel.objects.create)(
        key="broken",
        display_name="Broken",
        provider="openai-compatible",
        provider_model_id="nothing",
        available_to_everyone=True,
        options={"base_url": "http://127.0.0.1:9/v1"},
    )
    comm = await connected(await database_sync_to_async(session_cookie)(owner))
    await comm.send_json_to({"type": "send", "text": "Hello", "model": "broken"})
    frames = await receive_until(comm, is_final, timeout=60)
    await comm.disconnect()
    assert frames[-1]["type"] == "error"
    event = await database_sync_to_async(only)(AuditAction.REPLY_FAILED)
    assert event.outcome == AuditOutcome.FAILED and event.details["error_code"]


@socket_db
async def test_refused_model_is_recorded(owner, session_cookie) -> None:
    comm = await connected(await database_sync_to_async(session_cookie)(owner))
    await comm.send_json_to({"type": "send", "text": "Hi", "model": "gpt-secret"})
    frame = await comm.receive_json_from(timeout=10)
    await comm.disconnect()
    assert frame["code"] == "model_unavailable"
    event = await database_sync_to_async(only)(AuditAction.MODEL_REFUSED)
    assert event.actor_id == owner.pk and event.outcome == AuditOutcome.DENIED
    assert event.details == {"model": "gpt-secret"}
    assert await database_sync_to_async(Message.objects.count)() == 0


@socket_db
async def test_socket_access_to_another_persons_conversation_is_recorded(
    owner, colleague, session_cookie
) -> None:
    theirs = await database_sync_to_async(Conversation.objects.create)(
        owner=colleague, title="Bob's", model="demo"
    )
    comm = await connected(await database_sync_to_async(session_cookie)(owner))
    await comm.send_json_to({"type": "subscribe", "conversation": str(theirs.public_id)})
    await comm.receive_json_from(timeout=10)
    await comm.send_json_to(
        {"type": "send", "conversation": str(theirs.public_id), "text": "hi", "model": "demo"}
    )
    await comm.receive_json_from(timeout=10)
    await comm.send_json_to({"type": "stop", "message": str(uuid.uuid4())})
    await comm.receive_json_from(timeout=10)
    await comm.disconnect()
    denied = await database_sync_to_async(events)(AuditAction.CONVERSATION_ACCESS_DENIED)
    assert len(denied) == 3
    assert {e.actor_id for e in denied} == {owner.pk}
    assert {e.outcome for e in denied} == {AuditOutcome.DENIED}
    assert [e.target_type for e in denied] == ["conversation", "conversation", "message"]
    assert denied[0].target_id == str(theirs.public_id)


@pytest.mark.django_db
def test_page_access_to_another_persons_conversation_is_recorded(owner, colleague) -> None:
    theirs = Conversation.objects.create(owner=colleague, title="Bob's", model="demo")
    client = Client(REMOTE_ADDR="192.0.2.44")
    client.force_login(owner)
    assert client.get(f"/c/{theirs.public_id}/").status_code == 404
    event = only(AuditAction.CONVERSATION_ACCESS_DENIED)
    assert (event.actor, event.target_id) == (owner, str(theirs.public_id))
    assert personal.reveal(event).ip == "192.0.2.44"


# --- Console ----------------------------------------------------------------------------------


@pytest.fixture
def root_client(db: None) -> tuple[Client, Any]:
    from accounts.models import User

    root = User.objects.create_superuser("root", "root@example.com", PASSWORD)
    client = Client()
    client.force_login(root)
    return client, root


def test_console_add_change_and_delete_are_recorded_with_field_names(root_client) -> None:
    client, root = root_client
    response = client.post(
        "/admin/providers/aimodel/add/",
        {
            "key": "team-model",
            "display_name": "Team model",
            "enabled": "on",
            "position": "5",
            "provider": "demo",
            "provider_model_id": "demo-2",
            "options": "{}",
            "context_window": "8000",
            "max_output_tokens": "1000",
            "available_to_everyone": "on",
        },
    )
    assert response.status_code == 302, response.content.decode()[:3000]
    model = AIModel.objects.get(key="team-model")
    added = only(AuditAction.ADMIN_ADD)
    assert (added.actor, added.target_type, added.target_id) == (root, "aimodel", str(model.pk))

    response = client.post(
        f"/admin/providers/aimodel/{model.pk}/change/",
        {
            "key": "team-model",
            "display_name": "Team model v2",
            "position": "5",
            "provider": "demo",
            "provider_model_id": "demo-2",
            "options": "{}",
            "context_window": "8000",
            "max_output_tokens": "1000",
            "available_to_everyone": "on",
        },
    )
    assert response.status_code == 302
    changed = only(AuditAction.ADMIN_CHANGE)
    fields = set(changed.details["changed_fields"])
    assert {"Display name", "Enabled"} <= fields and "Key" not in fields

    client.post(f"/admin/providers/aimodel/{model.pk}/delete/", {"post": "yes"})
    deleted = only(AuditAction.ADMIN_DELETE)
    assert deleted.target_id == str(model.pk) and deleted.details["object"] == "Team model v2"


def test_bulk_deletion_in_the_console_records_every_object(root_client) -> None:
    client, _ = root_client
    groups = [Group.objects.create(name=f"Department {n}") for n in range(3)]
    response = client.post(
        "/admin/auth/group/",
        {
            "action": "delete_selected",
            "_selected_action": [g.pk for g in groups],
            "post": "yes",
        },
    )
    assert response.status_code == 302
    deleted = events(AuditAction.ADMIN_DELETE)
    assert sorted(e.target_id for e in deleted) == sorted(str(g.pk) for g in groups)
    assert {e.target_type for e in deleted} == {"group"}


# --- Docs -------------------------------------------------------------------------------------


def test_every_catalogued_action_is_documented() -> None:
    text = (ROOT / "docs/audit.md").read_text()
    section = text.split("## Event catalogue", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"^\| `([a-z_.]+)` \|", section, re.M))
    assert documented == {action.value for action in AuditAction}
