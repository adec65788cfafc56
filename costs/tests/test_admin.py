"""The cost console: who may see and change prices, budgets and the ledger; budget lists."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import pytest
from django.contrib.auth.models import Group
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from accounts.api_keys import api_key_create
from accounts.models import User
from audit.catalogue import AuditAction
from audit.models import AuditEvent
from conftest import PASSWORD
from conversations.models import Conversation, Message
from costs.models import Budget, BudgetWindow, CostEntry, ModelPrice
from costs.services import budgets_for, period_bounds
from providers.models import AIModel

pytestmark = pytest.mark.django_db

BUDGETS = "/admin/costs/budget/"
PRICES = "/admin/costs/modelprice/"
LEDGER = "/admin/costs/costentry/"
WINDOWS = "/admin/costs/budgetwindow/"
REPORT = "/admin/costs/costentry/report/"
CSV_EXPORT = "/admin/costs/costentry/report/csv/"


def client_for(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def budget_form(**overrides: Any) -> dict[str, Any]:
    data = {
        "name": "Whole company",
        "enabled": "on",
        "scope": "organisation",
        "group": "",
        "user": "",
        "api_key": "",
        "period": "monthly",
        "limit_amount": "500.00",
        "limit_tokens": "",
        "warn_percent": "80",
        "action": "block",
    }
    data.update(overrides)
    return data


def make_budget(**fields: Any) -> Budget:
    values: dict[str, Any] = {
        "name": "Company",
        "scope": Budget.Scope.ORGANISATION,
        "period": Budget.Period.MONTHLY,
        "limit_amount": Decimal("100"),
    }
    values.update(fields)
    return Budget.objects.create(**values)


def make_entry(user: Any, *, title: str = "Budget talk", cost: str = "0.010000") -> CostEntry:
    conversation = Conversation.objects.create(owner=user, title=title, model="demo")
    reply = Message.objects.create(conversation=conversation, role="assistant", status="complete")
    return CostEntry.objects.create(
        idempotency_key=f"{reply.public_id}:0",
        created_at=timezone.now(),
        user=user,
        conversation=conversation,
        message=reply,
        call_index=0,
        model="demo",
        provider="demo",
        input_tokens=10,
        output_tokens=5,
        cost=Decimal(cost),
        currency="USD",
        outcome="complete",
    )


@pytest.fixture
def superuser(db: None) -> Any:
    return User.objects.create_superuser("root", "root@example.com", PASSWORD)


# --- Who may open what ------------------------------------------------------------------------


def test_staff_member_cannot_open_any_cost_page(staff_member, owner) -> None:
    budget = make_budget()
    entry = make_entry(staff_member)
    client = client_for(staff_member)
    for url in (
        REPORT,
        CSV_EXPORT,
        BUDGETS,
        f"{BUDGETS}{budget.pk}/change/",
        f"{BUDGETS}add/",
        PRICES,
        LEDGER,
        f"{LEDGER}{entry.pk}/change/",
        WINDOWS,
        "/admin/costs/",
    ):
        assert client.get(url).status_code in {302, 403}, url
        response = client.get(url, follow=True)
        assert response.status_code == 403, url
        assert "0.010000" not in response.content.decode()
    response = client.post(f"{BUDGETS}add/", budget_form(), follow=True)
    assert response.status_code == 403
    assert Budget.objects.count() == 1


def test_compliance_officer_reads_budgets_and_the_report_but_changes_nothing(
    compliance_officer,
) -> None:
    budget = make_budget()
    client = client_for(compliance_officer)
    assert client.get(BUDGETS).status_code == 200
    assert client.get(f"{BUDGETS}{budget.pk}/change/").status_code == 200  # view only
    assert client.get(REPORT).status_code == 200
    assert client.get(CSV_EXPORT).status_code == 200
    assert client.get(PRICES).status_code == 200
    assert client.get(LEDGER).status_code == 200
    assert client.get(WINDOWS).status_code == 200

    assert client.get(f"{BUDGETS}add/").status_code == 403
    assert client.post(f"{BUDGETS}add/", budget_form(name="Mine")).status_code == 403
    assert (
        client.post(f"{BUDGETS}{budget.pk}/change/", budget_form(limit_amount="1")).status_code
        == 403
    )
    assert client.get(f"{BUDGETS}{budget.pk}/delete/").status_code == 403
    assert client.post(f"{BUDGETS}{budget.pk}/delete/", {"post": "yes"}).status_code == 403
    response = client.post(
        BUDGETS, {"action": "delete_selected", "_selected_action": [budget.pk], "post": "yes"}
    )
    assert response.status_code in {200, 302, 403}
    assert client.get(f"{PRICES}add/").status_code == 403

    budget.refresh_from_db()
    assert budget.limit_amount == Decimal("100")
    assert list(Budget.objects.values_list("name", flat=True)) == ["Company"]
    assert not AuditEvent.objects.filter(action__startswith="admin.").exists()


# --- Budgets: add, change, delete, audited ----------------------------------------------------


def test_administrator_manages_budgets_and_every_change_is_audited(administrator, owner) -> None:
    sales = Group.objects.create(name="Sales")
    client = client_for(administrator)
    assert client.get(f"{BUDGETS}add/").status_code == 200

    response = client.post(
        f"{BUDGETS}add/",
        budget_form(name="Sales monthly", scope="department", group=sales.pk),
    )
    assert response.status_code == 302, response.content.decode()
    budget = Budget.objects.get(name="Sales monthly")
    assert (budget.scope, budget.group, budget.user) == ("department", sales, None)
    added = AuditEvent.objects.get(action=AuditAction.ADMIN_ADD)
    assert added.actor == administrator
    assert (added.target_type, added.target_id) == ("budget", str(budget.pk))

    response = client.post(
        f"{BUDGETS}{budget.pk}/change/",
        budget_form(
            name="Sales monthly", scope="department", group=sales.pk, limit_amount="750.50"
        ),
    )
    assert response.status_code == 302, response.content.decode()
    budget.refresh_from_db()
    assert budget.limit_amount == Decimal("750.50")
    changed = AuditEvent.objects.get(action=AuditAction.ADMIN_CHANGE)
    assert changed.actor == administrator
    assert (changed.target_type, changed.target_id) == ("budget", str(budget.pk))
    assert changed.details["changed_fields"] == ["Limit amount"]

    response = client.post(f"{BUDGETS}{budget.pk}/delete/", {"post": "yes"})
    assert response.status_code == 302
    assert not Budget.objects.exists()
    deleted = AuditEvent.objects.get(action=AuditAction.ADMIN_DELETE)
    assert (deleted.target_type, deleted.target_id, deleted.actor) == (
        "budget",
        str(budget.pk),
        administrator,
    )


def test_deleting_a_budget_takes_its_windows(administrator) -> None:
    budget = make_budget()
    BudgetWindow.objects.create(budget=budget, period_start=dt.date(2026, 3, 1))
    client = client_for(administrator)
    assert client.get(f"{BUDGETS}{budget.pk}/delete/").status_code == 200
    response = client.post(f"{BUDGETS}{budget.pk}/delete/", {"post": "yes"})
    assert response.status_code == 302
    assert not Budget.objects.exists() and not BudgetWindow.objects.exists()
    assert AuditEvent.objects.filter(action=AuditAction.ADMIN_DELETE).count() == 1


def test_administrator_adds_a_personal_budget(administrator, owner) -> None:
    response = client_for(administrator).post(
        f"{BUDGETS}add/", budget_form(name="Alice", scope="user", user=owner.pk, period="daily")
    )
    assert response.status_code == 302, response.content.decode()
    assert Budget.objects.get(name="Alice").user == owner


@pytest.mark.parametrize(
    ("fields", "field", "message"),
    [
        ({"scope": "organisation", "group": "GROUP"}, "group", "leave the department empty"),
        ({"scope": "organisation", "user": "USER"}, "user", "leave the person empty"),
        ({"scope": "department"}, "group", "A department budget needs a department."),
        (
            {"scope": "department", "group": "GROUP", "user": "USER"},
            "user",
            "A department budget names no person",
        ),
        ({"scope": "user"}, "user", "A personal budget needs a person."),
        (
            {"scope": "user", "user": "USER", "group": "GROUP"},
            "group",
            "A personal budget names no department",
        ),
        ({"scope": "api_key"}, "api_key", "A budget for an API key needs a key."),
        (
            {"scope": "user", "user": "USER", "api_key": "KEY"},
            "api_key",
            "Only a budget for an API key names a key",
        ),
        (
            {"scope": "api_key", "api_key": "KEY", "user": "USER"},
            "user",
            "A budget for an API key names no person",
        ),
        ({"limit_amount": "-1"}, "limit_amount", "A limit cannot be negative."),
        ({"warn_percent": "150"}, "warn_percent", "Warn at a percentage between 1 and 100."),
    ],
)
def test_budget_form_explains_a_wrong_target(administrator, owner, fields, field, message) -> None:
    sales = Group.objects.create(name="Sales")
    key, _ = api_key_create(owner=owner, name="job", scopes=["chat"], actor=owner)
    values = {
        name: {"GROUP": sales.pk, "USER": owner.pk, "KEY": key.pk}.get(value, value)
        for name, value in fields.items()
    }
    response = client_for(administrator).post(f"{BUDGETS}add/", budget_form(**values))
    assert response.status_code == 200  # the form again, not an IntegrityError
    errors = response.context["adminform"].form.errors
    assert field in errors
    assert any(message in error for error in errors[field])
    assert message in response.content.decode()
    assert not Budget.objects.exists()
    assert not AuditEvent.objects.filter(action=AuditAction.ADMIN_ADD).exists()


def test_an_api_keys_budget_is_created_in_the_console_and_applies_to_that_key(
    administrator, owner
) -> None:
    key, _ = api_key_create(owner=owner, name="job", scopes=["chat"], actor=owner)
    other, _ = api_key_create(owner=owner, name="other", scopes=["chat"], actor=owner)
    response = client_for(administrator).post(
        f"{BUDGETS}add/", budget_form(name="Job key", scope="api_key", api_key=key.pk)
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    budget = Budget.objects.get(name="Job key")
    assert budget.api_key == key
    assert budget in budgets_for(owner, key)
    assert budget not in budgets_for(owner, other) and budget not in budgets_for(owner)


def test_department_budgets_cannot_name_a_role(administrator) -> None:
    staff = Group.objects.get(name="Staff")
    response = client_for(administrator).post(
        f"{BUDGETS}add/", budget_form(scope="department", group=staff.pk)
    )
    assert response.status_code == 200
    assert "group" in response.context["adminform"].form.errors
    assert not Budget.objects.exists()


# --- Budget list: current period's use, without N+1 -------------------------------------------


def test_budget_list_shows_the_current_period_use(administrator, owner) -> None:
    now = timezone.now()
    monthly = make_budget(name="Monthly", limit_amount=Decimal("100"))
    daily = make_budget(name="Daily", period=Budget.Period.DAILY, limit_amount=Decimal("10"))
    unused = make_budget(name="Unused", period=Budget.Period.WEEKLY)
    BudgetWindow.objects.create(
        budget=monthly,
        period_start=period_bounds("monthly", now)[0],
        spent=Decimal("12.500000"),
        reserved=Decimal("2.500000"),
    )
    # An earlier day's window is not today's.
    BudgetWindow.objects.create(
        budget=daily,
        period_start=period_bounds("daily", now)[0] - dt.timedelta(days=1),
        spent=Decimal("9.000000"),
    )
    BudgetWindow.objects.create(
        budget=daily, period_start=period_bounds("daily", now)[0], spent=Decimal("11.000000")
    )
    tiny = make_budget(name="Tiny", period=Budget.Period.WEEKLY, limit_amount=Decimal("1"))
    BudgetWindow.objects.create(
        budget=tiny, period_start=period_bounds("weekly", now)[0], spent=Decimal("0.000007")
    )
    response = client_for(administrator).get(BUDGETS)
    assert response.status_code == 200
    shown = {budget.name: budget.current_usage for budget in response.context["cl"].result_list}
    assert shown["Monthly"].used == Decimal("15.000000")
    assert shown["Daily"].used == Decimal("11.000000")
    assert shown["Unused"].used == Decimal(0)
    model_admin = response.context["cl"].model_admin
    remaining = {
        budget.name: model_admin.remaining_column(budget)
        for budget in response.context["cl"].result_list
    }
    # Daily is over its limit: nothing remains.
    assert remaining == {
        "Monthly": "85.00 USD",
        "Daily": "0.00 USD",
        "Unused": "100.00 USD",
        "Tiny": "0.999993 USD",  # exact to the micro-unit when cents would round
    }
    html = response.content.decode()
    assert "15.00 USD" in html and "85.00 USD" in html  # used, remaining
    assert "(2.50 USD held)" in html
    assert unused.pk


def test_budget_list_runs_a_bounded_number_of_queries(administrator, owner) -> None:
    client = client_for(administrator)
    client.get(BUDGETS)  # warm caches

    def seed(count: int) -> None:
        now = timezone.now()
        for n in range(count):
            period = ("daily", "weekly", "monthly")[n % 3]
            budget = make_budget(name=f"Budget {Budget.objects.count()}", period=period)
            BudgetWindow.objects.create(
                budget=budget, period_start=period_bounds(period, now)[0], spent=Decimal(1)
            )

    seed(3)
    with CaptureQueriesContext(connection) as small:
        assert client.get(BUDGETS).status_code == 200
    seed(30)
    with CaptureQueriesContext(connection) as large:
        assert client.get(BUDGETS).status_code == 200
    assert len(large) == len(small)
    windows = [q for q in large.captured_queries if "costs_budgetwindow" in q["sql"]]
    assert len(windows) == 1


# --- Prices -----------------------------------------------------------------------------------


def price_form(model: AIModel, **overrides: Any) -> dict[str, Any]:
    data = {
        "model": model.pk,
        "effective_from_0": "2026-01-01",
        "effective_from_1": "00:00:00",
        "input_per_million": "3.000000",
        "cached_input_per_million": "",
        "output_per_million": "15.000000",
        "currency": "USD",
    }
    data.update(overrides)
    return data


def test_administrator_adds_and_changes_prices_audited(administrator, settings) -> None:
    settings.COSTS_CURRENCY = "USD"
    demo = AIModel.objects.get(key="demo")
    client = client_for(administrator)
    add_page = client.get(f"{PRICES}add/")
    assert add_page.context["adminform"].form.initial["currency"] == "USD"
    response = client.post(f"{PRICES}add/", price_form(demo))
    assert response.status_code == 302, response.content.decode()
    price = ModelPrice.objects.get(model=demo)
    added = AuditEvent.objects.get(action=AuditAction.ADMIN_ADD)
    assert (added.target_type, added.target_id, added.actor) == (
        "modelprice",
        str(price.pk),
        administrator,
    )
    response = client.post(
        f"{PRICES}{price.pk}/change/", price_form(demo, output_per_million="12.000000")
    )
    assert response.status_code == 302
    price.refresh_from_db()
    assert price.output_per_million == Decimal("12.000000")
    changed = AuditEvent.objects.get(action=AuditAction.ADMIN_CHANGE)
    assert changed.details["changed_fields"] == ["Output per million"]
    # Administrators do not delete prices: the ledger's history refers to them.
    assert client.post(f"{PRICES}{price.pk}/delete/", {"post": "yes"}).status_code == 403


def test_price_form_uses_the_models_validation(administrator, settings) -> None:
    settings.COSTS_CURRENCY = "EUR"
    demo = AIModel.objects.get(key="demo")
    client = client_for(administrator)
    assert client.get(f"{PRICES}add/").context["adminform"].form.initial["currency"] == "EUR"
    response = client.post(f"{PRICES}add/", price_form(demo, currency="USD"))
    assert response.status_code == 200
    assert "Prices must be in the ledger&#x27;s currency (EUR)." in response.content.decode()
    client.post(f"{PRICES}add/", price_form(demo, currency="EUR"))
    again = client.post(f"{PRICES}add/", price_form(demo, currency="EUR"))
    assert again.status_code == 200  # same model and start: a form error, not a crash
    assert again.context["adminform"].form.errors
    assert ModelPrice.objects.count() == 1


# --- The ledger and windows: read-only for everyone -------------------------------------------


def test_ledger_is_read_only_for_everyone(administrator, superuser, owner) -> None:
    entry = make_entry(owner)
    budget = make_budget()
    window = BudgetWindow.objects.create(budget=budget, period_start=dt.date(2026, 3, 1))
    for user in (administrator, superuser):
        client = client_for(user)
        assert client.get(LEDGER).status_code == 200
        assert client.get(f"{LEDGER}{entry.pk}/change/").status_code == 200  # view
        assert client.get(f"{LEDGER}add/").status_code == 403
        assert client.post(f"{LEDGER}{entry.pk}/change/", {"cost": "0"}).status_code == 403
        assert client.post(f"{LEDGER}{entry.pk}/delete/", {"post": "yes"}).status_code == 403
        assert client.get(WINDOWS).status_code == 200
        assert client.post(f"{WINDOWS}{window.pk}/change/", {"spent": "0"}).status_code == 403
        assert client.post(f"{WINDOWS}{window.pk}/delete/", {"post": "yes"}).status_code == 403
    entry.refresh_from_db()
    assert entry.cost == Decimal("0.010000")
    assert BudgetWindow.objects.filter(pk=window.pk).exists()


def test_ledger_entry_shows_the_conversation_by_id_not_title(administrator, owner) -> None:
    entry = make_entry(owner, title="Salary negotiation with Bob")
    html = client_for(administrator).get(f"{LEDGER}{entry.pk}/change/").content.decode()
    assert str(entry.conversation.public_id) in html
    assert "Salary negotiation" not in html


def test_ledger_list_filters_and_bounded_queries(compliance_officer, owner, colleague) -> None:
    sales = Group.objects.create(name="Sales")
    client = client_for(compliance_officer)
    client.get(LEDGER)
    for _ in range(3):
        make_entry(owner)
    with CaptureQueriesContext(connection) as small:
        assert client.get(LEDGER).status_code == 200
    for _ in range(30):
        make_entry(colleague)
    with CaptureQueriesContext(connection) as large:
        response = client.get(LEDGER)
    assert len(large) == len(small)
    assert len(response.context["cl"].result_list) == 33
    assert not [q for q in large.captured_queries if "DISTINCT" in q["sql"].upper()]
    CostEntry.objects.filter(user=owner).update(department=sales, estimated=True)
    for query, count in (
        (f"?department={sales.pk}", 3),
        ("?department=none", 30),
        ("?estimated__exact=1", 3),
        ("?model=demo", 33),
        ("?model=other", 0),
        ("?provider=demo&outcome=complete", 33),
        ("?outcome=failed", 0),
        ("?department=²", 33),  # not a department id: ignored, not a crash
    ):
        response = client.get(LEDGER + query)
        assert response.status_code == 200, query
        assert len(response.context["cl"].result_list) == count, query
    assert "Spend report" in client.get(LEDGER).content.decode()
