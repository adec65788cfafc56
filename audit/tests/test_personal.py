"""Personal fields of audit events sealed under a key per person (audit/personal.py)."""

from __future__ import annotations

import base64
import io
import json
from typing import Any

import pytest
from django.core.management import call_command
from django.db import connection
from django.test import Client

from audit import chain, personal
from audit.catalogue import AuditAction, AuditOutcome
from audit.models import AuditEvent, SubjectKey
from audit.services import audit_record, checkpoint_create
from audit.testing import raw_sql
from audit.verify import verify_chain
from protection import keyring

pytestmark = pytest.mark.django_db

EVENTS = "/admin/audit/auditevent/"


@pytest.fixture(autouse=True)
def _fresh_key_cache() -> None:
    personal.forget()


def with_address(ip: str) -> Any:
    from audit import context as audit_context

    return audit_context.AuditContext(ip=ip, user_agent="Firefox/999")


def raw_row(sequence: int) -> str:
    with connection.cursor() as cursor:
        cursor.execute("SELECT * FROM audit_auditevent WHERE sequence = %s", [sequence])
        return repr(cursor.fetchone())


def test_the_actors_email_and_address_are_stored_sealed_and_revealed_to_readers(owner) -> None:
    event = audit_record(
        action=AuditAction.LOGIN, actor=owner, target=owner, context=with_address("192.0.2.5")
    )
    stored = AuditEvent.objects.get(pk=event.pk)
    assert stored.actor_email.startswith(personal.SEALED_PREFIX) and stored.ip is None
    row = raw_row(event.sequence)
    assert "alice@example.com" not in row and "192.0.2.5" not in row
    shown = personal.reveal(stored)
    assert (shown.actor_email, shown.ip, shown.withheld) == ("alice@example.com", "192.0.2.5", {})
    # The hash covers the ciphertext: recomputed from the stored row, it matches.
    fields = AuditEvent.objects.values(*chain.HASHED_FIELDS).get(pk=event.pk)
    assert chain.event_hash(fields) == stored.hash
    assert verify_chain().ok


def test_details_naming_a_person_are_sealed_under_that_persons_key(owner, administrator) -> None:
    event = audit_record(
        action=AuditAction.ADMIN_CHANGE,
        actor=administrator,
        target=owner,
        details={"object": "alice", "changed_fields": ["email"]},
    )
    stored = AuditEvent.objects.get(pk=event.pk)
    assert set(stored.details) == {"changed_fields", "_sealed"}
    assert list(stored.details["_sealed"]) == [str(owner.pk)]
    assert personal.reveal(stored).details == {"object": "alice", "changed_fields": ["email"]}
    # Destroying the target's key hides their name, not the administrator's own fields.
    personal.key_destroy(user_id=owner.pk)
    shown = personal.reveal(AuditEvent.objects.get(pk=event.pk))
    assert shown.details == {"changed_fields": ["email"], "personal_data": personal.ERASED}
    assert shown.actor_email == "erin@example.com"


def test_a_sealed_blob_copied_to_another_event_does_not_open(owner) -> None:
    first = audit_record(action=AuditAction.LOGIN, actor=owner, target=owner)
    second = audit_record(action=AuditAction.LOGOUT, actor=owner, target=owner)
    raw_sql(
        "UPDATE audit_auditevent SET actor_email = %s WHERE sequence = %s",
        [first.actor_email, second.sequence],
    )
    shown = personal.reveal(AuditEvent.objects.get(pk=second.pk))
    assert shown.actor_email == personal.UNAVAILABLE
    assert shown.withheld == {owner.pk: "unavailable"}


def test_the_persons_key_is_stored_wrapped_and_never_in_clear(owner) -> None:
    audit_record(action=AuditAction.LOGIN, actor=owner, target=owner)
    row = SubjectKey.objects.get(user=owner)
    assert row.wrapped_key is not None
    wrapped = bytes(row.wrapped_key)
    key = keyring.unwrap(
        keyring.WrappedKey(master_key_id=row.master_key_id, blob=wrapped),
        purpose=personal.KEY_PURPOSE,
    )
    assert len(key) == 32 and key not in wrapped
    assert base64.b64encode(key) not in wrapped


def test_anonymous_events_keep_their_address_in_clear(owner) -> None:
    event = audit_record(
        action=AuditAction.LOGIN_FAILED,
        actor=None,
        target=owner,
        outcome=AuditOutcome.FAILED,
        details={"username": "alice", "known_user": True},
        context=with_address("198.51.100.20"),
    )
    stored = AuditEvent.objects.get(pk=event.pk)
    assert stored.ip == "198.51.100.20" and stored.actor_email == ""
    assert "username" not in stored.details


def test_addresses_stay_searchable_when_sealing_them_is_switched_off(
    owner, compliance_officer, settings
) -> None:
    settings.AUDIT_SEAL_IP = False
    event = audit_record(action=AuditAction.LOGIN, actor=owner, context=with_address("192.0.2.77"))
    stored = AuditEvent.objects.get(pk=event.pk)
    assert stored.ip == "192.0.2.77" and stored.actor_email.startswith(personal.SEALED_PREFIX)
    assert personal.reveal(stored).actor_email == "alice@example.com"
    client = Client()
    client.force_login(compliance_officer)
    found = client.get(EVENTS, {"q": "192.0.2.77"}).context["cl"].result_list
    assert [e.sequence for e in found] == [event.sequence]


def test_an_anonymous_address_is_searchable_with_sealing_on(owner, compliance_officer) -> None:
    event = audit_record(
        action=AuditAction.LOGIN_RATE_LIMITED,
        actor=None,
        outcome=AuditOutcome.DENIED,
        context=with_address("198.51.100.99"),
    )
    assert event is not None
    client = Client()
    client.force_login(compliance_officer)
    found = client.get(EVENTS, {"q": "198.51.100.99"}).context["cl"].result_list
    assert [e.sequence for e in found] == [event.sequence]


def test_export_keeps_the_stored_fields_and_adds_them_revealed_or_erased(
    owner, colleague, compliance_officer
) -> None:
    mine = audit_record(action=AuditAction.LOGIN, actor=owner, context=with_address("192.0.2.1"))
    theirs = audit_record(action=AuditAction.LOGIN, actor=colleague)
    personal.key_destroy(user_id=owner.pk)
    checkpoint_create()
    client = Client()
    client.force_login(compliance_officer)
    response: Any = client.get(f"{EVENTS}export/jsonl/?action=auth.login")
    body = b"".join(response.streaming_content).decode()
    rows = {row["sequence"]: row for row in map(json.loads, io.StringIO(body))}
    assert rows[mine.sequence]["revealed"]["actor_email"] == personal.ERASED
    assert rows[theirs.sequence]["revealed"]["actor_email"] == "bob@example.com"
    assert "alice@example.com" not in body and "192.0.2.1" not in body
    for row in rows.values():  # still checkable against the chain
        fields = {name: row[name] for name in chain.HASHED_FIELDS}
        fields["occurred_at"] = AuditEvent.objects.get(pk=row["sequence"]).occurred_at
        assert chain.event_hash(fields) == row["hash"]
    assert verify_chain().ok


def test_after_erasure_new_events_about_the_person_are_not_sealed_again(owner) -> None:
    personal.key_destroy(user_id=owner.pk)
    event = audit_record(action=AuditAction.LOGIN, actor=owner, target=owner)
    # No new key is made for an erased person (their account holds placeholders by then).
    assert SubjectKey.objects.filter(user=owner).count() == 1
    assert not AuditEvent.objects.get(pk=event.pk).actor_email.startswith(personal.SEALED_PREFIX)


def test_the_audit_list_reads_keys_with_the_rows(compliance_officer, owner, colleague) -> None:
    from django.test.utils import CaptureQueriesContext

    client = Client()
    client.force_login(compliance_officer)
    client.get(EVENTS)
    for _ in range(5):
        audit_record(action=AuditAction.LOGIN, actor=owner)
    with CaptureQueriesContext(connection) as few:
        client.get(EVENTS)
    for _ in range(30):
        audit_record(action=AuditAction.LOGIN, actor=colleague)
        audit_record(action=AuditAction.LOGIN, actor=owner)
    with CaptureQueriesContext(connection) as many:
        html = client.get(EVENTS).content.decode()
    assert len(many) == len(few)
    assert "alice@example.com" in html and "bob@example.com" in html


def test_after_a_master_key_rotation_rewrapped_keys_still_open_old_events(
    owner, colleague, settings
) -> None:
    from protection.keyfile import generate_master_key

    old_master, new_master = generate_master_key(), generate_master_key()
    settings.ENCRYPTION_KMS_KEY_ID = ""
    settings.ENCRYPTION_MASTER_KEY_LOCAL_FILE = ""
    settings.ENCRYPTION_MASTER_KEY = old_master
    settings.ENCRYPTION_PREVIOUS_MASTER_KEYS = []
    keyring.clear_cache()
    event = audit_record(action=AuditAction.LOGIN, actor=owner)
    audit_record(action=AuditAction.LOGIN, actor=colleague)
    personal.key_destroy(user_id=colleague.pk)

    settings.ENCRYPTION_MASTER_KEY = new_master
    settings.ENCRYPTION_PREVIOUS_MASTER_KEYS = [old_master]
    keyring.clear_cache()
    personal.forget()
    out = io.StringIO()
    call_command("rewrap_audit_keys", stdout=out)
    assert "1 audit keys re-wrapped" in out.getvalue()  # the erased person's has no key

    settings.ENCRYPTION_PREVIOUS_MASTER_KEYS = []  # the old master key retired
    keyring.clear_cache()
    assert personal.reveal(AuditEvent.objects.get(pk=event.pk)).actor_email == ("alice@example.com")
    again = io.StringIO()
    call_command("rewrap_audit_keys", stdout=again)
    assert "0 audit keys re-wrapped" in again.getvalue()


def test_the_review_page_shows_sealed_fields_opened_or_erased(
    owner, colleague, compliance_officer
) -> None:
    from conversations.models import Conversation

    conversation = Conversation.objects.create(owner=owner, title="Plan", model="demo")
    audit_record(
        action=AuditAction.MESSAGE_SENT,
        actor=owner,
        target=conversation,
        context=with_address("192.0.2.61"),
    )
    audit_record(
        action=AuditAction.CONVERSATION_ACCESS_DENIED, actor=colleague, target=conversation
    )
    client = Client()
    client.force_login(compliance_officer)
    url = f"/admin/conversations/conversation/{conversation.pk}/change/"
    html = client.get(url).content.decode()
    assert "alice@example.com · 192.0.2.61" in html and "bob@example.com" in html
    assert personal.SEALED_PREFIX not in html

    personal.key_destroy(user_id=owner.pk)
    html = client.get(url).content.decode()
    assert personal.ERASED in html and "192.0.2.61" not in html and "bob@example.com" in html
