# ruff: noqa: F811 - the fixtures imported below are used by name as parameters
"""Encryption at rest on PostgreSQL: no plaintext in a raw SELECT after a real chat reply,
one data key per month however many processes race to create it, the data migration and its
reverse, and rotation through AWS KMS (moto's server on loopback, real boto3 calls).

Run by `make test-production`.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest
from django.db import connection, connections

from conversations.generation import reply_generate
from conversations.models import Conversation, Message
from conversations.services import message_send
from protection import datakeys
from protection.models import DataKey
from protection.tests.conftest import (  # noqa: F401 - fixtures shared with the unit tests
    kms,
    local_master,
    turn,
)
from protection.tests.test_migration import (  # noqa: F401 - the fixture restores the schema
    _latest_schema_afterwards,
)
from protection.tests.test_migration import (
    test_existing_rows_are_sealed_and_the_reverse_opens_them as migration_round_trip,
)
from protection.tests.test_rotation import test_kms_master_key_rotation as kms_rotation

pytestmark = [pytest.mark.production, pytest.mark.django_db(transaction=True)]

SECRET_TEXT = "Acquisition target NIGHTJAR, board vote on Friday"


def test_a_chat_reply_leaves_no_plaintext_in_postgresql(
    owner: Any, fast_demo: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("conversations.services.dispatch", lambda *a: None)
    result = message_send(actor=owner, text=SECRET_TEXT, model_key="demo")
    reply_generate(reply_id=result.reply.pk)
    reply = Message.objects.get(pk=result.reply.pk)
    assert reply.status == Message.Status.COMPLETE and len(reply.content) > 20

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT content, tool_events, options FROM conversations_message "
            "UNION ALL SELECT title, '', '' FROM conversations_conversation"
        )
        rows = cursor.fetchall()
        # The whole table as PostgreSQL would dump it.
        cursor.execute("SELECT row_to_json(m)::text FROM conversations_message m")
        dumped = " ".join(row[0] for row in cursor.fetchall())
    assert rows
    for row in rows:
        for value in row:
            assert value == "" or value.startswith(datakeys.PREFIX)
    for word in ("NIGHTJAR", "Acquisition", reply.content[:20]):
        assert word not in repr(rows) and word not in dumped
    assert Conversation.objects.get().title == SECRET_TEXT
    assert Message.objects.get(pk=result.user_message.pk).content == SECRET_TEXT


def test_one_active_data_key_however_many_processes_race(local_master: str) -> None:
    barrier = threading.Barrier(6)
    found: list[str] = []
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            barrier.wait()
            datakeys.clear_cache()
            found.append(datakeys.key_for_writing()[0])
        except BaseException as exc:  # reported below
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=writer) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not errors
    assert len(set(found)) == 1
    assert DataKey.objects.filter(retired_at__isnull=True).count() == 1


def test_the_data_migration_on_postgresql(owner: Any, local_master: str) -> None:
    migration_round_trip(owner, local_master)


def test_kms_rotation_on_postgresql(turn: Any, kms: Any, settings: Any, local_master: str) -> None:
    kms_rotation(turn, kms, settings, local_master)
