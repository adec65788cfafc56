"""Queryset-level writes on governed models — people and roles, memberships, the guardrail
policy, the model catalogue, prices, budgets and messages — are audited in the same
transaction (audit.governed); the product's own services that audit themselves are exempt,
so a chat reply adds no event."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from itertools import count
from typing import Any

import pytest
from django.contrib.auth.models import Group, Permission
from django.db import transaction
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from accounts.models import User
from audit import context as audit_context
from audit.catalogue import AuditAction
from audit.governed import BULK_IDS_MAX, GOVERNED_MODELS, governed_writes, is_governed
from audit.models import AuditEvent
from conversations.models import Conversation, Message
from costs.models import Budget, ModelPrice
from guardrails.models import GuardrailPolicy
from providers.models import AIModel

OPERATIONS = ("update", "bulk_update", "update_or_create", "delete", "bulk_create")
_n = count(1)


def bulk_events() -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(action=AuditAction.BULK_WRITE).order_by("sequence"))


@dataclass
class Case:
    """How to try each operation on one governed model."""

    model: Any
    make: Callable[[], Any]  # an unsaved, valid row
    change: Callable[[], dict[str, Any]]  # fields an update() sets
    lookup: Callable[[Any], dict[str, Any]]  # update_or_create's lookup for an existing row
    # The change is unique (a name, a membership): update one row with it, not two.
    one_row: bool = False

    @property
    def label(self) -> str:
        return self.model._meta.label_lower

    def identity(self, obj: Any) -> Any:
        if self.model._meta.auto_created:
            fields = [f.attname for f in self.model._meta.concrete_fields if f.is_relation]
            return [str(getattr(obj, name)) for name in fields]
        return str(getattr(obj, "public_id", None) or obj.pk)


def _user() -> User:
    n = next(_n)
    return User(username=f"person{n}", email=f"person{n}@example.com")


def _group() -> Group:
    return Group.objects.create(name=f"Department {next(_n)}")


def _model() -> AIModel:
    n = next(_n)
    return AIModel(key=f"m{n}", display_name=f"Model {n}", provider="demo", provider_model_id="d")


def _permission() -> Permission:
    return Permission.objects.filter(codename=f"view_{['budget', 'aimodel'][next(_n) % 2]}")[0]


def _conversation() -> Conversation:
    owner = User.objects.create(username=f"owner{next(_n)}")
    return Conversation.objects.create(owner=owner, title="t", model="demo")


def cases() -> dict[str, Case]:
    user_groups = User.groups.through
    user_permissions = User.user_permissions.through
    group_permissions = Group.permissions.through
    allowed_groups = AIModel.allowed_groups.through
    return {
        "user": Case(
            User, _user, lambda: {"is_superuser": True}, lambda o: {"username": o.username}
        ),
        "group": Case(
            Group,
            lambda: Group(name=f"Department {next(_n)}"),
            lambda: {"name": f"Renamed {next(_n)}"},
            lambda o: {"name": o.name},
            one_row=True,
        ),
        "user_groups": Case(
            user_groups,
            lambda: user_groups(user=User.objects.create(username=f"m{next(_n)}"), group=_group()),
            lambda: {"group": _group()},
            lambda o: {"user_id": o.user_id, "group_id": o.group_id},
            one_row=True,
        ),
        "user_permissions": Case(
            user_permissions,
            lambda: user_permissions(
                user=User.objects.create(username=f"p{next(_n)}"), permission=_permission()
            ),
            lambda: {"permission": Permission.objects.get(codename="change_user")},
            lambda o: {"user_id": o.user_id, "permission_id": o.permission_id},
            one_row=True,
        ),
        "group_permissions": Case(
            group_permissions,
            lambda: group_permissions(group=_group(), permission=_permission()),
            lambda: {"permission": Permission.objects.get(codename="change_user")},
            lambda o: {"group_id": o.group_id, "permission_id": o.permission_id},
            one_row=True,
        ),
        "aimodel_allowed_groups": Case(
            allowed_groups,
            lambda: allowed_groups(aimodel=_model_saved(), group=_group()),
            lambda: {"group": _group()},
            lambda o: {"aimodel_id": o.aimodel_id, "group_id": o.group_id},
            one_row=True,
        ),
        "guardrail_policy": Case(
            GuardrailPolicy,
            lambda: GuardrailPolicy(pk=GuardrailPolicy.SINGLETON_ID),
            lambda: {"dlp_mode": "off"},
            lambda o: {"pk": o.pk},
        ),
        "aimodel": Case(AIModel, _model, lambda: {"enabled": False}, lambda o: {"key": o.key}),
        "modelprice": Case(
            ModelPrice,
            lambda: ModelPrice(
                model=_model_saved(),
                input_per_million=Decimal("1"),
                output_per_million=Decimal("2"),
                effective_from=timezone.now() - timedelta(days=1),
            ),
            lambda: {"output_per_million": Decimal("0")},
            lambda o: {"model": o.model, "effective_from": o.effective_from},
        ),
        "budget": Case(
            Budget,
            lambda: Budget(
                name=f"Budget {next(_n)}",
                scope="organisation",
                period="monthly",
                limit_amount=Decimal("10"),
            ),
            lambda: {"limit_amount": Decimal("1000000")},
            lambda o: {"name": o.name},
        ),
        "message": Case(
            Message,
            lambda: Message(conversation=_conversation(), role="user", content="hello"),
            lambda: {"content": "rewritten"},
            lambda o: {"public_id": o.public_id},
        ),
    }


def _model_saved() -> AIModel:
    model = _model()
    model.save()
    return model


def _existing(case: Case, how_many: int) -> list[Any]:
    if case.model is GuardrailPolicy:
        return [GuardrailPolicy.current()]
    rows = [case.make() for _ in range(how_many)]
    with governed_writes(reason="test set-up"):
        return case.model.objects.bulk_create(rows)


def _try(case: Case, operation: str) -> tuple[int, list[Any], list[str]]:
    """Run `operation` on `case`'s model; return (rows, their identities, fields)."""
    manager = case.model.objects
    if operation == "bulk_create":
        if case.model is GuardrailPolicy:
            with governed_writes(reason="test set-up"):
                GuardrailPolicy.objects.all().delete()
        rows = [case.make() for _ in range(1 if case.model is GuardrailPolicy else 2)]
        created = manager.bulk_create(rows)
        return len(created), [case.identity(o) for o in created], []
    rows = _existing(case, 2)
    pks = [row.pk for row in rows]
    if operation == "update":
        change = case.change()
        if case.one_row:
            rows, pks = rows[:1], pks[:1]
        assert manager.filter(pk__in=pks).update(**change) == len(rows)
        return len(rows), [case.identity(o) for o in rows], sorted(change)
    if operation == "delete":
        manager.filter(pk__in=pks).delete()
        assert not case.model.objects.filter(pk__in=pks).exists()
        return len(rows), [case.identity(o) for o in rows], []
    if operation == "bulk_update":
        change = case.change()
        rows = rows[:1] if case.one_row else rows
        for row in rows:
            for name, value in change.items():
                setattr(row, name, value)
        assert manager.bulk_update(rows, list(change)) == len(rows)
        return len(rows), [case.identity(o) for o in rows], sorted(change)
    if operation == "update_or_create":
        change = case.change()
        obj, created = manager.update_or_create(defaults=change, **case.lookup(rows[0]))
        assert not created
        return 1, [case.identity(obj)], sorted(change)
    raise AssertionError(operation)


def test_every_governed_model_hands_out_governed_querysets() -> None:
    from django.apps import apps

    for label in GOVERNED_MODELS:
        assert is_governed(apps.get_model(label)), label
    assert {case.label for case in cases().values()} == {label.lower() for label in GOVERNED_MODELS}
    # As with Django's own managers, deleting needs a queryset: no `Model.objects.delete()`.
    assert not hasattr(Message.objects, "delete") and not hasattr(User.objects, "delete")


@pytest.mark.django_db
@pytest.mark.parametrize("operation", OPERATIONS)
@pytest.mark.parametrize(
    "name",
    [
        "user",
        "group",
        "user_groups",
        "user_permissions",
        "group_permissions",
        "aimodel_allowed_groups",
        "guardrail_policy",
        "aimodel",
        "modelprice",
        "budget",
        "message",
    ],
)
def test_each_queryset_write_on_a_governed_model_is_audited(
    name: str, operation: str, administrator
) -> None:
    case = cases()[name]
    before = len(bulk_events())
    with audit_context.bind(audit_context.AuditContext(actor=administrator)):
        rows, identities, fields = _try(case, operation)

    events = bulk_events()[before:]
    assert len(events) == 1, [e.details for e in events]
    event = events[0]
    assert event.actor_id == administrator.pk
    assert event.details["model"] == case.label
    assert event.details["operation"] == operation
    assert event.details["count"] == rows
    assert event.details["fields"] == fields
    assert sorted(map(str, event.details["ids"])) == sorted(map(str, identities))
    assert event.details["ids_truncated"] is False
    # Field names only: a value written (a message's new text) never reaches the trail.
    assert "rewritten" not in repr(AuditEvent.objects.filter(pk=event.pk).values().get())


@pytest.mark.django_db
def test_the_issues_examples_each_leave_an_event_naming_what_changed(owner) -> None:
    User.objects.filter(pk=owner.pk).update(is_superuser=True)
    GuardrailPolicy.current()
    GuardrailPolicy.objects.update(dlp_mode="off")
    AIModel.objects.filter(key="demo").update(provider_model_id="elsewhere")
    Budget.objects.create(name="Org", scope="organisation", period="monthly", limit_amount=1)
    Budget.objects.all().delete()

    done = [
        (e.details["model"], e.details["operation"], e.details["fields"]) for e in bulk_events()
    ]
    assert done == [
        ("accounts.user", "update", ["is_superuser"]),
        ("guardrails.guardrailpolicy", "update", ["dlp_mode"]),
        ("providers.aimodel", "update", ["provider_model_id"]),
        ("costs.budget", "delete", []),
    ]
    first = bulk_events()[0]
    assert (first.target_type, first.target_id) == ("user", str(owner.public_id))


@pytest.mark.django_db
def test_the_event_rolls_back_with_the_write() -> None:
    budget = Budget.objects.create(name="O", scope="organisation", period="daily", limit_amount=5)
    with pytest.raises(RuntimeError), transaction.atomic():
        Budget.objects.filter(pk=budget.pk).update(limit_amount=0)
        assert len(bulk_events()) == 1
        raise RuntimeError("the change fails after the write")
    budget.refresh_from_db()
    assert budget.limit_amount == 5 and bulk_events() == []


@pytest.mark.django_db
def test_ids_are_capped_but_the_count_is_exact() -> None:
    with governed_writes(reason="test set-up"):
        Budget.objects.bulk_create(
            Budget(name=f"B{i}", scope="organisation", period="daily", limit_amount=1)
            for i in range(BULK_IDS_MAX + 5)
        )
    assert Budget.objects.update(enabled=False) == BULK_IDS_MAX + 5
    (event,) = bulk_events()
    assert event.details["count"] == BULK_IDS_MAX + 5
    assert len(event.details["ids"]) == BULK_IDS_MAX and event.details["ids_truncated"] is True


@pytest.mark.django_db
def test_writes_in_a_governed_block_record_nothing_and_need_a_reason(owner) -> None:
    with governed_writes(reason="a service that audits this itself"):
        User.objects.filter(pk=owner.pk).update(first_name="Alice")
        Message.objects.all().delete()
    assert bulk_events() == []
    User.objects.filter(pk=owner.pk).update(first_name="Alicia")  # outside again: recorded
    assert len(bulk_events()) == 1
    with pytest.raises(ValueError, match="reason"), governed_writes(reason=" "):
        pass


@pytest.mark.django_db
def test_group_membership_changes_through_the_related_managers_are_audited(owner) -> None:
    admins = Group.objects.get(name="Administrator")
    owner.groups.add(admins)
    admins.user_set.remove(owner)
    owner.user_permissions.add(Permission.objects.get(codename="change_user"))
    admins.permissions.clear()

    done = [(e.details["model"], e.details["operation"], e.details["ids"]) for e in bulk_events()]
    assert done[:3] == [
        ("accounts.user_groups", "bulk_create", [[str(owner.pk), str(admins.pk)]]),
        ("accounts.user_groups", "delete", [[str(owner.pk), str(admins.pk)]]),
        (
            "accounts.user_user_permissions",
            "bulk_create",
            [[str(owner.pk), str(Permission.objects.get(codename="change_user").pk)]],
        ),
    ]
    assert done[3][:2] == ("auth.group_permissions", "delete")
    assert len(done) == 4


@pytest.mark.django_db
def test_a_chat_reply_adds_no_bulk_write_event(owner, fast_demo, monkeypatch) -> None:
    from conversations.generation import reply_generate
    from conversations.inflight import _heartbeat
    from conversations.services import message_send, reply_stop

    monkeypatch.setattr("conversations.services.dispatch", lambda *a: None)
    # The heartbeat hands its connection back to the pool; the test's must stay open.
    monkeypatch.setattr("conversations.inflight.connections.close_all", lambda: None)
    result = message_send(actor=owner, text="Hello there", model_key="demo")
    reply_generate(reply_id=result.reply.pk)
    result.reply.refresh_from_db()
    assert result.reply.status == Message.Status.COMPLETE and result.reply.content
    _heartbeat([result.reply.pk])
    second = message_send(
        actor=owner,
        text="And again",
        model_key="demo",
        conversation_id=result.conversation.public_id,
    )
    reply_stop(actor=owner, message_id=second.reply.public_id)

    assert [e.details for e in bulk_events()] == []
    actions = set(AuditEvent.objects.values_list("action", flat=True))
    assert {AuditAction.MESSAGE_SENT, AuditAction.REPLY_COMPLETED} <= actions


@pytest.mark.django_db
def test_the_consoles_delete_selected_records_each_object_once(administrator) -> None:
    budgets = [
        Budget.objects.create(name=f"B{i}", scope="organisation", period="daily", limit_amount=1)
        for i in range(2)
    ]
    client = Client()
    client.force_login(administrator)
    response = client.post(
        reverse("admin:costs_budget_changelist"),
        {
            "action": "delete_selected",
            "_selected_action": [b.pk for b in budgets],
            "post": "yes",
        },
    )
    assert response.status_code == 302
    assert not Budget.objects.exists()
    deleted = AuditEvent.objects.filter(action=AuditAction.ADMIN_DELETE)
    assert sorted(e.target_id for e in deleted) == sorted(str(b.pk) for b in budgets)
    assert all(e.actor_id == administrator.pk for e in deleted)
    assert [e.details for e in bulk_events()] == []


@pytest.mark.django_db
def test_a_membership_change_in_the_console_names_the_groups(administrator, owner) -> None:
    staff = Group.objects.get(name="Staff")
    client = Client()
    client.force_login(administrator)
    page = client.get(reverse("admin:accounts_user_change", args=[owner.pk]))
    form = page.context["adminform"].form
    data = {
        name: value
        for name, value in form.initial.items()
        if value is not None and name not in {"groups", "user_permissions", "password"}
    }
    data.update({"groups": [staff.pk], "date_joined_0": "2026-01-01", "date_joined_1": "00:00:00"})
    response = client.post(reverse("admin:accounts_user_change", args=[owner.pk]), data)
    assert response.status_code == 302, response.context["adminform"].form.errors
    assert list(owner.groups.all()) == [staff]
    (event,) = bulk_events()
    assert event.actor_id == administrator.pk
    assert event.details["model"] == "accounts.user_groups"
    assert event.details["ids"] == [[str(owner.pk), str(staff.pk)]]
