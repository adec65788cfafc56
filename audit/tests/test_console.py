"""The compliance console: who may open what, the audit list, export, verify, review, holds."""

from __future__ import annotations

import csv
import io
import json
import tracemalloc
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth.models import Group
from django.db import connection
from django.test import AsyncClient, Client
from django.test.utils import CaptureQueriesContext

from accounts.models import User
from audit import chain
from audit.catalogue import AuditAction, AuditOutcome
from audit.models import AuditEvent
from audit.services import EventSpec, audit_record, audit_record_batch, checkpoint_create
from conftest import PASSWORD
from conversations.models import Conversation, Message
from providers.models import AIModel

pytestmark = pytest.mark.django_db

EVENTS = "/admin/audit/auditevent/"


def client_for(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def superuser(db: None) -> Any:
    return User.objects.create_superuser("root", "root@example.com", PASSWORD)


def seed(count: int, actor: Any = None, **fields: Any) -> None:
    audit_record_batch(
        EventSpec(
            action=fields.get("action", AuditAction.MESSAGE_SENT),
            actor=actor,
            ip="198.51.100.7",
            request_id=f"req-{n}",
            target_type="conversation",
            target_id=f"conv-{n % 7}",
            details={"n": n},
        )
        for n in range(count)
    )


# --- Who may open what ------------------------------------------------------------------------


def test_staff_member_cannot_open_the_console(staff_member) -> None:
    response = client_for(staff_member).get("/admin/", follow=True)
    assert response.status_code == 403
    assert "your role does not open the console" in response.content.decode()
    assert client_for(staff_member).get(EVENTS).status_code in {302, 403}
    assert client_for(staff_member).get(EVENTS, follow=True).status_code == 403


def test_anonymous_visitors_are_sent_to_the_product_sign_in() -> None:
    response = Client().get(EVENTS, follow=True)
    assert response.redirect_chain[-1][0].startswith("/accounts/login/")


def test_compliance_officer_reads_and_exports_but_edits_nothing(compliance_officer, owner) -> None:
    seed(3, owner)
    client = client_for(compliance_officer)
    assert client.get("/admin/").status_code == 200
    assert client.get(EVENTS).status_code == 200
    assert client.get(f"{EVENTS}1/change/").status_code == 200
    assert client.get(f"{EVENTS}export/csv/").status_code == 200
    # Cannot change audit, people or models.
    assert client.post(f"{EVENTS}1/change/", {"action": "auth.logout"}).status_code == 403
    assert client.post(f"{EVENTS}1/delete/", {"post": "yes"}).status_code == 403
    assert client.get(f"/admin/accounts/user/{owner.pk}/change/").status_code == 200  # view
    assert (
        client.post(f"/admin/accounts/user/{owner.pk}/change/", {"username": "x"}).status_code
        == 403
    )
    demo = AIModel.objects.get(key="demo")
    assert (
        client.post(f"/admin/providers/aimodel/{demo.pk}/change/", {"key": "x"}).status_code == 403
    )
    assert client.get("/admin/providers/aimodel/add/").status_code == 403
    assert AuditEvent.objects.get(sequence=1).action == AuditAction.MESSAGE_SENT
    owner.refresh_from_db()
    assert owner.username == "alice"


def test_administrator_manages_models_but_cannot_change_audit_or_export(
    administrator, owner
) -> None:
    seed(2, owner)
    client = client_for(administrator)
    assert client.get(EVENTS).status_code == 200
    assert client.post(f"{EVENTS}1/change/", {"action": "auth.logout"}).status_code == 403
    assert client.post(f"{EVENTS}1/delete/", {"post": "yes"}).status_code == 403
    assert client.get(f"{EVENTS}export/csv/").status_code == 403
    assert client.get(f"{EVENTS}verify/").status_code == 403
    # Administrators do not read transcripts.
    conversation = Conversation.objects.create(owner=owner, title="Private", model="demo")
    assert (
        client.get(f"/admin/conversations/conversation/{conversation.pk}/change/").status_code
        == 403
    )
    assert client.get("/admin/providers/aimodel/add/").status_code == 200


def test_superuser_cannot_change_or_delete_an_audit_event(superuser, owner) -> None:
    seed(1, owner)
    client = client_for(superuser)
    assert client.get(f"{EVENTS}1/change/").status_code == 200  # read-only view
    assert client.post(f"{EVENTS}1/change/", {"action": "auth.logout"}).status_code == 403
    assert client.post(f"{EVENTS}1/delete/", {"post": "yes"}).status_code == 403
    assert client.get(f"{EVENTS}add/").status_code == 403
    response = client.post(EVENTS, {"action": "delete_selected", "_selected_action": [1]})
    assert AuditEvent.objects.filter(sequence=1).exists()
    assert response.status_code in {200, 302}


def test_administrator_cannot_grant_the_compliance_role(administrator, owner) -> None:
    client = client_for(administrator)
    compliance = Group.objects.get(name="Compliance officer")
    response = client.post(
        f"/admin/accounts/user/{owner.pk}/change/",
        {
            "username": "alice",
            "email": "alice@example.com",
            "is_active": "on",
            "groups": [compliance.pk],
            "date_joined_0": "2026-01-01",
            "date_joined_1": "00:00:00",
        },
    )
    assert response.status_code == 200
    assert "Only a superuser can grant or remove the Compliance officer role" in (
        response.content.decode()
    )
    assert not owner.groups.filter(pk=compliance.pk).exists()
    # Nor edit a role's permissions, nor delete a role.
    assert client.get(f"/admin/auth/group/{compliance.pk}/delete/").status_code == 403


# --- The audit list ---------------------------------------------------------------------------


def test_audit_list_filters_and_exact_search(compliance_officer, owner, colleague) -> None:
    seed(5, owner)
    audit_record(action=AuditAction.LOGIN, actor=colleague, outcome=AuditOutcome.SUCCESS)
    client = client_for(compliance_officer)

    def shown(query: str) -> set[int]:
        response = client.get(EVENTS + query)
        assert response.status_code == 200
        return {event.sequence for event in response.context["cl"].result_list}

    # Signing the officer in (force_login) is itself an auth.login event.
    logins = set(AuditEvent.objects.filter(action="auth.login").values_list("pk", flat=True))
    assert 6 in logins and not logins & {1, 2, 3, 4, 5}
    assert shown("?action=auth.login") == logins
    assert shown(f"?actor={owner.pk}") == {1, 2, 3, 4, 5}
    assert shown("?q=BOB@example.com") == {6}
    # Signed-in people's addresses are sealed (AUDIT_SEAL_IP): not searchable in SQL.
    assert shown("?q=198.51.100.7") == set()
    assert shown("?q=req-3") == {4}
    assert shown("?q=conv-2") == {3}
    assert shown("?outcome=denied") == set()


def test_event_detail_links_to_actor_and_target(compliance_officer, owner) -> None:
    conversation = Conversation.objects.create(owner=owner, title="Linked", model="demo")
    event = audit_record(action=AuditAction.MESSAGE_SENT, actor=owner, target=conversation)
    page = client_for(compliance_officer).get(f"{EVENTS}{event.sequence}/change/")
    html = page.content.decode()
    assert f"/admin/accounts/user/{owner.pk}/change/" in html
    assert f"/admin/conversations/conversation/{conversation.pk}/change/" in html
    assert f"?actor={owner.pk}" in html


def test_audit_list_runs_a_bounded_number_of_queries(compliance_officer, owner, settings) -> None:
    client = client_for(compliance_officer)
    client.get(EVENTS)  # warm caches (content types, session)
    seed(20, owner)
    with CaptureQueriesContext(connection) as small:
        assert client.get(EVENTS).status_code == 200
    seed(2000, owner)
    with CaptureQueriesContext(connection) as large:
        assert client.get(EVENTS).status_code == 200
    assert len(large) == len(small)
    # No full-table count: every COUNT is over a LIMITed subquery.
    counts = [q["sql"] for q in large.captured_queries if "COUNT(" in q["sql"].upper()]
    assert counts and all("LIMIT" in sql.upper() for sql in counts)


def test_audit_list_caps_its_count(compliance_officer, owner, settings) -> None:
    settings.AUDIT_LIST_COUNT_LIMIT = 100
    seed(150, owner)
    html = client_for(compliance_officer).get(EVENTS).content.decode()
    assert "More than 100 events" in html


# --- Export -----------------------------------------------------------------------------------


def body(response: Any) -> bytes:
    return b"".join(response.streaming_content)


def test_export_follows_the_current_filter_and_is_audited(compliance_officer, owner) -> None:
    seed(4, owner)
    audit_record(action=AuditAction.LOGIN, actor=owner)
    client = client_for(compliance_officer)
    response = client.get(f"{EVENTS}export/jsonl/?action=message.sent")
    assert response["Content-Disposition"].startswith('attachment; filename="audit-')
    rows = [json.loads(line) for line in body(response).decode().splitlines()]
    assert [row["sequence"] for row in rows] == [1, 2, 3, 4]
    # Every hashed field is there: an export can be checked against the chain.
    for row in rows:
        event = AuditEvent.objects.get(sequence=row["sequence"])
        assert row["hash"] == event.hash
        fields = {name: row[name] for name in chain.HASHED_FIELDS}
        fields["occurred_at"] = event.occurred_at
        assert chain.event_hash(fields) == row["hash"]
    exported = AuditEvent.objects.get(action=AuditAction.AUDIT_EXPORTED)
    assert exported.actor == compliance_officer
    assert exported.details == {"format": "jsonl", "filters": {"action": "message.sent"}}


def test_csv_export_neutralises_spreadsheet_formulas(compliance_officer) -> None:
    audit_record(
        action=AuditAction.LOGIN_FAILED,
        actor=None,
        outcome=AuditOutcome.FAILED,
        details={"username": '=HYPERLINK("http://evil")'},
        target=("user", "=cmd|' /C calc'!A0"),
    )
    response = client_for(compliance_officer).get(f"{EVENTS}export/csv/")
    rows = list(csv.DictReader(io.StringIO(body(response).decode())))
    assert rows[0]["target_id"] == "'=cmd|' /C calc'!A0"
    assert rows[0]["details"].startswith("{")  # JSON, not a formula


def test_export_of_100000_events_streams_in_bounded_memory(compliance_officer) -> None:
    seed(100_000)
    client = client_for(compliance_officer)
    response: Any = client.get(f"{EVENTS}export/csv/")
    assert response.streaming
    tracemalloc.start()
    try:
        chunks = rows = 0
        biggest = 0
        for chunk in response.streaming_content:
            chunks += 1
            rows += chunk.count(b"\n")
            biggest = max(biggest, len(chunk))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # A header, then every event (including the sign-in and the export's own record).
    assert rows == 1 + AuditEvent.objects.count() >= 100_001
    assert chunks >= 50  # generated page by page
    assert biggest < 2_000_000
    # The whole CSV is tens of MB; holding it, or every row object, would show here.
    assert peak < 16 * 1024 * 1024, f"peak {peak / 1e6:.1f} MB"


@pytest.mark.django_db(transaction=True)
async def test_export_streams_asynchronously_under_asgi(compliance_officer, owner) -> None:
    await sync_to_async(seed)(5000, owner)
    client = AsyncClient()
    await client.aforce_login(compliance_officer)
    response: Any = await client.get(f"{EVENTS}export/jsonl/?action=message.sent")
    # An async body: Django would otherwise read a sync one whole into memory under ASGI.
    assert response.is_async
    parts = [part async for part in response.streaming_content]
    assert len(parts) >= 3
    assert sum(part.count(b"\n") for part in parts) == 5000


def test_export_requires_the_export_permission(staff_member, administrator) -> None:
    assert client_for(administrator).get(f"{EVENTS}export/csv/").status_code == 403
    assert not AuditEvent.objects.filter(action=AuditAction.AUDIT_EXPORTED).exists()


# --- Verify page ------------------------------------------------------------------------------


def test_verify_page_runs_the_verification_and_records_it(compliance_officer, owner) -> None:
    seed(10, owner)
    checkpoint_create()
    client = client_for(compliance_officer)
    page = client.post(f"{EVENTS}verify/")
    assert "OK: the chain verifies (" in page.content.decode()
    with connection.cursor() as cursor:
        cursor.execute("UPDATE audit_auditevent SET details = '{}' WHERE sequence = 4")
    page = client.post(f"{EVENTS}verify/")
    assert "First broken sequence number: <strong>#4</strong>" in page.content.decode()
    verified = AuditEvent.objects.filter(action=AuditAction.CHAIN_VERIFIED).order_by("sequence")
    assert [e.outcome for e in verified] == ["success", "failed"]
    assert verified[0].actor == compliance_officer


# --- Conversation review and legal hold -------------------------------------------------------


def test_review_page_shows_transcript_and_events_and_is_audited(compliance_officer, owner) -> None:
    conversation = Conversation.objects.create(owner=owner, title="Quarterly plan", model="demo")
    Message.objects.create(
        conversation=conversation, role="user", content="<b>raw</b> question", status="complete"
    )
    audit_record(action=AuditAction.MESSAGE_SENT, actor=owner, target=conversation)
    page = client_for(compliance_officer).get(
        f"/admin/conversations/conversation/{conversation.pk}/change/"
    )
    html = page.content.decode()
    assert page.status_code == 200
    assert "&lt;b&gt;raw&lt;/b&gt; question" in html  # shown as text, never as HTML
    assert "Message sent" in html and "Conversation reviewed in the console" in html
    viewed = AuditEvent.objects.get(action=AuditAction.CONVERSATION_VIEWED)
    assert viewed.actor == compliance_officer
    assert viewed.target_id == str(conversation.public_id)
    assert viewed.details["messages"] == 1


def test_message_page_leads_to_the_audited_review(compliance_officer, owner) -> None:
    conversation = Conversation.objects.create(owner=owner, title="Q", model="demo")
    message = Message.objects.create(conversation=conversation, role="user", status="complete")
    response = client_for(compliance_officer).get(
        f"/admin/conversations/message/{message.pk}/change/", follow=True
    )
    assert response.status_code == 200
    assert AuditEvent.objects.filter(action=AuditAction.CONVERSATION_VIEWED).count() == 1


def hold(client: Client, url: str, action: str, pk: int, reason: str = "Matter 2026-114") -> Any:
    return client.post(
        url, {"action": action, "_selected_action": [pk], "apply": "yes", "reason": reason}
    )


def test_compliance_officer_places_and_releases_legal_holds(compliance_officer, owner) -> None:
    conversation = Conversation.objects.create(owner=owner, title="Q", model="demo")
    client = client_for(compliance_officer)
    # The action asks for a reason first.
    ask = client.post(
        "/admin/conversations/conversation/",
        {"action": "legal_hold_place", "_selected_action": [conversation.pk]},
    )
    assert "The case or matter this hold is for" in ask.content.decode()
    conversation.refresh_from_db()
    assert not conversation.legal_hold

    hold(client, "/admin/conversations/conversation/", "legal_hold_place", conversation.pk)
    hold(client, "/admin/accounts/user/", "legal_hold_place", owner.pk)
    conversation.refresh_from_db()
    owner.refresh_from_db()
    assert conversation.legal_hold and conversation.legal_hold_since
    assert owner.legal_hold
    placed = list(AuditEvent.objects.filter(action=AuditAction.LEGAL_HOLD_SET))
    assert {(e.target_type, e.actor_id) for e in placed} == {
        ("conversation", compliance_officer.pk),
        ("user", compliance_officer.pk),
    }
    assert placed[0].details == {"reason": "Matter 2026-114"}

    hold(client, "/admin/conversations/conversation/", "legal_hold_release", conversation.pk)
    conversation.refresh_from_db()
    assert not conversation.legal_hold
    assert AuditEvent.objects.filter(action=AuditAction.LEGAL_HOLD_RELEASED).count() == 1


def test_only_compliance_officers_manage_legal_holds(administrator, owner) -> None:
    client = client_for(administrator)
    hold(client, "/admin/accounts/user/", "legal_hold_place", owner.pk)
    owner.refresh_from_db()
    assert not owner.legal_hold
    assert not AuditEvent.objects.filter(action=AuditAction.LEGAL_HOLD_SET).exists()
    # Nor through the user form.
    assert (
        "legal_hold"
        not in client.get(f"/admin/accounts/user/{owner.pk}/change/")
        .context["adminform"]
        .form.fields
    )


def test_date_drill_down_needs_no_distinct_scan(compliance_officer, monkeypatch) -> None:
    from datetime import UTC, datetime

    from audit import services
    from audit.templatetags.audit_console import audit_date_hierarchy

    moments = [
        datetime(2025, 3, 10, tzinfo=UTC),
        datetime(2026, 1, 5, tzinfo=UTC),
        datetime(2026, 2, 20, 12, tzinfo=UTC),
    ]
    for moment in moments:
        monkeypatch.setattr(services.timezone, "now", lambda moment=moment: moment)
        audit_record(action=AuditAction.LOGOUT, actor=None)
    monkeypatch.undo()
    client = client_for(compliance_officer)

    def choices(query: str) -> list[str]:
        with CaptureQueriesContext(connection) as queries:
            response = client.get(EVENTS + "?action=auth.logout" + query)
        assert response.status_code == 200
        assert not [q for q in queries.captured_queries if "DISTINCT" in q["sql"].upper()]
        hierarchy = audit_date_hierarchy(response.context["cl"])
        return [str(choice["title"]) for choice in hierarchy["choices"]]

    assert choices("") == ["2025", "2026"]
    assert choices("&occurred_at__year=2026") == ["January 2026", "February 2026"]
    assert choices("&occurred_at__year=2026&occurred_at__month=2") == ["February 20"]


def test_the_legal_hold_service_checks_the_permission_itself(administrator, owner) -> None:
    from django.core.exceptions import PermissionDenied

    from audit.legal_hold import legal_hold_set

    with pytest.raises(PermissionDenied):
        legal_hold_set(actor=administrator, obj=owner, held=True, reason="Matter 7")
    owner.refresh_from_db()
    assert not owner.legal_hold
