"""Key rotation without downtime: a retired master key stays readable as a previous key;
after `rotate_encryption_keys` everything reads with the new master key alone (local key
files and AWS KMS through moto's server); `--reencrypt` moves rows to fresh data keys."""

from __future__ import annotations

import base64
from io import StringIO
from typing import Any

import pytest
from django.core.management import call_command
from django.db import connection

from audit import personal
from audit.catalogue import AuditAction
from audit.models import AuditEvent
from conversations.models import Conversation, Message
from protection import aead, datakeys, keyring
from protection.keyfile import generate_master_key
from protection.models import DataKey
from protection.tests.test_keyring import _forget_kms_key

pytestmark = pytest.mark.django_db


def transcript() -> list[str]:
    return [str(c) for c in Message.objects.order_by("id").values_list("content", flat=True)]


def rotate(*args: str) -> str:
    out = StringIO()
    call_command("rotate_encryption_keys", *args, stdout=out, stderr=StringIO())
    return out.getvalue()


def stored_key_ids() -> set[str]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT content FROM conversations_message WHERE content <> ''")
        values = [row[0] for row in cursor.fetchall()]
    return {aead.key_id_of(base64.urlsafe_b64decode(v[len(datakeys.PREFIX) :])) for v in values}


def test_local_master_key_rotation(turn: Any, local_master: str, settings: Any) -> None:
    turn("Quarterly plan, first draft")
    before = transcript()

    # Step 1: a new master key; the old one kept as a previous key. Nothing stops.
    settings.ENCRYPTION_MASTER_KEY = generate_master_key()
    settings.ENCRYPTION_PREVIOUS_MASTER_KEYS = [local_master]
    assert transcript() == before
    turn("Written after the new key")  # new writes work meanwhile

    # Step 2: re-wrap every data key (the month's transcript key and the chat search's key,
    # conversations.search) and the people's audit keys under the new master key.
    output = rotate()
    assert "2 data keys re-wrapped" in output
    assert "1 people's audit keys re-wrapped, 0 failed" in output
    event = AuditEvent.objects.filter(action=AuditAction.ENCRYPTION_KEYS_ROTATED).get()
    assert event.details["rewrapped"] == 2 and event.details["failed"] == 0
    assert all(key.rotated_at is not None for key in DataKey.objects.all())

    # Step 3: the old key retired; everything reads with the new key alone.
    settings.ENCRYPTION_PREVIOUS_MASTER_KEYS = []
    datakeys.clear_cache()
    assert transcript()[:2] == before and len(transcript()) == 4
    assert Conversation.objects.filter(title="").count() == 0
    # The sender's sealed e-mail in the audit trail still opens (audit/personal.py).
    keyring.clear_cache()
    sent = AuditEvent.objects.filter(action=AuditAction.MESSAGE_SENT).first()
    assert sent is not None and sent.actor_email.startswith(personal.SEALED_PREFIX)
    assert sent.actor is not None
    assert personal.reveal(sent).actor_email == sent.actor.email.lower()

    # Idempotent: nothing left to re-wrap.
    assert "0 data keys re-wrapped, 2 already under it" in rotate()


def test_without_the_rotation_a_retired_master_key_is_unreadable(
    turn: Any, local_master: str, settings: Any
) -> None:
    result = turn("Kept under the old key")
    settings.ENCRYPTION_MASTER_KEY = generate_master_key()  # old key dropped, no rotation
    datakeys.clear_cache()
    message = Message.objects.get(pk=result.user_message.pk)
    assert getattr(message.content, "code", "") == "key_unavailable"
    with pytest.raises(SystemExit):  # the command says it could not re-wrap
        rotate()
    assert AuditEvent.objects.get(action=AuditAction.ENCRYPTION_KEYS_ROTATED).outcome == "failed"


def test_kms_master_key_rotation(turn: Any, kms: Any, settings: Any, local_master: str) -> None:
    old_arn = str(kms.create_key()["KeyMetadata"]["Arn"])
    settings.ENCRYPTION_KMS_KEY_ID = old_arn
    turn("Written under the first KMS key")
    before = transcript()
    assert {k.master_key_id for k in DataKey.objects.all()} == {"kms:" + old_arn}

    new_arn = str(kms.create_key()["KeyMetadata"]["Arn"])
    settings.ENCRYPTION_KMS_KEY_ID = new_arn
    assert transcript() == before  # the old KMS key still opens its data keys
    assert "2 data keys re-wrapped" in rotate()
    assert {k.master_key_id for k in DataKey.objects.all()} == {"kms:" + new_arn}

    _forget_kms_key(old_arn)
    datakeys.clear_cache()
    assert transcript() == before


def test_reencrypt_moves_rows_to_a_fresh_data_key(
    turn: Any, local_master: str, settings: Any
) -> None:
    turn("Before the re-encryption")
    before = transcript()
    (old_key,) = stored_key_ids()

    output = rotate("--reencrypt")
    assert "1 data keys retired" in output
    new_keys = stored_key_ids()
    assert old_key not in new_keys and len(new_keys) == 1
    assert DataKey.objects.get(key_id=old_key).retired_at is not None
    assert DataKey.objects.get(key_id=new_keys.pop()).retired_at is None
    datakeys.clear_cache()
    assert transcript() == before
    steps = list(
        AuditEvent.objects.filter(action=AuditAction.ENCRYPTION_KEYS_ROTATED)
        .order_by("sequence")
        .values_list("details__step", flat=True)
    )
    assert steps[:2] == ["rewrap", "retire"] and "reencrypt" in steps
