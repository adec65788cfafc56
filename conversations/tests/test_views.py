"""The chat page shows only the user's own conversations, safely rendered."""

from __future__ import annotations

import pytest
from django.test import Client

from conversations.models import Conversation, Message

pytestmark = pytest.mark.django_db


def conversation(owner, title: str) -> Conversation:
    return Conversation.objects.create(owner=owner, title=title, model="demo")


def test_list_shows_own_conversations_newest_first(client: Client, owner, colleague) -> None:
    older = conversation(owner, "Older")
    newer = conversation(owner, "Newer")
    conversation(colleague, "Bob's secret")
    client.force_login(owner)
    listed = client.get("/").context["conversations"]
    assert [c.title for c in listed] == ["Newer", "Older"]
    older.save()  # activity moves a conversation to the top
    assert [c.title for c in client.get("/").context["conversations"]] == ["Older", "Newer"]
    assert "Bob&#x27;s secret" not in client.get("/").content.decode()
    assert newer.pk


def test_list_is_capped(client: Client, owner, settings) -> None:
    settings.CHAT_CONVERSATIONS_PER_PAGE = 3
    for n in range(5):
        conversation(owner, f"c{n}")
    client.force_login(owner)
    assert len(client.get("/").context["conversations"]) == 3


def test_older_pages_follow_the_cursor_to_the_end(
    client: Client, owner, colleague, settings
) -> None:
    settings.CHAT_CONVERSATIONS_PER_PAGE = 2
    for n in range(5):
        conversation(owner, f"c{n}")
    client.force_login(owner)
    seen: list[str] = []
    url = "/"
    while url:
        response = client.get(url)
        assert response.status_code == 200
        seen += [c.title for c in response.context["conversations"]]
        older = response.context["older_page"]
        url = f"/?before={older}" if older else ""
        if older:
            assert f'href="/?before={older}"' in response.content.decode()
    assert seen == ["c4", "c3", "c2", "c1", "c0"]


@pytest.mark.parametrize("before", ["not-an-id", "1' OR '1'='1", "x" * 5000])
def test_a_malformed_cursor_is_a_clear_400(client: Client, owner, before: str) -> None:
    client.force_login(owner)
    response = client.get("/", {"before": before})
    assert response.status_code == 400
    assert "must be a conversation id" in response.content.decode()


def test_a_cursor_of_someone_elses_conversation_is_refused(
    client: Client, owner, colleague
) -> None:
    theirs = conversation(colleague, "Bob's")
    conversation(owner, "Mine")
    client.force_login(owner)
    response = client.get("/", {"before": str(theirs.public_id)})
    assert response.status_code == 400
    assert "does not exist" in response.content.decode()
    assert "Bob" not in response.content.decode()


def test_foreign_conversation_is_not_found(client: Client, owner, outsider) -> None:
    theirs = conversation(owner, "Private")
    Message.objects.create(
        conversation=theirs, role="user", content="secret plan", status="complete"
    )
    client.force_login(outsider)
    response = client.get(f"/c/{theirs.public_id}/")
    assert response.status_code == 404
    assert b"secret plan" not in response.content


def test_conversation_page_escapes_user_text_and_sanitises_replies(
    client: Client, owner, django_assert_max_num_queries
) -> None:
    mine = conversation(owner, "Mine")
    Message.objects.create(
        conversation=mine, role="user", content="<b>bold?</b>", status="complete"
    )
    Message.objects.create(
        conversation=mine,
        role="assistant",
        status="complete",
        content="**ok** <script>alert(1)</script>",
    )
    for n in range(10):
        Message.objects.create(
            conversation=mine, role="user", content=f"more {n}", status="complete"
        )
    client.force_login(owner)
    # 9: the model picker's prices are one more query (costs.selectors.model_choices).
    with django_assert_max_num_queries(9):
        response = client.get(f"/c/{mine.public_id}/")
    html = response.content.decode()
    assert "&lt;b&gt;bold?&lt;/b&gt;" in html
    assert "<strong>ok</strong>" in html
    assert "<script>alert" not in html
    assert 'data-demo="true"' in html  # the model picker labels the demo model


def test_pages_load_no_inline_script(client: Client, owner) -> None:
    client.force_login(owner)
    html = client.get("/").content.decode()
    # Only external scripts (the theme, applied before the first paint, and the chat module)
    # and the JSON data block: ready for a strict CSP.
    assert html.count("<script") == 3
    assert '<script src="/static/js/theme.js">' in html
    assert '<script type="module" src="/static/js/chat.js">' in html
    assert '<script id="chat-config" type="application/json">' in html
