"""The data migration seals existing transcripts in batches, and its reverse opens them."""

from __future__ import annotations

import importlib
from typing import Any

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from protection import datakeys

BEFORE = [("conversations", "0009_message_api_key")]
AFTER = [("conversations", "0010_encrypt_transcripts")]


def migrate(targets: list[tuple[str, str]]) -> Any:
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(targets)
    return executor.loader.project_state(targets).apps


def raw(sql: str) -> list[tuple[Any, ...]]:
    with connection.cursor() as cursor:
        cursor.execute(sql)
        return list(cursor.fetchall())


@pytest.fixture(autouse=True)
def _latest_schema_afterwards() -> Any:
    """Leave the database at the latest migrations (later ones add tables other tests use)."""
    yield
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(executor.loader.graph.leaf_nodes())


@pytest.mark.django_db(transaction=True)
def test_existing_rows_are_sealed_and_the_reverse_opens_them(owner: Any, local_master: str) -> None:
    old = migrate(BEFORE)
    conversation = old.get_model("conversations", "Conversation").objects.create(
        owner_id=owner.pk, title="Old plaintext title", model="demo"
    )
    message_model = old.get_model("conversations", "Message")
    for i in range(7):
        message_model.objects.create(
            conversation_id=conversation.pk,
            role="user",
            content=f"old plaintext {i}",
            status="complete",
            tool_events=[{"name": "search", "result": f"found {i}"}],
            options={"temperature": 0.5},
        )
    message_model.objects.create(conversation_id=conversation.pk, role="assistant", content="")

    module: Any = importlib.import_module("conversations.migrations.0010_encrypt_transcripts")
    original_batch = module.BATCH
    module.BATCH = 3  # several batches
    try:
        after = migrate(AFTER)
    finally:
        module.BATCH = original_batch
    dump = repr(raw("SELECT title FROM conversations_conversation")) + repr(
        raw("SELECT content, tool_events, options FROM conversations_message")
    )
    assert "plaintext" not in dump and "search" not in dump and "temperature" not in dump
    assert dump.count(datakeys.PREFIX) == 1 + 7 * 3 + 2  # the empty reply: only its JSON

    # Read through the models as of that migration (later ones add columns).
    Message = after.get_model("conversations", "Message")

    assert sorted(m.content for m in Message.objects.exclude(content="")) == sorted(
        f"old plaintext {i}" for i in range(7)
    )
    first = Message.objects.exclude(content="").first()
    assert first is not None and first.tool_events[0]["name"] == "search"

    migrate(BEFORE)
    assert raw("SELECT title FROM conversations_conversation") == [("Old plaintext title",)]
    contents = sorted(row[0] for row in raw("SELECT content FROM conversations_message"))
    assert contents == sorted(["", *(f"old plaintext {i}" for i in range(7))])
    migrate(AFTER)
