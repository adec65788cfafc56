"""Transcripts are viewable in the admin and cannot be changed there, even by a superuser."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from conversations.models import Conversation, Message

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_client_logged_in(client: Client) -> Client:
    admin = get_user_model().objects.create_superuser(
        "root", "root@example.com", "pw-for-tests-123"
    )
    client.force_login(admin)
    return client


def test_superuser_can_view_but_not_edit_or_delete_a_transcript(
    admin_client_logged_in: Client, owner
) -> None:
    conversation = Conversation.objects.create(owner=owner, title="Reviewed", model="demo")
    message = Message.objects.create(
        conversation=conversation, role="user", content="original", status="complete"
    )
    url = f"/admin/conversations/conversation/{conversation.pk}/change/"
    page = admin_client_logged_in.get(url)
    assert page.status_code == 200 and "original" in page.content.decode()

    admin_client_logged_in.post(url, {"title": "Tampered"})
    admin_client_logged_in.post(
        f"/admin/conversations/message/{message.pk}/change/", {"content": "tampered"}
    )
    delete = admin_client_logged_in.post(
        f"/admin/conversations/conversation/{conversation.pk}/delete/", {"post": "yes"}
    )
    assert delete.status_code == 403
    assert admin_client_logged_in.get("/admin/conversations/message/add/").status_code == 403
    conversation.refresh_from_db()
    message.refresh_from_db()
    assert conversation.title == "Reviewed" and message.content == "original"


def test_console_searches_encrypted_titles_in_python_and_lists_them_decrypted(
    admin_client_logged_in: Client, owner, colleague
) -> None:
    Conversation.objects.create(owner=owner, title="Budget review for Q3", model="demo")
    Conversation.objects.create(owner=colleague, title="Holiday rota", model="demo")
    listing = admin_client_logged_in.get("/admin/conversations/conversation/")
    html = listing.content.decode()
    assert "Budget review for Q3" in html and "Holiday rota" in html

    found = admin_client_logged_in.get("/admin/conversations/conversation/?q=budget+q3")
    html = found.content.decode()
    assert found.status_code == 200
    assert "Budget review for Q3" in html and "Holiday rota" not in html
    # The owner's e-mail still matches in SQL.
    by_owner = admin_client_logged_in.get(f"/admin/conversations/conversation/?q={colleague.email}")
    assert "Holiday rota" in by_owner.content.decode()
    # The title column cannot be sorted (it would sort ciphertext).
    assert "o=1" not in html.split("column-display_title")[1].split("</th>")[0]
