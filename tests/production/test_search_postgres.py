"""The chat search's blind index on PostgreSQL (conversations.search): the tokens become a
generated tsvector ('simple') with a GIN index the query uses; a word of an older message is
found, every word is required, another person's conversation never is, and a dump of the
index holds no word.

Run by `make test-production`.
"""

from __future__ import annotations

from typing import Any

import pytest
from django.db import connection

from conversations import services
from conversations.generation import reply_generate
from conversations.models import Conversation, SearchDocument
from conversations.search import conversation_search

pytestmark = [pytest.mark.production, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def say(fast_demo: None, monkeypatch: pytest.MonkeyPatch) -> Any:
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


def rows(sql: str, params: list[Any] | None = None) -> list[tuple[Any, ...]]:
    with connection.cursor() as cursor:
        cursor.execute(sql, params or [])
        return list(cursor.fetchall())


def found(user: Any, query: str) -> list[str]:
    return [hit.conversation for hit in conversation_search(user=user, query=query)]


def test_the_index_is_a_generated_tsvector_with_a_gin_index() -> None:
    assert connection.vendor == "postgresql"
    (column,) = rows(
        "SELECT data_type, is_generated FROM information_schema.columns "
        "WHERE table_name = 'conversations_searchdocument' AND column_name = 'search_vector'"
    )
    assert column == ("tsvector", "ALWAYS")
    (index,) = rows("SELECT indexdef FROM pg_indexes WHERE indexname = 'searchdoc_vector_gin'")
    assert "USING gin (search_vector)" in index[0]


def test_search_on_postgresql(owner, colleague, say, settings) -> None:
    settings.CHAT_MESSAGES_PER_MINUTE = 0
    planned = say(owner, "Plan the zanzibar offsite for the whole team")
    for n in range(3):
        say(owner, f"Follow-up question {n}", planned)
    other = say(owner, "zanzibar flight prices")
    say(colleague, "colleague's zanzibar offsite notes")

    # A word of an older message; newest first; never the colleague's.
    assert found(owner, "Zanzibar") == [str(other.public_id), str(planned.public_id)]
    hits = conversation_search(user=owner, query="offsite zanzibar")
    assert [h.conversation for h in hits] == [str(planned.public_id)]  # every word required
    assert "zanzibar offsite" in hits[0].snippet
    assert found(owner, "offsite prices") == []
    assert len(found(colleague, "zanzibar")) == 1

    # The tsvector holds exactly the stored tokens: the parser neither splits nor rewrites.
    for tokens, vector in rows(
        "SELECT tokens, search_vector::text FROM conversations_searchdocument"
    ):
        lexemes = {part.rsplit(":", 1)[0].strip("'") for part in vector.split()}
        assert lexemes == set(tokens.split())

    # The GIN index answers the match (with sequential scans priced out, as on a big table).
    token = SearchDocument.objects.filter(owner=owner).first().tokens.split()[0]  # type: ignore[union-attr]
    with connection.cursor() as cursor:
        cursor.execute("SET enable_seqscan = off")
        try:
            cursor.execute(
                "EXPLAIN SELECT id FROM conversations_searchdocument "
                "WHERE search_vector @@ plainto_tsquery('simple', %s)",
                [token],
            )
            plan = " ".join(row[0] for row in cursor.fetchall())
        finally:
            cursor.execute("RESET enable_seqscan")
    assert "searchdoc_vector_gin" in plan

    # No word in a dump of the index.
    dumped = " ".join(
        row[0] for row in rows("SELECT row_to_json(d)::text FROM conversations_searchdocument d")
    ).lower()
    for word in ("zanzibar", "offsite", "flight", "prices", "colleague"):
        assert word not in dumped

    services.conversation_delete(actor=owner, public_id=other.public_id)
    assert found(owner, "zanzibar") == [str(planned.public_id)]
