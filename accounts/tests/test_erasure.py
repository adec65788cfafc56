"""Erasure on a privacy request (accounts/erasure.py): the person's data goes, the audit chain
still verifies, legal holds are respected, the console action is guarded and audited."""

from __future__ import annotations

from io import StringIO
from typing import Any

import pytest
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.auth import authenticate
from django.core.exceptions import PermissionDenied
from django.core.management import CommandError, call_command
from django.test import Client, RequestFactory

from accounts.erasure import ErasureRefused, person_erase
from accounts.models import ApiKey, User, UserSession
from audit import personal
from audit.catalogue import AuditAction, AuditOutcome
from audit.legal_hold import legal_hold_set
from audit.models import AuditEvent, SubjectKey
from audit.services import audit_record, checkpoint_create
from audit.verify import verify_chain
from conversations.models import Conversation, Message
from tests.erasure_support import PASSWORD, person_with_traces, traces

pytestmark = pytest.mark.django_db

USERS = "/admin/accounts/user/"
EVENTS = "/admin/audit/auditevent/"


@pytest.fixture(autouse=True)
def _fresh_key_cache() -> None:
    personal.forget()


def client_for(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_erasure_leaves_no_trace_in_any_table_and_a_verifying_chain(
    administrator, compliance_officer
) -> None:
    traced = person_with_traces(administrator=administrator, officer=compliance_officer)
    person = traced.person
    checkpoint_create()
    events_before = AuditEvent.objects.count()

    result = person_erase(actor=compliance_officer, person=person, reason="DSR-2026-117")

    assert not result.already
    assert result.counts["conversations"] == 1 and result.counts["messages"] == 2
    assert result.counts["api_keys_revoked"] == 1 and result.counts["sessions"] >= 1
    assert result.counts["sign_in_records"] >= 1 and result.counts["audit_key_destroyed"] == 1
    assert traces(traced.needles) == []
    # Nothing in the trail was changed or removed: one event more, and the chain verifies.
    checkpoint_create()
    report = verify_chain()
    assert report.ok, report.problem
    assert AuditEvent.objects.count() == events_before + 1
    erased = AuditEvent.objects.get(action=AuditAction.PERSON_ERASED)
    assert erased.actor == compliance_officer and erased.target_id == str(person.public_id)
    assert erased.details["reason"] == "DSR-2026-117"
    assert erased.details["messages"] == 2


def test_what_remains_is_a_deactivated_placeholder_with_empty_content(
    administrator, compliance_officer
) -> None:
    traced = person_with_traces(administrator=administrator, officer=compliance_officer)
    person = traced.person
    person_erase(actor=compliance_officer, person=person, reason="DSR-1")

    person.refresh_from_db()
    assert person.username == f"erased-{person.pk}" and person.email == ""
    assert (person.first_name, person.last_name) == ("", "")
    assert not person.is_active and not person.has_usable_password()
    assert person.erased_at is not None
    assert not UserSession.objects.filter(user_id=person.pk).exists()
    conversation = Conversation.objects.get(pk=traced.conversation.pk)
    assert conversation.title == "" and conversation.deleted_at is not None
    for message in Message.objects.filter(conversation=conversation):
        assert (message.content, message.tool_events, message.options) == ("", [], {})
        assert message.notice == ""
    key = ApiKey.objects.get(owner=person)
    assert key.revoked_at is not None and key.name == f"erased-{person.pk}"
    assert SubjectKey.objects.get(user=person).wrapped_key is None
    # The erased person cannot sign in, under the old name or the new one.
    for name in ("zq-erasure-target", f"erased-{person.pk}"):
        request = RequestFactory().post("/accounts/login/")
        assert authenticate(request, username=name, password=PASSWORD) is None


def test_erased_fields_show_as_erased_and_other_peoples_stay_readable(
    owner, colleague, compliance_officer
) -> None:
    audit_record(action=AuditAction.LOGIN, actor=owner, target=owner)
    theirs = audit_record(action=AuditAction.LOGIN, actor=colleague, target=colleague)
    person_erase(actor=compliance_officer, person=owner, reason="DSR-2")

    mine = AuditEvent.objects.filter(actor=owner, action=AuditAction.LOGIN).get()
    shown = personal.reveal(mine)
    assert shown.actor_email == personal.ERASED and shown.ip is None and shown.erased
    assert personal.reveal(AuditEvent.objects.get(pk=theirs.pk)).actor_email == ("bob@example.com")

    client = client_for(compliance_officer)
    html = client.get(EVENTS).content.decode()
    assert personal.ERASED in html and "bob@example.com" in html
    assert "alice@example.com" not in html
    detail = client.get(f"{EVENTS}{mine.sequence}/change/").content.decode()
    assert personal.ERASED in detail and "alice@example.com" not in detail
    # Searching by a living person's e-mail still finds their events; the erased one's, none.
    found = client.get(EVENTS, {"q": "BOB@example.com"}).context["cl"].result_list
    assert {event.sequence for event in found} == {theirs.sequence}
    assert list(client.get(EVENTS, {"q": "alice@example.com"}).context["cl"].result_list) == []


def test_refused_while_the_person_is_under_legal_hold(owner, compliance_officer) -> None:
    legal_hold_set(actor=compliance_officer, obj=owner, held=True, reason="Matter 7")
    with pytest.raises(ErasureRefused) as refused:
        person_erase(actor=compliance_officer, person=owner, reason="DSR-3")

    assert refused.value.code == "legal_hold_person"
    owner.refresh_from_db()
    assert owner.username == "alice" and owner.is_active and owner.erased_at is None
    event = AuditEvent.objects.get(action=AuditAction.PERSON_ERASE_REFUSED)
    assert event.outcome == AuditOutcome.DENIED and event.details == {"code": "legal_hold_person"}
    assert not AuditEvent.objects.filter(action=AuditAction.PERSON_ERASED).exists()


def test_refused_while_one_of_their_conversations_is_under_legal_hold(
    owner, compliance_officer
) -> None:
    held = Conversation.objects.create(owner=owner, title="Held", model="demo")
    Message.objects.create(conversation=held, role="user", content="keep me", status="complete")
    legal_hold_set(actor=compliance_officer, obj=held, held=True, reason="Matter 8")

    with pytest.raises(ErasureRefused) as refused:
        person_erase(actor=compliance_officer, person=owner, reason="DSR-4")

    assert refused.value.code == "legal_hold_conversation"
    assert Message.objects.get(conversation=held).content == "keep me"
    owner.refresh_from_db()
    assert owner.email == "alice@example.com"


def test_a_second_erasure_is_a_no_op_that_says_so(owner, compliance_officer) -> None:
    first = person_erase(actor=compliance_officer, person=owner, reason="DSR-5")
    events = AuditEvent.objects.count()

    again = person_erase(actor=compliance_officer, person=owner, reason="DSR-5")

    assert again.already and not first.already
    assert "already erased" in again.message
    assert AuditEvent.objects.count() == events


def test_the_reason_must_not_name_the_person(owner, compliance_officer) -> None:
    with pytest.raises(ErasureRefused) as refused:
        person_erase(actor=compliance_officer, person=owner, reason="Request from alice")
    assert refused.value.code == "reason_names_person"
    with pytest.raises(ErasureRefused) as empty:
        person_erase(actor=compliance_officer, person=owner, reason="  ")
    assert empty.value.code == "reason_required"
    owner.refresh_from_db()
    assert owner.erased_at is None


def test_only_holders_of_the_permission_may_erase(owner, administrator) -> None:
    with pytest.raises(PermissionDenied):
        person_erase(actor=administrator, person=owner, reason="DSR-6")
    owner.refresh_from_db()
    assert owner.erased_at is None


def test_console_action_is_offered_only_with_the_permission(owner, administrator) -> None:
    page = client_for(administrator).get(USERS).content.decode()
    assert "erase_people" not in page
    response = client_for(administrator).post(
        USERS, {"action": "erase_people", ACTION_CHECKBOX_NAME: [owner.pk]}
    )
    owner.refresh_from_db()
    assert owner.erased_at is None
    assert response.status_code in {200, 302}


def test_console_action_asks_for_a_reason_and_confirmation_then_erases_and_audits(
    owner, compliance_officer
) -> None:
    client = client_for(compliance_officer)
    assert "erase_people" in client.get(USERS).content.decode()
    data = {"action": "erase_people", ACTION_CHECKBOX_NAME: [owner.pk]}

    confirm = client.post(USERS, data)
    assert confirm.status_code == 200 and "cannot be undone" in confirm.content.decode()
    unconfirmed = client.post(USERS, {**data, "apply": "yes", "reason": "DSR-7"})
    assert unconfirmed.status_code == 200  # the confirmation box is required
    owner.refresh_from_db()
    assert owner.erased_at is None

    done = client.post(USERS, {**data, "apply": "yes", "reason": "DSR-7", "confirm": "on"})
    assert done.status_code == 302
    owner.refresh_from_db()
    assert owner.erased_at is not None and owner.username == f"erased-{owner.pk}"
    event = AuditEvent.objects.get(action=AuditAction.PERSON_ERASED)
    assert event.actor == compliance_officer and event.details["reason"] == "DSR-7"


def test_console_action_shows_a_legal_hold_refusal_with_its_code(owner, compliance_officer) -> None:
    legal_hold_set(actor=compliance_officer, obj=owner, held=True, reason="Matter 9")
    client = client_for(compliance_officer)
    data = {"action": "erase_people", ACTION_CHECKBOX_NAME: [owner.pk], "apply": "yes"}
    response = client.post(USERS, {**data, "reason": "DSR-8", "confirm": "on"}, follow=True)
    assert "legal_hold_person" in response.content.decode()
    owner.refresh_from_db()
    assert owner.erased_at is None


def test_command_erases_and_refuses_under_legal_hold(owner, colleague, compliance_officer) -> None:
    legal_hold_set(actor=compliance_officer, obj=colleague, held=True, reason="Matter 10")
    with pytest.raises(CommandError, match="legal_hold_person"):
        call_command("erase_person", "bob@example.com", reason="DSR-9")

    out = StringIO()
    call_command("erase_person", "alice", reason="DSR-10", stdout=out)
    assert f"erased-{owner.pk}" in out.getvalue()
    event = AuditEvent.objects.get(action=AuditAction.PERSON_ERASED)
    assert event.actor is None and event.details["via"] == "command"

    again = StringIO()
    call_command("erase_person", str(owner.public_id), reason="DSR-10", stdout=again)
    assert "already erased" in again.getvalue()
    with pytest.raises(CommandError, match="not_found"):
        call_command("erase_person", "alice", reason="DSR-10")
    assert User.objects.filter(pk=colleague.pk, erased_at__isnull=True).exists()
