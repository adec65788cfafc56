"""Search over one's own conversations through a blind index (conversations.search): words
found in older messages and titles, every word required, never another person's, never
after deletion, retention or erasure, never a plaintext word in the database, and valid
across a master-key rotation without reindexing."""

from __future__ import annotations

from io import StringIO
from typing import Any

import pytest
from django.core.management import call_command
from django.db import connection
from django.test import Client

from accounts.erasure import person_erase
from conversations import search, services
from conversations.errors import ChatError
from conversations.generation import reply_generate
from conversations.models import Conversation, Message, SearchDocument
from conversations.search import conversation_search, words_of
from protection import datakeys, keyring
from protection.keyfile import generate_master_key
from protection.models import DataKey
from retention.models import RetentionPolicy
from retention.services import retention_apply
from retention.tests.helpers import age

pytestmark = pytest.mark.django_db


@pytest.fixture
def say(fast_demo: None, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Send a message through the product's send path and let the demo model answer."""
    monkeypatch.setattr("conversations.services.dispatch", lambda *a: None)

    def send(actor: Any, text: str, conversation: Conversation | None = None) -> Conversation:
        result = services.message_send(
            actor=actor,
            text=text,
            model_key="demo",
            conversation_id=conversation.public_id if conversation else None,
        )
        reply_generate(reply_id=result.reply.pk)
        return result.conversation

    return send


def found(user: Any, query: str) -> list[str]:
    return [hit.conversation for hit in conversation_search(user=user, query=query)]


def test_words_are_normalised() -> None:
    assert words_of("Ｒésumé, RÉSUMÉ! a I x2 Straße") == ["résumé", "résumé", "x2", "strasse"]


def test_finds_a_word_in_an_older_message_with_a_snippet(owner, say) -> None:
    conversation = say(owner, "Let us plan the zanzibar offsite for the whole team in spring")
    for n in range(3):
        say(owner, f"Another question number {n}", conversation)
    say(owner, "Something else entirely")
    hits = conversation_search(user=owner, query="ZANZIBAR")
    assert [h.conversation for h in hits] == [str(conversation.public_id)]
    assert "zanzibar offsite" in hits[0].snippet
    holding = {str(m.public_id) for m in conversation.messages.all() if "zanzibar" in m.content}
    assert hits[0].message in holding


def test_finds_a_word_of_a_reply_and_of_a_title(owner, say) -> None:
    conversation = say(owner, "Hello there")
    reply = conversation.messages.filter(role="assistant").get()
    word = next(w for w in words_of(str(reply.content)) if len(w) > 4)
    assert found(owner, word) == [str(conversation.public_id)]
    services.conversation_rename(
        actor=owner, public_id=conversation.public_id, title="Budget kumquat review"
    )
    hits = conversation_search(user=owner, query="kumquat")
    assert [h.conversation for h in hits] == [str(conversation.public_id)]
    assert hits[0].title == "Budget kumquat review"


def test_every_word_must_match_in_the_same_message(owner, say) -> None:
    both = say(owner, "quarterly revenue forecast")
    say(owner, "quarterly holiday rota")
    assert found(owner, "quarterly") == [
        str(c.public_id) for c in Conversation.objects.order_by("-updated_at")
    ]
    assert found(owner, "revenue quarterly") == [str(both.public_id)]
    assert found(owner, "revenue rota") == []


def test_newest_first_and_bounded(owner, say, settings) -> None:
    settings.CHAT_MESSAGES_PER_MINUTE = 0
    made = [say(owner, f"pineapple number {n}") for n in range(4)]
    assert found(owner, "pineapple") == [str(c.public_id) for c in reversed(made)]
    assert len(conversation_search(user=owner, query="pineapple", limit=2)) == 2


def test_never_another_persons_conversation(owner, colleague, say) -> None:
    say(colleague, "the secret mangosteen project")
    mine = say(owner, "my own mangosteen notes")
    assert found(owner, "mangosteen") == [str(mine.public_id)]
    assert len(found(colleague, "mangosteen")) == 1 and found(colleague, "mangosteen") != found(
        owner, "mangosteen"
    )


def test_nothing_after_delete(owner, say) -> None:
    conversation = say(owner, "durian tasting notes")
    services.conversation_delete(actor=owner, public_id=conversation.public_id)
    assert found(owner, "durian") == []
    assert not SearchDocument.objects.filter(conversation=conversation).exists()


@pytest.mark.parametrize("action", [RetentionPolicy.Action.ERASE, RetentionPolicy.Action.REMOVE])
def test_nothing_after_retention(owner, say, action: str) -> None:
    conversation = say(owner, "lychee shipment schedule")
    age(conversation, days=40)
    RetentionPolicy.objects.create(
        name="Org", scope=RetentionPolicy.Scope.ORGANISATION, days=30, action=action
    )
    retention_apply()
    assert found(owner, "lychee") == []
    assert not SearchDocument.objects.filter(conversation=conversation).exists()


def test_nothing_after_person_erasure(owner, compliance_officer, say) -> None:
    say(owner, "rambutan supplier contract")
    person_erase(actor=compliance_officer, person=owner, reason="DSR-9")
    assert not SearchDocument.objects.filter(owner=owner).exists()
    assert found(owner, "rambutan") == []


def test_no_plaintext_word_is_stored(owner, say) -> None:
    say(owner, "Confidential persimmon merger with Globex")
    with connection.cursor() as cursor:
        cursor.execute("SELECT tokens FROM conversations_searchdocument")
        stored = " ".join(row[0] for row in cursor.fetchall()).lower()
    assert stored.strip()
    for word in ("confidential", "persimmon", "merger", "globex"):
        assert word not in stored
    assert set(stored.replace(" ", "")) <= set("abcdefghijklmnop")


def test_the_search_key_rotates_with_the_master_key_without_reindex(owner, say, settings) -> None:
    old = generate_master_key()
    settings.ENCRYPTION_KMS_KEY_ID = ""
    settings.ENCRYPTION_MASTER_KEY = old
    settings.ENCRYPTION_MASTER_KEY_LOCAL_FILE = ""
    keyring.clear_cache()
    conversation = say(owner, "tamarind invoice")
    tokens_before = set(SearchDocument.objects.values_list("tokens", flat=True))
    search_key = DataKey.objects.get(purpose=datakeys.SEARCH)
    assert search_key.period == datakeys.STANDING

    settings.ENCRYPTION_MASTER_KEY = generate_master_key()
    settings.ENCRYPTION_PREVIOUS_MASTER_KEYS = [old]
    call_command("rotate_encryption_keys", stdout=StringIO(), stderr=StringIO())
    search_key.refresh_from_db()
    assert search_key.rotated_at is not None
    settings.ENCRYPTION_PREVIOUS_MASTER_KEYS = []  # the old master key is gone
    datakeys.clear_cache()

    assert set(SearchDocument.objects.values_list("tokens", flat=True)) == tokens_before
    assert found(owner, "tamarind") == [str(conversation.public_id)]
    # Re-encrypting the transcripts retires their keys, never the search key.
    call_command("rotate_encryption_keys", "--reencrypt", stdout=StringIO(), stderr=StringIO())
    datakeys.clear_cache()
    assert DataKey.objects.get(pk=search_key.pk).retired_at is None
    assert found(owner, "tamarind") == [str(conversation.public_id)]


def test_rebuild_indexes_existing_rows(owner, say) -> None:
    conversation = say(owner, "guava harvest")
    SearchDocument.objects.all().delete()
    assert found(owner, "guava") == []
    out = StringIO()
    call_command("rebuild_search_index", stdout=out)
    assert "Indexed 2 messages and 1 titles" in out.getvalue()
    assert found(owner, "guava") == [str(conversation.public_id)]
    call_command("rebuild_search_index", stdout=StringIO())  # idempotent
    assert SearchDocument.objects.count() == 3


@pytest.mark.parametrize(
    ("query", "code"),
    [("", "invalid"), ("a b c", "invalid"), (["x"], "invalid"), ("word " * 50, "too_large")],
)
def test_bad_queries_are_refused_with_a_code(owner, query: Any, code: str) -> None:
    with pytest.raises(ChatError) as refused:
        conversation_search(user=owner, query=query)
    assert refused.value.code == code


def test_search_view_answers_json_and_is_rate_limited(
    client: Client, owner, colleague, say, settings
) -> None:
    conversation = say(owner, "papaya dashboard")
    say(colleague, "papaya dashboard too")
    client.force_login(owner)
    response = client.get("/search", {"q": "papaya"})
    assert response.status_code == 200
    (hit,) = response.json()["results"]
    assert hit["conversation"] == str(conversation.public_id)
    assert hit["url"].startswith(f"/c/{conversation.public_id}/#m-")
    assert "papaya" in hit["snippet"]
    bad = client.get("/search", {"q": "x" * 201})
    assert bad.status_code == 400 and bad.json()["code"] == "too_large"
    settings.CHAT_SEARCHES_PER_MINUTE = 1
    from django.core.cache import cache

    cache.clear()
    assert client.get("/search", {"q": "papaya"}).status_code == 200
    limited = client.get("/search", {"q": "papaya"})
    assert limited.status_code == 429 and limited.json()["code"] == "rate_limited"
    assert int(limited["Retry-After"]) >= 1


def test_the_index_follows_a_message_without_text(owner) -> None:
    conversation = Conversation.objects.create(owner=owner, title="t", model="demo")
    message = Message.objects.create(conversation=conversation, role="user", content="feijoa")
    search.index_message(message)
    assert found(owner, "feijoa") == [str(conversation.public_id)]
    message.content = ""
    search.index_message(message)
    assert found(owner, "feijoa") == []
