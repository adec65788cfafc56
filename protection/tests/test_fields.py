"""Transcripts encrypted at rest: after a real chat reply through the send path, a raw
SELECT finds no plaintext; every write path seals; tampering and missing keys give a clear
code, never a stack trace; SQL comparisons of plaintext are refused."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from django.core.exceptions import FieldError
from django.db import connection

from conversations.generation import reply_generate
from conversations.models import Conversation, Message
from conversations.services import message_send
from protection import datakeys
from protection.fields import Unreadable, unreadable_code
from protection.models import DataKey

pytestmark = pytest.mark.django_db

SECRET_TEXT = "Merger codename BLUEHERON closes on the ninth"


def raw_rows(sql: str) -> list[tuple[Any, ...]]:
    with connection.cursor() as cursor:
        cursor.execute(sql)
        return list(cursor.fetchall())


def chat_turn(owner: Any, monkeypatch: pytest.MonkeyPatch, text: str = SECRET_TEXT) -> Any:
    monkeypatch.setattr("conversations.services.dispatch", lambda *a: None)
    result = message_send(actor=owner, text=text, model_key="demo")
    reply_generate(reply_id=result.reply.pk)
    result.reply.refresh_from_db()
    assert result.reply.status == Message.Status.COMPLETE
    return result


def test_a_chat_reply_leaves_no_plaintext_in_the_tables(
    owner: Any, fast_demo: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = chat_turn(owner, monkeypatch)
    reply_text = result.reply.content
    assert len(reply_text) > 20
    Message.objects.filter(pk=result.reply.pk).update(
        tool_events=[{"id": "t1", "name": "search", "arguments": {"q": "BLUEHERON"}}],
        options={"temperature": 0.3},
    )

    messages = raw_rows("SELECT content, tool_events, options FROM conversations_message")
    titles = raw_rows("SELECT title FROM conversations_conversation")
    dump = repr(messages + titles)
    for word in ("BLUEHERON", "Merger", reply_text[:20], "search", "temperature"):
        assert word not in dump
    for row in messages + titles:
        for value in row:
            assert value == "" or str(value).startswith(datakeys.PREFIX), value

    # ...and everything reads back through the fields.
    user_message = Message.objects.get(pk=result.user_message.pk)
    assert user_message.content == SECRET_TEXT
    assert Conversation.objects.get().title == SECRET_TEXT
    reply = Message.objects.get(pk=result.reply.pk)
    assert reply.content == reply_text
    assert reply.tool_events[0]["arguments"] == {"q": "BLUEHERON"}
    assert reply.options == {"temperature": 0.3}
    assert list(Message.objects.order_by("id").values_list("content", flat=True)) == [
        SECRET_TEXT,
        reply_text,
    ]


def test_one_data_key_per_month_wrapped_and_cached(
    owner: Any, fast_demo: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    chat_turn(owner, monkeypatch)
    chat_turn(owner, monkeypatch, "a second conversation")
    # One transcript key for the month (and the chat search's standing key, conversations.search).
    data_key = DataKey.objects.get(purpose=datakeys.TRANSCRIPTS)
    assert DataKey.objects.exclude(purpose=datakeys.TRANSCRIPTS).get().purpose == datakeys.SEARCH
    assert data_key.period == datakeys.current_period()
    assert data_key.master_key_id.startswith("local:")
    assert len(bytes(data_key.wrapped)) > 32  # only the wrapped form is stored


def test_sql_comparison_of_encrypted_text_is_refused(owner: Any) -> None:
    with pytest.raises(FieldError, match="encrypted"):
        list(Message.objects.filter(content="hello"))
    with pytest.raises(FieldError):
        list(Conversation.objects.filter(title__icontains="plan"))
    with pytest.raises(FieldError):
        list(Message.objects.filter(options__temperature=1))
    # Emptiness (a pending reply, erased text) is the one thing SQL may still test.
    assert list(Message.objects.exclude(content="")) == []


def _tamper(table: str, column: str, pk: int) -> None:
    (stored,) = raw_rows(f"SELECT {column} FROM {table} WHERE id = {int(pk)}")[0]  # noqa: S608
    flipped = stored[:-6] + ("A" if stored[-6] != "A" else "B") + stored[-5:]
    with connection.cursor() as cursor:
        cursor.execute(f"UPDATE {table} SET {column} = %s WHERE id = %s", [flipped, pk])  # noqa: S608


def test_tampered_ciphertext_reads_as_a_clear_code_and_is_logged_without_secrets(
    owner: Any, fast_demo: None, monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    result = chat_turn(owner, monkeypatch)
    _tamper("conversations_message", "content", result.user_message.pk)
    caplog.set_level(logging.ERROR, logger="protection")

    message = Message.objects.get(pk=result.user_message.pk)
    assert isinstance(message.content, Unreadable)
    assert unreadable_code(message.content) == "ciphertext_tampered"
    assert "ciphertext_tampered" in message.content and "Traceback" not in message.content
    assert "conversations.message.content (ciphertext_tampered)" in caplog.text
    assert "BLUEHERON" not in caplog.text and datakeys.PREFIX not in caplog.text

    # Other rows still read; saving the unreadable row keeps the stored ciphertext as it was.
    assert Message.objects.get(pk=result.reply.pk).content == result.reply.content
    (before,) = raw_rows(f"SELECT content FROM conversations_message WHERE id = {message.pk}")[0]  # noqa: S608
    message.save(update_fields=["content"])
    (after,) = raw_rows(f"SELECT content FROM conversations_message WHERE id = {message.pk}")[0]  # noqa: S608
    assert after == before


def test_ciphertext_moved_to_another_column_does_not_open(
    owner: Any, fast_demo: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = chat_turn(owner, monkeypatch)
    (content,) = raw_rows(
        f"SELECT content FROM conversations_message WHERE id = {result.user_message.pk}"  # noqa: S608
    )[0]
    with connection.cursor() as cursor:
        cursor.execute("UPDATE conversations_conversation SET title = %s", [content])
    assert unreadable_code(Conversation.objects.get().title) == "ciphertext_tampered"


def test_plaintext_written_behind_the_products_back_is_not_trusted(
    owner: Any, fast_demo: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = chat_turn(owner, monkeypatch)
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE conversations_message SET content = %s WHERE id = %s",
            ["injected instructions", result.user_message.pk],
        )
    assert unreadable_code(Message.objects.get(pk=result.user_message.pk).content)


def test_a_missing_master_key_gives_key_unavailable(
    owner: Any, fast_demo: None, monkeypatch: pytest.MonkeyPatch, settings: Any
) -> None:
    result = chat_turn(owner, monkeypatch)
    from protection.keyfile import generate_master_key

    settings.ENCRYPTION_MASTER_KEY = generate_master_key()  # the old one is gone
    settings.ENCRYPTION_MASTER_KEY_LOCAL_FILE = ""
    content = Message.objects.get(pk=result.user_message.pk).content
    assert unreadable_code(content) == "key_unavailable"


def test_every_write_path_seals(
    owner: Any, fast_demo: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = chat_turn(owner, monkeypatch)
    conversation = result.conversation
    Message.objects.filter(pk=result.reply.pk).update(content="via update")
    Message.objects.bulk_create(
        [
            Message(
                conversation=conversation, role="user", content="via bulk_create", status="complete"
            )
        ]
    )
    rows = Message.objects.filter(conversation=conversation).order_by("id")
    for row in rows:
        row.content = f"via bulk_update {row.pk}"
    Message.objects.bulk_update(rows, ["content"])
    dump = repr(raw_rows("SELECT content FROM conversations_message"))
    assert "via" not in dump
    assert sorted(Message.objects.values_list("content", flat=True)) == sorted(
        f"via bulk_update {row.pk}" for row in rows
    )


def test_a_message_that_cannot_be_encrypted_is_refused_with_a_code(
    owner: Any, settings: Any, caplog: Any
) -> None:
    from conversations.errors import ChatError

    settings.ENCRYPTION_KMS_KEY_ID = ""
    settings.ENCRYPTION_MASTER_KEY = ""
    settings.ENCRYPTION_MASTER_KEY_LOCAL_FILE = ""  # no master key at all
    with pytest.raises(ChatError) as caught:
        message_send(actor=owner, text=SECRET_TEXT, model_key="demo")
    assert caught.value.code == "encryption_unavailable"
    assert Message.objects.count() == 0 and Conversation.objects.count() == 0
    assert "encryption unavailable (key_unavailable)" in caplog.text


def test_a_row_inserted_without_options_reads_them_empty(
    owner: Any, fast_demo: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = chat_turn(owner, monkeypatch)
    with connection.cursor() as cursor:  # as the previous release would, during a deploy
        cursor.execute(
            "INSERT INTO conversations_message (public_id, conversation_id, role, content, "
            "status, model, answered_by, notice, tool_events, error_code, error, request_id, "
            "stop_reason, cost_estimated, created_at) VALUES "
            "(%s, %s, 'user', '', 'complete', '', '', '', '', '', '', '', '', %s, %s)",
            ["0f0e0d0c0b0a09080706050403020100", result.conversation.pk, False, "2026-01-01"],
        )
    message = Message.objects.get(public_id="0f0e0d0c-0b0a-0908-0706-050403020100")
    assert message.options == {} and message.tool_events == []
