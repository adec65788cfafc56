"""Versions of the last turn: regenerating the last reply, editing the last message.

Both go through the send's admission path; the earlier version is kept, shown, charged once
and never sent to a model again.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone

from audit.catalogue import AuditAction
from audit.models import AuditEvent
from conftest import set_demo_speed
from conversations import selectors
from conversations.errors import ChatError
from conversations.generation import reply_generate
from conversations.models import Message
from conversations.services import SendResult, message_edit, message_regenerate, message_send
from costs.models import Budget, CostEntry, ModelPrice
from providers.demo import DemoProvider
from providers.models import AIModel

pytestmark = pytest.mark.django_db


@pytest.fixture
def calls(settings: Any, monkeypatch: pytest.MonkeyPatch) -> list[list[tuple[str, str]]]:
    """The demo model made instant and free of dispatch; each provider call's messages."""
    set_demo_speed(settings, first_token_delay_ms=0, tokens_per_second=100_000)
    monkeypatch.setattr("conversations.services.dispatch", lambda *args: None)
    ModelPrice.objects.create(
        model=AIModel.objects.get(key="demo"),
        input_per_million=Decimal("3"),
        output_per_million=Decimal("15"),
        effective_from=timezone.now() - dt.timedelta(days=1),
    )
    seen: list[list[tuple[str, str]]] = []
    original = DemoProvider.stream

    def recording(self: DemoProvider, request: Any) -> Any:
        seen.append([(m.role, m.content) for m in request.messages])
        return original(self, request)

    monkeypatch.setattr(DemoProvider, "stream", recording)
    return seen


def answered(result: SendResult) -> SendResult:
    """Generate the reply as the worker would."""
    reply_generate(reply_id=result.reply.pk)
    result.reply.refresh_from_db()
    return result


def two_turns(owner: Any) -> tuple[SendResult, SendResult]:
    first = answered(message_send(actor=owner, text="First question", model_key="demo"))
    second = answered(
        message_send(
            actor=owner,
            text="Second question",
            model_key="demo",
            conversation_id=first.conversation.public_id,
        )
    )
    return first, second


def test_regenerate_makes_one_new_call_charged_once_and_keeps_the_old_reply(owner, calls) -> None:
    first, second = two_turns(owner)
    old = second.reply
    assert old.status == "complete" and old.cost
    entries_before = list(CostEntry.objects.order_by("id").values_list("message_id", "cost"))
    calls.clear()

    result = answered(
        message_regenerate(
            actor=owner, conversation_id=first.conversation.public_id, reply_id=old.public_id
        )
    )

    assert len(calls) == 1  # exactly one new provider call
    # It answers the same user message, without the earlier version of the reply.
    assert calls[0] == [
        ("user", "First question"),
        ("assistant", first.reply.content),
        ("user", "Second question"),
    ]
    assert result.user_message.pk == second.user_message.pk
    new = result.reply
    assert new.status == "complete" and new.pk != old.pk
    old.refresh_from_db()
    assert old.superseded_by_id == new.pk and old.status == "complete"
    # The ledger: the old entries untouched, one new entry for the new reply's call.
    entries_after = list(CostEntry.objects.order_by("id").values_list("message_id", "cost"))
    assert entries_after[: len(entries_before)] == entries_before
    assert [m for m, _ in entries_after[len(entries_before) :]] == [new.pk]
    assert CostEntry.objects.get(message=new).cost == new.cost
    assert Message.objects.get(pk=old.pk).cost == dict(entries_before)[old.pk]
    event = AuditEvent.objects.filter(action=AuditAction.MESSAGE_REGENERATED).get()
    assert event.details["replaces"] == str(old.public_id)
    assert event.details["reply"] == str(new.public_id)
    assert event.details["message"] == str(second.user_message.public_id)


def test_the_snapshot_shows_the_current_reply_with_its_earlier_version(owner, calls) -> None:
    first = answered(message_send(actor=owner, text="Question", model_key="demo"))
    regenerated = answered(
        message_regenerate(
            actor=owner,
            conversation_id=first.conversation.public_id,
            reply_id=first.reply.public_id,
        )
    )
    snapshot = selectors.conversation_snapshot(user=owner, public_id=first.conversation.public_id)
    frames = snapshot["messages"]
    assert [f["id"] for f in frames] == [
        str(first.user_message.public_id),
        str(regenerated.reply.public_id),
    ]
    current = frames[1]
    assert current["version"] == 2 and len(current["versions"]) == 1
    earlier = current["versions"][0]
    assert earlier["id"] == str(first.reply.public_id) and earlier["version"] == 1
    assert earlier["usage"]["cost"] == str(first.reply.cost)
    assert current["usage"]["cost"] == str(regenerated.reply.cost)
    assert current["text"] == regenerated.reply.content  # raw Markdown, for copying
    assert current["created_at"] == regenerated.reply.created_at.isoformat()


def test_only_the_last_reply_can_be_regenerated(owner, calls) -> None:
    first, second = two_turns(owner)
    with pytest.raises(ChatError) as refused:
        message_regenerate(
            actor=owner,
            conversation_id=first.conversation.public_id,
            reply_id=first.reply.public_id,
        )
    assert refused.value.code == "not_last"
    regenerated = answered(
        message_regenerate(
            actor=owner,
            conversation_id=first.conversation.public_id,
            reply_id=second.reply.public_id,
        )
    )
    # The earlier version is no longer the last reply either.
    with pytest.raises(ChatError) as again:
        message_regenerate(
            actor=owner,
            conversation_id=first.conversation.public_id,
            reply_id=second.reply.public_id,
        )
    assert again.value.code == "not_last"
    assert Message.objects.filter(conversation=first.conversation).count() == 5
    assert regenerated.reply.superseded_by_id is None


def test_regenerate_is_refused_while_a_reply_is_in_flight(owner, calls) -> None:
    first = answered(message_send(actor=owner, text="Question", model_key="demo"))
    pending = message_send(
        actor=owner, text="Next", model_key="demo", conversation_id=first.conversation.public_id
    )
    for message in (first.reply, pending.reply):
        with pytest.raises(ChatError) as refused:
            message_regenerate(
                actor=owner,
                conversation_id=first.conversation.public_id,
                reply_id=message.public_id,
            )
        assert refused.value.code == "busy"
    assert CostEntry.objects.filter(message__conversation=first.conversation).count() == 1


def test_nobody_regenerates_or_edits_another_persons_messages(owner, colleague, calls) -> None:
    first = answered(message_send(actor=owner, text="Mine", model_key="demo"))
    with pytest.raises(ChatError) as regenerate:
        message_regenerate(
            actor=colleague,
            conversation_id=first.conversation.public_id,
            reply_id=first.reply.public_id,
        )
    with pytest.raises(ChatError) as edit:
        message_edit(
            actor=colleague,
            conversation_id=first.conversation.public_id,
            message_id=first.user_message.public_id,
            text="Not yours",
        )
    assert regenerate.value.code == edit.value.code == "not_found"
    assert Message.objects.count() == 2 and len(calls) == 1
    denials = AuditEvent.objects.filter(action=AuditAction.CONVERSATION_ACCESS_DENIED)
    assert sorted(e.details["operation"] for e in denials) == ["edit", "regenerate"]
    assert {e.actor_id for e in denials} == {colleague.pk}


def test_a_budget_refusal_stores_nothing_and_keeps_the_reply(owner, calls) -> None:
    first = answered(message_send(actor=owner, text="Question", model_key="demo"))
    Budget.objects.create(
        name="Pilot", scope="organisation", period="monthly", limit_amount=Decimal("0")
    )
    with pytest.raises(ChatError) as refused:
        message_regenerate(
            actor=owner,
            conversation_id=first.conversation.public_id,
            reply_id=first.reply.public_id,
        )
    assert refused.value.code == "budget_exceeded"
    first.reply.refresh_from_db()
    assert first.reply.superseded_by_id is None
    assert Message.objects.count() == 2 and CostEntry.objects.count() == 1
    assert len(calls) == 1
    assert AuditEvent.objects.filter(action=AuditAction.BUDGET_REFUSED).count() == 1
    assert not AuditEvent.objects.filter(action=AuditAction.MESSAGE_REGENERATED).exists()


def test_regenerate_is_screened_by_the_guardrails_again(owner, calls, monkeypatch) -> None:
    first = answered(message_send(actor=owner, text="Question", model_key="demo"))
    screened: list[str] = []
    from conversations import services

    original = services.message_screen

    def spy(*, actor: Any, text: str) -> Any:
        screened.append(text)
        return original(actor=actor, text=text)

    monkeypatch.setattr(services, "message_screen", spy)
    message_regenerate(
        actor=owner, conversation_id=first.conversation.public_id, reply_id=first.reply.public_id
    )
    assert screened == ["Question"]


def test_edit_replaces_the_last_message_and_its_reply(owner, calls) -> None:
    first, second = two_turns(owner)
    calls.clear()
    result = answered(
        message_edit(
            actor=owner,
            conversation_id=first.conversation.public_id,
            message_id=second.user_message.public_id,
            text="Second question, better put",
        )
    )
    assert calls == [
        [
            ("user", "First question"),
            ("assistant", first.reply.content),
            ("user", "Second question, better put"),
        ]
    ]
    second.user_message.refresh_from_db()
    second.reply.refresh_from_db()
    assert second.user_message.superseded_by_id == result.user_message.pk
    assert second.reply.superseded_by_id == result.reply.pk
    assert second.user_message.content == "Second question"  # kept as it was
    assert CostEntry.objects.filter(message=result.reply).count() == 1
    assert CostEntry.objects.filter(message=second.reply).count() == 1
    event = AuditEvent.objects.filter(action=AuditAction.MESSAGE_EDITED).get()
    assert event.details["replaces"] == str(second.user_message.public_id)
    assert "Second question" not in str(event.details)  # never the text
    frames = selectors.conversation_snapshot(user=owner, public_id=first.conversation.public_id)[
        "messages"
    ]
    assert [f.get("version") for f in frames] == [None, None, 2, 2]
    assert frames[2]["versions"][0]["text"] == "Second question"


def test_only_the_last_message_can_be_edited_and_the_text_is_validated(owner, calls) -> None:
    first, second = two_turns(owner)
    conversation_id = first.conversation.public_id
    with pytest.raises(ChatError) as not_last:
        message_edit(
            actor=owner,
            conversation_id=conversation_id,
            message_id=first.user_message.public_id,
            text="Rewrite history",
        )
    assert not_last.value.code == "not_last"
    with pytest.raises(ChatError) as empty:
        message_edit(
            actor=owner,
            conversation_id=conversation_id,
            message_id=second.user_message.public_id,
            text="   ",
        )
    assert empty.value.code == "invalid"
    with pytest.raises(ChatError) as wrong_role:  # a reply is not a message one can edit
        message_edit(
            actor=owner,
            conversation_id=conversation_id,
            message_id=second.reply.public_id,
            text="Hello",
        )
    assert wrong_role.value.code == "not_found"
    assert Message.objects.filter(superseded_by__isnull=False).count() == 0
    assert Message.objects.count() == 4


def test_the_page_shows_timestamps_versions_and_costs(owner, calls) -> None:
    first = answered(message_send(actor=owner, text="Question", model_key="demo"))
    regenerated = answered(
        message_regenerate(
            actor=owner,
            conversation_id=first.conversation.public_id,
            reply_id=first.reply.public_id,
        )
    )
    client = Client()
    client.force_login(owner)
    page = client.get(f"/c/{first.conversation.public_id}/").content.decode()
    assert f'datetime="{regenerated.reply.created_at.isoformat()}"' in page
    assert "Version 2 of 2" in page
    assert page.count('class="msg-cost"') == 1  # the current reply's; the earlier one's:
    assert page.count('class="version-cost"') == 1
    tokens = (regenerated.reply.input_tokens or 0) + (regenerated.reply.output_tokens or 0)
    assert f"{tokens} tokens · {regenerated.reply.cost} USD" in page


def test_compliance_review_shows_every_version_marked(owner, compliance_officer, calls) -> None:
    first = answered(message_send(actor=owner, text="Question", model_key="demo"))
    answered(
        message_regenerate(
            actor=owner,
            conversation_id=first.conversation.public_id,
            reply_id=first.reply.public_id,
        )
    )
    client = Client()
    client.force_login(compliance_officer)
    html = client.get(
        f"/admin/conversations/conversation/{first.conversation.pk}/change/"
    ).content.decode()
    assert "Transcript (3 messages)" in html
    assert html.count("earlier version: the owner regenerated or edited it") == 1
    assert "Reply regenerated (a new version)" in html


def test_a_failed_reply_that_was_charged_shows_its_cost_live_and_after_a_reload(
    owner, calls, monkeypatch
) -> None:
    from conversations import streams
    from conversations.tests.test_generation import BrokenProvider
    from providers import registry

    monkeypatch.setitem(registry.PROVIDERS, "broken", BrokenProvider)
    model = AIModel.objects.create(
        key="broken",
        display_name="Broken",
        provider="broken",
        provider_model_id="b",
        available_to_everyone=True,
    )
    ModelPrice.objects.create(
        model=model,
        input_per_million=Decimal("3"),
        output_per_million=Decimal("15"),
        effective_from=timezone.now() - dt.timedelta(days=1),
    )
    sent: list[dict[str, Any]] = []
    monkeypatch.setattr(streams, "broadcast", lambda conversation, event: sent.append(event))
    result = answered(message_send(actor=owner, text="Hi", model_key="broken"))
    reply = result.reply
    assert reply.status == "failed" and reply.cost and reply.cost_estimated
    error = next(e for e in sent if e["type"] == "chat.error")
    usage = selectors.reply_usage(reply)
    assert error["usage"] == usage and usage["cost"] == str(reply.cost)
    frame = selectors.conversation_snapshot(user=owner, public_id=result.conversation.public_id)[
        "messages"
    ][1]
    assert frame["usage"] == usage and frame["error"]
    client = Client()
    client.force_login(owner)
    page = client.get(f"/c/{result.conversation.public_id}/").content.decode()
    assert f"· {reply.cost} USD (estimated)</p>" in page


def test_export_marks_earlier_versions_and_search_never_points_at_one(owner, calls) -> None:
    from conversations.export import conversation_export
    from conversations.search import conversation_search

    first = answered(message_send(actor=owner, text="Tell me about walruses", model_key="demo"))
    edited = answered(
        message_edit(
            actor=owner,
            conversation_id=first.conversation.public_id,
            message_id=first.user_message.public_id,
            text="Tell me about narwhals",
        )
    )

    text = conversation_export(actor=owner, public_id=first.conversation.public_id).text
    # Both versions are exported, oldest first; only the earlier ones are marked as replaced.
    assert text.index("walruses") < text.index("narwhals")
    assert text.count("earlier version, replaced") == 2  # the first message and its reply
    narwhals_heading = text[: text.index("Tell me about narwhals")].rsplit("## ", 1)[1]
    assert "earlier version" not in narwhals_heading

    # The earlier message is still found (it is the person's own text), but the hit does not
    # point at it: it is not on the page on its own.
    (hit,) = conversation_search(user=owner, query="walruses")
    assert hit.conversation == str(first.conversation.public_id) and hit.message is None
    assert "walruses" in hit.snippet
    (hit,) = conversation_search(user=owner, query="narwhals")
    # The demo reply quotes the question: either current message may be the best match.
    assert hit.message in {str(edited.user_message.public_id), str(edited.reply.public_id)}
