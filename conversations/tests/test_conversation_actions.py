"""The chat page's conversation actions: rename, delete, export (conversations/web.py)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.test import Client

from audit.catalogue import AuditAction, AuditOutcome
from audit.models import AuditEvent
from conversations import services
from conversations.errors import ChatError
from conversations.export import conversation_export
from conversations.models import Conversation, Message

pytestmark = pytest.mark.django_db


def conversation(owner: Any, title: str = "Launch plan") -> Conversation:
    made = Conversation.objects.create(owner=owner, title=title, model="demo")
    Message.objects.create(conversation=made, role="user", content="What **is** the plan?")
    Message.objects.create(
        conversation=made,
        role="assistant",
        status="complete",
        content="The plan:\n\n1. ship",
        model="demo",
        answered_by="demo",
        tool_events=[
            {"id": "t1", "name": "web_search", "arguments": {"q": "x"}, "result": "abc"},
            {"id": "t2", "name": "read", "arguments": {}, "result": "", "is_error": True},
        ],
    )
    return made


def post(client: Client, url: str, data: Any) -> Any:
    return client.post(url, json.dumps(data), content_type="application/json")


# --- rename ------------------------------------------------------------------------------


def test_rename_collapses_whitespace_and_is_audited_without_the_title(owner) -> None:
    made = conversation(owner)
    before = made.updated_at
    services.conversation_rename(actor=owner, public_id=made.public_id, title="  New\n name  ")
    made.refresh_from_db()
    assert made.title == "New name" and made.updated_at > before
    event = AuditEvent.objects.get(action=AuditAction.CONVERSATION_RENAMED)
    assert event.outcome == AuditOutcome.SUCCESS and event.details["characters"] == 8
    assert "New name" not in json.dumps(event.details)


@pytest.mark.parametrize(
    ("title", "code"),
    [("", "invalid"), ("   \n ", "invalid"), (5, "invalid"), ("a\x00b", "invalid"),
     ("\ud800", "invalid"), ("x" * 201, "too_large")],
)  # fmt: skip
def test_rename_refuses_bad_titles(owner, title: Any, code: str) -> None:
    made = conversation(owner)
    with pytest.raises(ChatError) as refused:
        services.conversation_rename(actor=owner, public_id=made.public_id, title=title)
    assert refused.value.code == code
    made.refresh_from_db()
    assert made.title == "Launch plan"


def test_rename_of_someone_elses_or_deleted_conversation_is_not_found(owner, colleague) -> None:
    made = conversation(owner)
    with pytest.raises(ChatError) as refused:
        services.conversation_rename(actor=colleague, public_id=made.public_id, title="Mine")
    assert refused.value.code == "not_found"
    assert AuditEvent.objects.filter(action=AuditAction.CONVERSATION_ACCESS_DENIED).exists()
    services.conversation_delete(actor=owner, public_id=made.public_id)
    with pytest.raises(ChatError) as gone:
        services.conversation_rename(actor=owner, public_id=made.public_id, title="Back")
    assert gone.value.code == "not_found"


def test_rename_under_legal_hold_is_refused_and_audited(owner) -> None:
    made = conversation(owner)
    Conversation.objects.filter(pk=made.pk).update(legal_hold=True)
    with pytest.raises(ChatError) as refused:
        services.conversation_rename(actor=owner, public_id=made.public_id, title="Other")
    assert refused.value.code == "legal_hold"
    event = AuditEvent.objects.get(action=AuditAction.CONVERSATION_RENAMED)
    assert event.outcome == AuditOutcome.DENIED and event.details["reason"] == "legal_hold"


def test_rename_view(client: Client, owner, colleague) -> None:
    made = conversation(owner)
    url = f"/c/{made.public_id}/rename"
    client.force_login(owner)
    assert client.get(url).status_code == 405
    response = post(client, url, {"title": "Renamed"})
    assert response.status_code == 200 and response.json()["title"] == "Renamed"
    bad = post(client, url, {"title": ""})
    assert bad.status_code == 400 and bad.json()["code"] == "invalid" and bad.json()["reason"]
    assert client.post(url, "[1", content_type="application/json").json()["code"] == "invalid"
    client.force_login(colleague)
    assert post(client, url, {"title": "x"}).status_code == 404


def test_rename_view_needs_the_csrf_token(owner) -> None:
    made = conversation(owner)
    client = Client(enforce_csrf_checks=True)
    client.force_login(owner)
    assert post(client, f"/c/{made.public_id}/rename", {"title": "x"}).status_code == 403


# --- delete ------------------------------------------------------------------------------


def test_delete_view(client: Client, owner, colleague) -> None:
    made = conversation(owner)
    url = f"/c/{made.public_id}/delete"
    client.force_login(colleague)
    assert post(client, url, {}).status_code == 404
    client.force_login(owner)
    response = post(client, url, {})
    assert response.status_code == 200 and response.json()["deleted"] is True
    made.refresh_from_db()
    assert made.deleted_at is not None and made.title == ""
    assert post(client, url, {}).json()["code"] == "not_found"


def test_delete_view_under_legal_hold_says_why(client: Client, owner) -> None:
    made = conversation(owner)
    Conversation.objects.filter(pk=made.pk).update(legal_hold=True)
    client.force_login(owner)
    response = post(client, f"/c/{made.public_id}/delete", {})
    assert response.status_code == 409
    assert response.json()["code"] == "legal_hold"
    assert "legal hold" in response.json()["reason"]
    made.refresh_from_db()
    assert made.deleted_at is None


# --- export ------------------------------------------------------------------------------


def test_export_content(owner) -> None:
    made = conversation(owner)
    exported = conversation_export(actor=owner, public_id=made.public_id)
    text = exported.text
    assert text.startswith("# Launch plan\n")
    assert "## You · " in text and "What **is** the plan?" in text
    assert "## Assistant (demo) · " in text and "1. ship" in text
    assert '> Used tool `web_search` with `{"q": "x"}`: result of 3 characters.' in text
    assert "> Used tool `read` (failed)" in text
    assert text.index("What **is**") < text.index("1. ship")
    assert exported.filename.startswith("launch-plan-") and exported.filename.endswith(".md")
    event = AuditEvent.objects.get(action=AuditAction.CONVERSATION_EXPORTED)
    assert event.details == {"messages": 2, "format": "markdown"}


def test_export_view_downloads_markdown_for_the_owner_only(
    client: Client, owner, colleague
) -> None:
    made = conversation(owner, title="Plan: Q3/ä")
    url = f"/c/{made.public_id}/export.md"
    client.force_login(owner)
    response = client.get(url)
    assert response.status_code == 200
    assert response["Content-Type"] == "text/markdown; charset=utf-8"
    assert response["Content-Disposition"].startswith("attachment; filename")
    assert ".md" in response["Content-Disposition"]
    assert response.content.decode().startswith("# Plan: Q3/ä")
    client.force_login(colleague)
    denied = client.get(url)
    assert denied.status_code == 404 and denied.json()["code"] == "not_found"
    assert AuditEvent.objects.filter(
        action=AuditAction.CONVERSATION_ACCESS_DENIED, actor=colleague
    ).exists()
    assert AuditEvent.objects.filter(action=AuditAction.CONVERSATION_EXPORTED).count() == 1
