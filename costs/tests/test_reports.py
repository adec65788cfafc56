"""The spend report: totals by day, person, department and model; filters, chart and CSV."""

from __future__ import annotations

import csv
import datetime as dt
import io
import itertools
import re
import zoneinfo
from decimal import Decimal
from typing import Any

import pytest
from django.contrib.auth.models import Group
from django.db import connection
from django.test import AsyncClient, Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from accounts.models import User
from conftest import PASSWORD
from conversations.models import Conversation, Message
from costs.models import CostEntry

pytestmark = pytest.mark.django_db

REPORT = "/admin/costs/costentry/report/"
CSV_EXPORT = "/admin/costs/costentry/report/csv/"
BERLIN = zoneinfo.ZoneInfo("Europe/Berlin")
MARCH = "?start=2026-03-01&end=2026-03-31"
_keys = itertools.count()


@pytest.fixture(autouse=True)
def _berlin(settings: Any) -> None:
    """Report days are calendar days in COSTS_TIME_ZONE, not UTC."""
    settings.COSTS_TIME_ZONE = "Europe/Berlin"
    settings.COSTS_CURRENCY = "USD"


def client_for(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def berlin(day: int, hour: int, minute: int = 0, month: int = 3) -> dt.datetime:
    return dt.datetime(2026, month, day, hour, minute, tzinfo=BERLIN)


def reply_for(user: Any) -> Message:
    conversation = Conversation.objects.create(owner=user, title="Budget talk", model="demo")
    return Message.objects.create(conversation=conversation, role="assistant", status="complete")


def entry(
    user: Any,
    *,
    when: dt.datetime,
    cost: str,
    model: str = "demo",
    department: Group | None = None,
    input_tokens: int = 10,
    output_tokens: int = 5,
    currency: str = "USD",
    reply: Message | None = None,
) -> CostEntry:
    reply = reply or reply_for(user)
    return CostEntry.objects.create(
        idempotency_key=f"test:{next(_keys)}",
        created_at=when,
        user=user,
        department=department,
        conversation=reply.conversation,
        message=reply,
        call_index=0,
        model=model,
        provider="demo",
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        cost=Decimal(cost),
        currency=currency,
        outcome="complete",
    )


@pytest.fixture
def ledger(owner, colleague) -> dict[str, Any]:
    """alice (Sales, then Research) and bob (Research), two models, several March days."""
    sales = Group.objects.create(name="Sales")
    research = Group.objects.create(name="Research")
    rows = [
        # (who, department, model, when in Berlin, cost, input, output)
        (owner, sales, "demo", berlin(2, 9), "0.123456", 100, 50),
        (owner, sales, "gpt-x", berlin(2, 23, 30), "1.000001", 1000, 200),
        # 00:30 in Berlin on the 3rd is still the 2nd in UTC: it counts on the 3rd.
        (colleague, research, "demo", berlin(3, 0, 30), "0.500000", 10, 5),
        (colleague, research, "gpt-x", berlin(5, 12), "2.333333", 3000, 700),
        (owner, research, "gpt-x", berlin(5, 8), "0.000007", 1, 1),
    ]
    for who, department, model, when, cost, tokens_in, tokens_out in rows:
        entry(
            who,
            when=when,
            cost=cost,
            model=model,
            department=department,
            input_tokens=tokens_in,
            output_tokens=tokens_out,
        )
    # Outside March in Berlin (though 1 April 00:10 is still 31 March in UTC).
    entry(owner, when=berlin(28, 23, 30, month=2), cost="9.000000", department=sales)
    entry(owner, when=berlin(1, 0, 10, month=4), cost="9.000000", department=sales)
    # In March but in another currency: counted, never added to dollars.
    entry(colleague, when=berlin(4, 12), cost="5.000000", department=research, currency="EUR")
    return {"sales": sales, "research": research, "rows": rows}


def expected(rows: list[tuple[Any, ...]], key: Any) -> dict[Any, Decimal]:
    totals: dict[Any, Decimal] = {}
    for row in rows:
        totals[key(row)] = totals.get(key(row), Decimal(0)) + Decimal(row[4])
    return totals


def by_key(rows: list[Any]) -> dict[str, Decimal]:
    return {row.key: row.cost for row in rows}


def body(response: Any) -> str:
    return b"".join(response.streaming_content).decode()


# --- Totals -----------------------------------------------------------------------------------


def test_report_totals_equal_the_hand_computed_sums(
    compliance_officer, owner, colleague, ledger
) -> None:
    response = client_for(compliance_officer).get(REPORT + MARCH)
    assert response.status_code == 200
    report = response.context["report"]
    rows = ledger["rows"]
    sales, research = ledger["sales"], ledger["research"]

    assert report.totals.cost == Decimal("3.956797") == sum(Decimal(r[4]) for r in rows)
    assert report.totals.calls == 5
    assert report.totals.input_tokens == 4111
    assert report.totals.output_tokens == 956
    assert report.totals.tokens == 5067
    assert report.totals.other_currency_calls == 1

    assert by_key(report.per_day) == {
        "2026-03-02": Decimal("1.123457"),
        "2026-03-03": Decimal("0.500000"),
        "2026-03-05": Decimal("2.333340"),
    }
    assert by_key(report.per_day) == {
        day.isoformat(): total
        for day, total in expected(rows, lambda r: r[3].astimezone(BERLIN).date()).items()
    }
    assert by_key(report.per_user) == {
        str(owner.public_id): Decimal("1.123464"),
        str(colleague.public_id): Decimal("2.833333"),
    }
    assert [row.label for row in report.per_user] == ["bob@example.com", "alice@example.com"]
    assert by_key(report.per_department) == {
        str(sales.pk): Decimal("1.123457"),
        str(research.pk): Decimal("2.833340"),
    }
    assert by_key(report.per_department) == {
        str(group.pk): total for group, total in expected(rows, lambda r: r[1]).items()
    }
    assert by_key(report.per_model) == {"demo": Decimal("0.623456"), "gpt-x": Decimal("3.333341")}
    assert {row.key: row.calls for row in report.per_model} == {"demo": 2, "gpt-x": 3}
    assert {row.key: row.tokens for row in report.per_model} == {"demo": 165, "gpt-x": 4902}

    html = response.content.decode()
    assert "3.956797 USD" in html
    assert "recorded in another currency" in html


def test_filters_narrow_the_totals(compliance_officer, owner, colleague, ledger) -> None:
    client = client_for(compliance_officer)

    def total(query: str) -> Decimal:
        response = client.get(REPORT + MARCH + query)
        assert response.status_code == 200, response.content.decode()
        return Decimal(response.context["report"].totals.cost)

    assert total(f"&user={owner.public_id}") == Decimal("1.123464")
    assert total("&user=ALICE@example.com") == Decimal("1.123464")  # e-mail, any case
    assert total("&user=bob") == Decimal("2.833333")  # username
    assert total(f"&department={ledger['research'].pk}") == Decimal("2.833340")
    assert total(f"&department={ledger['sales'].pk}") == Decimal("1.123457")
    assert total("&model=demo") == Decimal("0.623456")
    assert total("&model=gpt-x") == Decimal("3.333341")  # not in the catalogue, but in the ledger
    assert total(f"&model=gpt-x&user={colleague.public_id}") == Decimal("2.333333")
    response = client.get(REPORT + "?start=2026-03-05&end=2026-03-05")
    assert by_key(response.context["report"].per_day) == {"2026-03-05": Decimal("2.333340")}
    assert response.context["report"].totals.cost == Decimal("2.333340")
    # February in Berlin holds only the entry of the 28th (23:30 there).
    february = client.get(REPORT + "?start=2026-02-01&end=2026-02-28").context["report"]
    assert february.totals.cost == Decimal("9.000000")


def test_report_defaults_to_the_current_month(compliance_officer, owner) -> None:
    now = timezone.now()
    entry(owner, when=now, cost="0.250000")
    entry(owner, when=now - dt.timedelta(days=40), cost="7.000000")
    response = client_for(compliance_officer).get(REPORT)
    assert response.status_code == 200
    today = now.astimezone(BERLIN).date()
    filters = response.context["report"].filters
    assert filters.start == today.replace(day=1)
    assert filters.end.month == today.month and (filters.end + dt.timedelta(days=1)).day == 1
    assert response.context["report"].totals.cost == Decimal("0.250000")
    html = response.content.decode()
    assert f'value="{filters.start.isoformat()}"' in html  # the form shows the defaults
    assert f"?start={filters.start.isoformat()}&amp;end={filters.end.isoformat()}" in html


def test_report_rows_link_to_their_filter(compliance_officer, owner, ledger) -> None:
    html = client_for(compliance_officer).get(REPORT + MARCH).content.decode()
    assert f"user={owner.public_id}" in html
    assert f"department={ledger['sales'].pk}" in html
    assert "model=gpt-x" in html
    assert "start=2026-03-05&amp;end=2026-03-05" in html
    # The export link names the page's dates, so it exports exactly what the page shows.
    assert f"{CSV_EXPORT}?start=2026-03-01&amp;end=2026-03-31" in html


# --- Chart ------------------------------------------------------------------------------------


def test_chart_has_one_bar_per_day_with_spend(compliance_officer, ledger) -> None:
    html = client_for(compliance_officer).get(REPORT + MARCH).content.decode()
    svg = re.search(r"<svg class=\"spend-chart\".*?</svg>", html, re.S)
    assert svg is not None
    bars = re.findall(r'<rect class="spend-bar" ([^>]*)><title>([^<]*)</title>', svg.group(0))
    assert [title for _, title in bars] == [
        "2026-03-02: 1.123457 USD",
        "2026-03-03: 0.500000 USD",
        "2026-03-05: 2.333340 USD",
    ]
    heights = [float(re.search(r'height="([\d.]+)"', attrs).group(1)) for attrs, _ in bars]  # type: ignore[union-attr]
    assert heights[2] == max(heights) and heights[1] < heights[0] < heights[2]
    assert "<script" not in svg.group(0)
    assert not re.search(r"\son\w+=", svg.group(0))  # no event handlers


def test_chart_labels_are_escaped(compliance_officer, owner, settings) -> None:
    settings.COSTS_CURRENCY = "USD"
    hostile = Group.objects.create(name='<script>alert("x")</script>')
    entry(owner, when=berlin(2, 9), cost="1.000000", department=hostile)
    html = client_for(compliance_officer).get(REPORT + MARCH).content.decode()
    assert '<script>alert("x")</script>' not in html
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in html


def test_no_chart_without_spend(compliance_officer) -> None:
    response = client_for(compliance_officer).get(REPORT + MARCH)
    assert response.status_code == 200
    assert 'class="spend-chart"' not in response.content.decode()
    assert "No spend in this period." in response.content.decode()


# --- CSV --------------------------------------------------------------------------------------


def test_csv_export_matches_the_page(compliance_officer, ledger) -> None:
    client = client_for(compliance_officer)
    report = client.get(REPORT + MARCH).context["report"]
    response = client.get(CSV_EXPORT + MARCH)
    assert response.status_code == 200
    assert response.streaming
    assert response["Content-Type"].startswith("text/csv")
    assert 'filename="spend-2026-03-01-2026-03-31.csv"' in response["Content-Disposition"]
    rows = list(csv.DictReader(io.StringIO(body(response))))

    total = [row for row in rows if row["breakdown"] == "total"]
    assert len(total) == 1
    assert total[0]["cost"] == "3.956797" == f"{report.totals.cost:f}"
    assert total[0]["calls"] == "5" and total[0]["tokens"] == "5067"
    assert total[0]["currency"] == "USD"
    for name, page_rows in (
        ("day", report.per_day),
        ("user", report.per_user),
        ("department", report.per_department),
        ("model", report.per_model),
    ):
        exported = [row for row in rows if row["breakdown"] == name]
        assert [(row["key"], row["label"], row["cost"], row["calls"]) for row in exported] == [
            (row.key, row.label, f"{row.cost:f}", str(row.calls)) for row in page_rows
        ]
        assert sum(Decimal(row["cost"]) for row in exported) == report.totals.cost
    assert {row["cost"] for row in rows if row["breakdown"] == "day"} == {
        "1.123457",
        "0.500000",
        "2.333340",
    }


def test_csv_export_follows_the_filters(compliance_officer, owner, ledger) -> None:
    response = client_for(compliance_officer).get(CSV_EXPORT + MARCH + "&model=demo")
    rows = list(csv.DictReader(io.StringIO(body(response))))
    assert [row["cost"] for row in rows if row["breakdown"] == "total"] == ["0.623456"]
    assert [row["key"] for row in rows if row["breakdown"] == "model"] == ["demo"]


def test_csv_export_neutralises_spreadsheet_formulas(compliance_officer) -> None:
    person = User.objects.create_user(username="@SUM(1+1)", email="", password=PASSWORD)
    department = Group.objects.create(name='=HYPERLINK("http://evil")')
    entry(person, when=berlin(2, 9), cost="1.500000", department=department, model="-2+3")
    response = client_for(compliance_officer).get(CSV_EXPORT + MARCH)
    rows = list(csv.DictReader(io.StringIO(body(response))))
    labels = {row["breakdown"]: row["label"] for row in rows}
    assert labels["user"] == "'@SUM(1+1)"
    assert labels["department"] == '\'=HYPERLINK("http://evil")'
    assert labels["model"] == "'-2+3"
    assert all(not cell.startswith(("=", "+", "-", "@")) for row in rows for cell in row.values())


@pytest.mark.django_db(transaction=True)
async def test_csv_export_streams_asynchronously_under_asgi(compliance_officer, ledger) -> None:
    client = AsyncClient()
    await client.aforce_login(compliance_officer)
    response: Any = await client.get(CSV_EXPORT + MARCH)
    assert response.status_code == 200
    assert response.is_async  # an async body: not read whole into memory under ASGI
    text = b"".join([part async for part in response.streaming_content]).decode()
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [row["cost"] for row in rows if row["breakdown"] == "total"] == ["3.956797"]
    assert len([row for row in rows if row["breakdown"] == "day"]) == 3


# --- Bounded work -----------------------------------------------------------------------------


def seed_bulk(count: int, users: list[Any], departments: list[Group]) -> None:
    replies = [reply_for(user) for user in users]
    CostEntry.objects.bulk_create(
        CostEntry(
            idempotency_key=f"bulk:{next(_keys)}",
            created_at=berlin(1 + n % 28, n % 24),
            user=users[n % len(users)],
            department=departments[n % len(departments)],
            conversation=replies[n % len(users)].conversation,
            message=replies[n % len(users)],
            call_index=0,
            model=("demo", "gpt-x")[n % 2],
            provider="demo",
            input_tokens=100,
            output_tokens=20,
            cost=Decimal("0.001234"),
            currency="USD",
            outcome="complete",
        )
        for n in range(count)
    )


def test_report_runs_a_bounded_number_of_queries(compliance_officer, owner, colleague) -> None:
    users = [owner, colleague]
    departments = [Group.objects.create(name="Sales"), Group.objects.create(name="Research")]
    client = client_for(compliance_officer)
    client.get(REPORT + MARCH)  # warm caches (content types, session)
    seed_bulk(10, users, departments)
    with CaptureQueriesContext(connection) as small:
        assert client.get(REPORT + MARCH).status_code == 200
    seed_bulk(490, users, departments)
    with CaptureQueriesContext(connection) as large:
        response = client.get(REPORT + MARCH)
    assert response.status_code == 200
    assert response.context["report"].totals.calls == 500
    assert response.context["report"].totals.cost == Decimal("0.001234") * 500
    assert len(large) == len(small) <= 15
    # Every query on the ledger aggregates; none reads entries row by row.
    ledger = [q["sql"] for q in large.captured_queries if '"costs_costentry"' in q["sql"]]
    assert ledger and all("SUM(" in sql.upper() or "EXISTS" in sql.upper() for sql in ledger)
    # The same for the export.
    with CaptureQueriesContext(connection) as export:
        body(client.get(CSV_EXPORT + MARCH))
    assert len(export) <= len(large)


# --- Bad input --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("?start=yesterday&end=2026-03-31", "Enter the first day as a date (YYYY-MM-DD)."),
        ("?start=2026-03-01&end=2026-02-31", "Enter the last day as a date (YYYY-MM-DD)."),
        ("?start=2026-03-10&end=2026-03-01", "The last day is before the first day."),
        ("?start=2024-01-01&end=2026-03-01", "A report covers at most 366 days."),
        ("?start=9999-12-01&end=9999-12-31", "Pick a day between 2000-01-01 and 2999-12-31."),
        ("?start=0001-01-01&end=0001-01-31", "Pick a day between 2000-01-01 and 2999-12-31."),
        ("?start=9999-12-05", "Pick a day between 2000-01-01 and 2999-12-31."),
        ("?end=not-a-day", "Enter the last day as a date (YYYY-MM-DD)."),
        (MARCH + "&department=999999", "Unknown department: pick one from the list."),
        (MARCH + "&department=²", "Unknown department: pick one from the list."),
        (MARCH + "&department=sales", "Unknown department: pick one from the list."),
        (MARCH + "&user=nobody@example.com", "No person has this e-mail address, username or id."),
        (
            MARCH + "&user=6f1c2a52-0d5e-4a9b-9b1e-3f2d9c7e0a11",
            "No person has this e-mail address, username or id.",
        ),
        (MARCH + "&model=no-such-model", "Unknown model: pick one from the list."),
    ],
)
def test_invalid_filters_give_a_clear_message(compliance_officer, query, message) -> None:
    client = client_for(compliance_officer)
    for url in (REPORT, CSV_EXPORT):
        response = client.get(url + query)
        assert response.status_code == 400
        html = response.content.decode()
        assert "The report could not be made" in html
        assert message in html
        assert response.context.get("report") is None


def test_start_alone_reports_its_month(compliance_officer, ledger) -> None:
    response = client_for(compliance_officer).get(REPORT + "?start=2026-03-02")
    assert response.status_code == 200
    filters = response.context["report"].filters
    assert (filters.start, filters.end) == (dt.date(2026, 3, 2), dt.date(2026, 3, 31))
    assert response.context["report"].totals.cost == Decimal("3.956797")
