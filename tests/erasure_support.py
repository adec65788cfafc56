"""Helpers for erasure tests: a person who left traces everywhere the product keeps them, and
a scan of every table of the database for any trace of them.

The scan is generic: it lists the tables and their columns through Django's introspection
API and reads every value of every row — text, JSON and binary alike — so a table added
later is scanned without changing the test.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django.db import connection
from django.test import Client
from django.urls import reverse

PASSWORD = "correct horse battery staple"


@dataclass
class Traced:
    person: Any
    needles: list[str]
    conversation: Any


def _variants(needle: str) -> list[bytes]:
    """The needle's bytes, and its base64 forms at each alignment (signed cookies, sessions)."""
    raw = needle.lower().encode("utf-8")
    found = [raw]
    for shift in range(3):
        encoded = base64.b64encode(b"\0" * shift + needle.encode("utf-8"))
        # Drop the characters that the padding and the neighbours change.
        found.append(encoded[4 if shift else 0 : -4].lower())
    return [variant for variant in found if len(variant) >= 6]


def _text(value: Any) -> bytes:
    if isinstance(value, memoryview):
        value = bytes(value)
    if isinstance(value, bytes):
        return value.lower()
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False).lower().encode("utf-8")
    if value is None or isinstance(value, int | float | Decimal):
        return b""
    return str(value).lower().encode("utf-8")


def traces(needles: list[str]) -> list[str]:
    """Every "table.column" holding any of `needles` (any letter case, or base64 of it)."""
    variants = {needle: _variants(needle) for needle in needles}
    found: list[str] = []
    quote = connection.ops.quote_name
    with connection.cursor() as cursor:
        for table in sorted(connection.introspection.table_names(cursor)):
            columns = [
                column.name
                for column in connection.introspection.get_table_description(cursor, table)
            ]
            cursor.execute(
                f"SELECT {', '.join(quote(c) for c in columns)} FROM {quote(table)}"  # noqa: S608
            )
            for row in cursor.fetchall():
                for column, value in zip(columns, row, strict=True):
                    text = _text(value)
                    for needle, forms in variants.items():
                        if any(form in text for form in forms):
                            found.append(f"{table}.{column} ({needle})")
    return sorted(set(found))


def person_with_traces(*, administrator: Any, officer: Any) -> Traced:
    """A person who signed in (and failed to), chatted, holds an API key and a budget, was
    locked out, changed in the console and placed on (and released from) legal hold."""
    from django.contrib.admin.models import CHANGE, LogEntry
    from django.contrib.contenttypes.models import ContentType

    from accounts.api_keys import api_key_create
    from accounts.models import User
    from audit.catalogue import AuditAction, AuditOutcome
    from audit.legal_hold import legal_hold_set
    from audit.services import audit_record
    from conversations.models import Conversation, Message
    from costs.models import Budget

    person = User.objects.create_user(
        username="zq-erasure-target",
        email="Zq.Person@Example.org",
        first_name="Zelda",
        last_name="Quimbyfield",
        password=PASSWORD,
    )
    needles = ["zq-erasure-target", "zq.person@example.org", "Zelda", "Quimbyfield"]

    # Signing in and failing to: sessions, axes' records, auth events with the address.
    # A failure typed as the e-mail (axes keeps it as typed; a success under the user name
    # does not reset it), then a success.
    Client(REMOTE_ADDR="203.0.113.9").post(
        reverse("login"), {"username": "Zq.Person@Example.org", "password": "wrong"}, secure=True
    )
    browser = Client(REMOTE_ADDR="203.0.113.9")
    response = browser.post(
        reverse("login"), {"username": "zq-erasure-target", "password": PASSWORD}, secure=True
    )
    assert response.status_code == 302, "the person could not sign in"

    conversation = Conversation.objects.create(
        owner=person, title="Zelda Quimbyfield's appraisal", model="demo"
    )
    Message.objects.create(
        conversation=conversation,
        role=Message.Role.USER,
        content="I am Zelda Quimbyfield, zq.person@example.org: help with my appraisal.",
        status=Message.Status.COMPLETE,
        options={"note": "for Zelda"},
    )
    Message.objects.create(
        conversation=conversation,
        role=Message.Role.ASSISTANT,
        content="Hello Zelda Quimbyfield.",
        status=Message.Status.COMPLETE,
        tool_events=[{"id": "t1", "name": "lookup", "arguments": {"who": "Quimbyfield"}}],
        notice="Answered for zq-erasure-target",
    )
    api_key_create(
        owner=person,
        name="Zelda Quimbyfield laptop",
        scopes=["chat"],
        expires_at=None,
        actor=administrator,
        budget_limit=Decimal("5.00"),
    )
    Budget.objects.create(
        name="Quimbyfield personal",
        scope=Budget.Scope.USER,
        user=person,
        period=Budget.Period.MONTHLY,
        limit_amount=Decimal("10.00"),
    )
    # A console change of the person, as the console records it (admin log and trail).
    LogEntry.objects.log_actions(
        user_id=administrator.pk,
        queryset=[person],
        action_flag=CHANGE,
        change_message=[{"changed": {"fields": ["First name"]}}],
    )
    assert LogEntry.objects.filter(
        content_type=ContentType.objects.get_for_model(User), object_id=str(person.pk)
    ).exists()
    audit_record(
        action=AuditAction.ADMIN_CHANGE,
        actor=administrator,
        target=person,
        details={"object": str(person), "changed_fields": ["first_name"]},
    )
    audit_record(
        action=AuditAction.LOCKOUT,
        actor=None,
        target=person,
        outcome=AuditOutcome.DENIED,
        details={"username": person.username},
    )
    legal_hold_set(actor=officer, obj=person, held=True, reason="Matter 2041")
    legal_hold_set(actor=officer, obj=person, held=False, reason="Matter 2041 closed")
    person.refresh_from_db()
    found = traces(needles)
    assert any(t.startswith("axes_") for t in found), found  # the scan sees what it must
    assert any(t.startswith("accounts_user.username") for t in found), found
    return Traced(person=person, needles=needles, conversation=conversation)
