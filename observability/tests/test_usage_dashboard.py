"""The usage dashboard in the console: who may open it, its figures, bounded queries."""

from __future__ import annotations

import datetime as dt
import itertools
import random
import re
from decimal import Decimal
from typing import Any

import pytest
from django.contrib.auth.models import Permission
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from conversations.models import Conversation, Message
from costs.models import CostEntry
from observability import charts, usage

pytestmark = pytest.mark.django_db

UTC = dt.UTC
NOW = dt.datetime(2026, 3, 10, 12, 30, 15, tzinfo=UTC)
DASHBOARD = "/admin/usage/"
_keys = itertools.count()


def client_for(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def conversation_of(user: Any) -> Conversation:
    return Conversation.objects.create(owner=user, title="Usage", model="demo")


def reply(
    conversation: Conversation,
    *,
    when: dt.datetime,
    status: str = Message.Status.COMPLETE,
    model: str = "demo",
    answered_by: str = "",
    ttft: int | None = None,
    duration: int | None = None,
    error_code: str = "",
    request_id: str = "",
) -> Message:
    message = Message.objects.create(
        conversation=conversation,
        role=Message.Role.ASSISTANT,
        status=status,
        model=model,
        answered_by=answered_by,
        time_to_first_token_ms=ttft,
        duration_ms=duration,
        error_code=error_code,
        request_id=request_id,
    )
    Message.objects.filter(pk=message.pk).update(created_at=when)  # auto_now_add otherwise
    message.created_at = when
    return message


def charge(
    message: Message,
    *,
    when: dt.datetime,
    cost: str,
    model: str = "demo",
    input_tokens: int = 100,
    output_tokens: int = 20,
    currency: str = "USD",
) -> CostEntry:
    return CostEntry.objects.create(
        idempotency_key=f"usage:{next(_keys)}",
        created_at=when,
        user=message.conversation.owner,
        conversation=message.conversation,
        message=message,
        call_index=0,
        model=model,
        provider="demo",
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        cost=Decimal(cost),
        currency=currency,
        outcome="complete",
    )


def svg_charts(html: str) -> dict[str, str]:
    """{chart key: its SVG markup} for the charts drawn on the page."""
    return dict(
        re.findall(r'<svg class="usage-chart"[^>]*data-chart="(\w+)">(.*?)</svg>', html, re.S)
    )


# --- Who may open it --------------------------------------------------------------------------


def test_anonymous_visitor_is_sent_to_sign_in() -> None:
    response = Client().get(DASHBOARD)
    assert response.status_code == 302
    assert "/accounts/login/" in response["Location"]


def test_staff_without_a_console_role_is_refused(staff_member, outsider) -> None:
    for person in (staff_member, outsider):
        response = client_for(person).get(DASHBOARD, follow=True)
        assert response.status_code == 403  # the console's "no access" page
        assert "admin/no_console_access.html" in [t.name for t in response.templates]
        assert b"Usage dashboard" not in response.content


def test_console_access_alone_does_not_open_the_dashboard(outsider) -> None:
    outsider.user_permissions.add(
        Permission.objects.get(content_type__app_label="accounts", codename="access_console")
    )
    client = client_for(outsider)
    assert client.get(reverse("admin:index")).status_code == 200
    assert client.get(DASHBOARD).status_code == 403
    assert DASHBOARD not in client.get(reverse("admin:index")).content.decode()


@pytest.mark.parametrize("role", ["compliance_officer", "administrator"])
def test_compliance_officers_and_administrators_open_it_from_the_index(role, request) -> None:
    client = client_for(request.getfixturevalue(role))
    index = client.get(reverse("admin:index")).content.decode()
    assert f'href="{DASHBOARD}"' in index and "Usage dashboard" in index
    response = client.get(DASHBOARD)
    assert response.status_code == 200
    assert "<h1>Usage dashboard</h1>" in response.content.decode()
    assert reverse("admin:usage_dashboard") == DASHBOARD


# --- The figures ------------------------------------------------------------------------------


@pytest.fixture
def seeded(owner) -> dict[str, Any]:
    """Within the last hour before NOW: 20 demo replies (ttft 100…2000 ms, 2 failed, 1
    stopped, 1 still streaming) and 4 replies asked of gpt-x, 2 of them answered by demo-2
    after failover; ledger entries for the completed ones."""
    conversation = conversation_of(owner)
    # Outside the hour: neither counted nor charged.
    old = reply(conversation, when=NOW - dt.timedelta(hours=3), ttft=99_999, duration=99_999)
    charge(old, when=NOW - dt.timedelta(hours=3), cost="9.000000")
    demo = []
    for n in range(20, 0, -1):
        status = Message.Status.COMPLETE
        if n in (4, 9):
            status = Message.Status.FAILED
        elif n == 13:
            status = Message.Status.CANCELLED
        elif n == 20:
            status = Message.Status.STREAMING
        demo.append(
            reply(
                conversation,
                when=NOW - dt.timedelta(minutes=n),
                status=status,
                ttft=n * 100 if status != Message.Status.STREAMING else None,
                duration=n * 1000 if status == Message.Status.COMPLETE else None,
                error_code="provider_unavailable" if status == Message.Status.FAILED else "",
                request_id=f"req-demo-{n}",
            )
        )
    gpt = [
        reply(conversation, when=NOW - dt.timedelta(minutes=5), model="gpt-x", ttft=300,
              duration=3000),
        reply(conversation, when=NOW - dt.timedelta(minutes=6), model="gpt-x", ttft=500,
              duration=5000),
        reply(conversation, when=NOW - dt.timedelta(minutes=7), model="gpt-x",
              answered_by="demo-2", ttft=900, duration=9000),
        reply(conversation, when=NOW - dt.timedelta(minutes=8), model="gpt-x",
              answered_by="demo-2", status=Message.Status.FAILED, error_code="rate_limited",
              duration=800),
    ]  # fmt: skip
    for message in demo:
        if message.status == Message.Status.COMPLETE:
            charge(message, when=message.created_at + dt.timedelta(seconds=5), cost="0.010000")
    charge(gpt[0], when=NOW - dt.timedelta(minutes=4), cost="0.500000", model="gpt-x",
           input_tokens=1000, output_tokens=400)  # fmt: skip
    charge(gpt[2], when=NOW - dt.timedelta(minutes=6), cost="0.200000", model="demo-2",
           input_tokens=50, output_tokens=10)  # fmt: skip
    return {"demo": demo[::-1], "gpt": gpt, "old": old}


def test_totals_and_percentiles_are_the_hand_computed_ones(seeded) -> None:
    dashboard = usage.usage_dashboard(period=usage.PERIODS["hour"], now=NOW)
    total = dashboard.total.requests
    assert (total.requests, total.complete, total.failed, total.cancelled) == (24, 19, 3, 1)
    assert total.in_flight == 1
    assert total.error_rate == pytest.approx(3 / 23)
    # Time to first token: every reply that had one (19 demo ones, 3 gpt-x ones).
    ttfts = sorted([n * 100 for n in range(1, 20)] + [300, 500, 900])
    assert total.ttft == usage.Latency(p50=ttfts[10], p95=ttfts[20])
    # Duration: completed replies only.
    durations = sorted([n * 1000 for n in range(1, 20) if n not in (4, 9, 13)] + [3000, 5000, 9000])
    assert len(durations) == 19
    assert total.duration == usage.Latency(p50=durations[9], p95=durations[18])
    assert dashboard.total.requests_per_minute == pytest.approx(24 / 60)
    spend = dashboard.total.spend
    assert spend.calls == 18
    assert spend.cost == Decimal("0.010000") * 16 + Decimal("0.700000")
    assert (spend.input_tokens, spend.output_tokens) == (16 * 100 + 1050, 16 * 20 + 410)


def test_breakdown_by_model_follows_failover(seeded) -> None:
    dashboard = usage.usage_dashboard(period=usage.PERIODS["hour"], now=NOW)
    lines = {line.model: line for line in dashboard.per_model}
    # Most requests first; between equals, most spent first.
    assert [line.model for line in dashboard.per_model] == ["demo", "gpt-x", "demo-2"]
    demo = lines["demo"].requests
    assert (demo.requests, demo.failed, demo.cancelled, demo.in_flight) == (20, 2, 1, 1)
    # 19 values 100…1900: p50 is the 10th, p95 the 19th.
    assert demo.ttft == usage.Latency(p50=1000, p95=1900)
    assert lines["demo"].spend.cost == Decimal("0.160000")
    failover = lines["demo-2"].requests
    assert (failover.requests, failover.failed, failover.error_rate) == (2, 1, 0.5)
    assert failover.ttft == usage.Latency(p50=900, p95=900)
    assert failover.duration == usage.Latency(p50=9000, p95=9000)
    assert lines["demo-2"].spend == usage.Spend(
        calls=1, input_tokens=50, output_tokens=10, cost=Decimal("0.200000")
    )
    gpt = lines["gpt-x"].requests
    assert (gpt.requests, gpt.failed, gpt.error_rate) == (2, 0, 0.0)
    assert gpt.duration == usage.Latency(p50=3000, p95=5000)
    assert lines["gpt-x"].spend.cost == Decimal("0.500000")


def test_periods_cover_their_span_in_buckets(owner) -> None:
    conversation = conversation_of(owner)
    for age in (dt.timedelta(minutes=30), dt.timedelta(hours=5), dt.timedelta(days=3),
                dt.timedelta(days=10)):  # fmt: skip
        reply(conversation, when=NOW - age, ttft=100, duration=1000)
    expected = {"hour": (1, 60, 60), "day": (2, 24, 1440), "week": (3, 168, 10080)}
    for key, (requests, buckets, minutes) in expected.items():
        dashboard = usage.usage_dashboard(period=usage.PERIODS[key], now=NOW)
        assert dashboard.total.requests.requests == requests, key
        assert len(dashboard.buckets) == buckets, key
        assert dashboard.until - dashboard.since == dt.timedelta(minutes=minutes)
        assert dashboard.since <= NOW < dashboard.until
        assert sum(b.requests.requests for b in dashboard.buckets) == requests
    hour = usage.usage_dashboard(period=usage.PERIODS["hour"], now=NOW)
    assert hour.until == dt.datetime(2026, 3, 10, 12, 31, tzinfo=UTC)
    # NOW - 30 min = 12:00:15, in the bucket that starts at 12:00, the 30th of 60.
    busy = [b for b in hour.buckets if b.requests.requests]
    assert [b.start for b in busy] == [dt.datetime(2026, 3, 10, 12, 0, tzinfo=UTC)]
    assert hour.buckets.index(busy[0]) == 29
    assert busy[0].requests.ttft == usage.Latency(p50=100, p95=100)


def test_buckets_carry_requests_latency_tokens_and_spend(seeded) -> None:
    dashboard = usage.usage_dashboard(period=usage.PERIODS["day"], now=NOW)
    busy = [b for b in dashboard.buckets if b.requests.requests or b.spend.calls]
    # NOW - 1…20 min (12:10:15 … 12:29:15) are all in the 12:00 hour; the old one at 09:30.
    assert [b.start.hour for b in busy] == [9, 12]
    assert busy[0].spend.cost == Decimal("9.000000")  # three hours back: 09:30
    assert sum(b.requests.requests for b in busy[1:]) == 24
    assert busy[1].spend.cost == Decimal("0.860000")
    assert sum((b.spend.cost for b in busy), start=Decimal(0)) == dashboard.total.spend.cost
    assert busy[1].requests.ttft == usage.Latency(p50=900, p95=1800)


def test_the_period_is_found_by_creation_time_whatever_the_ids(owner) -> None:
    """No assumption that ids grow with `created_at` (imports, clock steps, restored rows)."""
    conversation = conversation_of(owner)
    # Created in id order newest first: the later the id, the older the reply.
    inside = reply(conversation, when=NOW - dt.timedelta(minutes=2), ttft=200, duration=2000)
    before = reply(conversation, when=NOW - dt.timedelta(hours=2), ttft=9_000, duration=9_000)
    after = reply(conversation, when=NOW + dt.timedelta(hours=2), ttft=9_000, duration=9_000)
    early = reply(conversation, when=NOW - dt.timedelta(minutes=59), ttft=400, duration=4000,
                  status=Message.Status.FAILED, error_code="timeout")  # fmt: skip
    assert before.pk > inside.pk and early.pk > after.pk
    rows = usage.replies(since=NOW - dt.timedelta(hours=1), until=NOW)
    assert set(rows) == {inside, early}
    dashboard = usage.usage_dashboard(period=usage.PERIODS["hour"], now=NOW)
    assert dashboard.total.requests.requests == 2
    assert dashboard.total.requests.ttft == usage.Latency(p50=200, p95=400)
    assert [f.pk for f in dashboard.failed] == [early.pk]


def test_ledger_entries_in_another_currency_add_no_cost(owner) -> None:
    message = reply(conversation_of(owner), when=NOW - dt.timedelta(minutes=3))
    charge(message, when=NOW - dt.timedelta(minutes=3), cost="1.000000")
    charge(message, when=NOW - dt.timedelta(minutes=2), cost="5.000000", currency="EUR")
    spend = usage.usage_dashboard(period=usage.PERIODS["hour"], now=NOW).total.spend
    assert spend.cost == Decimal("1.000000")
    assert spend.calls == 2 and spend.input_tokens == 200


def test_latest_failed_replies_newest_first_with_their_codes(owner) -> None:
    conversation = conversation_of(owner)
    for n in range(25):
        reply(
            conversation,
            when=NOW - dt.timedelta(minutes=50 - n),
            status=Message.Status.FAILED,
            error_code=f"code_{n}" if n else "",
            model="gpt-x",
            answered_by="demo" if n == 24 else "",
            request_id=f"req-{n}",
        )
    reply(conversation, when=NOW - dt.timedelta(minutes=1))  # completed: not listed
    failed = usage.usage_dashboard(period=usage.PERIODS["hour"], now=NOW).failed
    assert len(failed) == usage.FAILED_SHOWN == 20
    assert [f.request_id for f in failed] == [f"req-{n}" for n in range(24, 4, -1)]
    assert failed[0].model == "demo" and failed[1].model == "gpt-x"
    assert failed[0].error_code == "code_24"


def test_page_shows_totals_charts_models_and_failures(compliance_officer, owner) -> None:
    now = timezone.now()
    conversation = conversation_of(owner)
    ok = reply(conversation, when=now - dt.timedelta(minutes=20), ttft=250, duration=1500)
    charge(ok, when=now - dt.timedelta(minutes=20), cost="0.123400", input_tokens=1000)
    reply(conversation, when=now - dt.timedelta(minutes=10), status=Message.Status.FAILED,
          error_code="content_blocked", request_id="req-page-1")  # fmt: skip
    response = client_for(compliance_officer).get(DASHBOARD + "?period=hour")
    html = response.content.decode()
    assert response.status_code == 200
    assert response.context["dashboard"].period.key == "hour"
    assert re.search(r'id="usage-requests">2<', html)
    assert re.search(r'id="usage-error-rate">50.0 %<', html)
    assert re.search(r'id="usage-ttft">250 ms / 250 ms<', html)
    assert re.search(r'id="usage-spend">0.1234 USD<', html)
    drawn = svg_charts(html)
    assert set(drawn) == {"requests", "ttft", "duration", "tokens", "spend"}
    assert drawn["requests"].count('class="usage-bar"') == 2  # one answered, one failed
    assert 'fill="#ba2121"' in drawn["requests"]
    assert drawn["ttft"].count('class="usage-dot"') == 2  # p50 and p95 of one bucket
    assert "0.1234 USD" in drawn["spend"]
    assert '<tr data-model="demo">' in html
    assert "content_blocked" in html
    # The request leads to its audit events; compliance officers also find the message.
    assert "/admin/audit/auditevent/?q=req-page-1" in html
    assert "/admin/conversations/message/?q=" in html
    # No inline style or script: the page keeps to the Content Security Policy.
    assert "style=" not in html and "<script>" not in html


def test_administrators_get_no_message_links(administrator, owner) -> None:
    reply(conversation_of(owner), when=timezone.now() - dt.timedelta(minutes=2),
          status=Message.Status.FAILED, error_code="internal", request_id="req-admin")  # fmt: skip
    html = client_for(administrator).get(DASHBOARD + "?period=hour").content.decode()
    assert "internal" in html and "/admin/audit/auditevent/?q=req-admin" in html
    assert "/admin/conversations/message/" not in html


def test_empty_periods_render(compliance_officer) -> None:
    client = client_for(compliance_officer)
    for key in ("hour", "day", "week"):
        response = client.get(f"{DASHBOARD}?period={key}")
        html = response.content.decode()
        assert response.status_code == 200
        assert "No requests in this period yet." in html
        assert svg_charts(html) == {}
        assert "No reply failed in this period." in html
        assert re.search(r'id="usage-error-rate">—<', html)


def test_unknown_period_shows_the_last_day(compliance_officer) -> None:
    response = client_for(compliance_officer).get(DASHBOARD + "?period=year")
    assert response.status_code == 200
    assert response.context["dashboard"].period.key == usage.DEFAULT_PERIOD == "day"


# --- Bounded work -----------------------------------------------------------------------------


def seed_bulk(owner: Any, count: int) -> None:
    """`count` replies (one in ten failed) over the last week, half with a ledger entry."""
    conversation = conversation_of(owner)
    now = timezone.now()
    statuses = [Message.Status.COMPLETE] * 9 + [Message.Status.FAILED]
    Message.objects.bulk_create(
        Message(
            conversation=conversation,
            role=Message.Role.ASSISTANT,
            status=statuses[n % 10],
            model=("demo", "gpt-x", "gpt-y")[n % 3],
            time_to_first_token_ms=100 + n % 700,
            duration_ms=1000 + n % 5000,
            error_code="rate_limited" if n % 10 == 9 else "",
        )
        for n in range(count)
    )
    messages = list(Message.objects.filter(conversation=conversation).values_list("pk", flat=True))
    for n in range(0, len(messages), 50):  # spread over the week, 50 replies at a time
        age = dt.timedelta(minutes=(n * 97) % (7 * 24 * 60))
        Message.objects.filter(pk__in=messages[n : n + 50]).update(created_at=now - age)
    replies = list(Message.objects.filter(pk__in=messages[::2]).select_related("conversation"))
    CostEntry.objects.bulk_create(
        CostEntry(
            idempotency_key=f"bulk:{next(_keys)}",
            created_at=message.created_at,
            user=owner,
            conversation=conversation,
            message=message,
            call_index=0,
            model=message.model,
            provider="demo",
            input_tokens=100,
            output_tokens=20,
            cost=Decimal("0.001000"),
            currency="USD",
            outcome="complete",
        )
        for message in replies
    )


@pytest.mark.parametrize("period", ["hour", "day", "week"])
def test_query_count_does_not_grow_with_the_data(period, compliance_officer, owner) -> None:
    client = client_for(compliance_officer)
    url = f"{DASHBOARD}?period={period}"
    client.get(url)  # warm caches (content types, session)
    seed_bulk(owner, 10)
    with CaptureQueriesContext(connection) as small:
        assert client.get(url).status_code == 200
    seed_bulk(owner, 990)
    with CaptureQueriesContext(connection) as large:
        response = client.get(url)
    assert response.status_code == 200
    if period == "week":
        assert response.context["dashboard"].total.requests.requests == 1000
        assert response.context["dashboard"].total.spend.calls == 500
    assert len(large) == len(small) <= 20
    # Every query on messages or the ledger aggregates or is bounded, none reads all rows.
    for query in large.captured_queries:
        sql = query["sql"].upper()
        if '"CONVERSATIONS_MESSAGE"' in sql or '"COSTS_COSTENTRY"' in sql:
            assert "COUNT(" in sql or "SUM(" in sql or "LIMIT" in sql, sql


# --- Percentiles ------------------------------------------------------------------------------


def python_nearest_rank(values: list[int], percent: int) -> int:
    ordered = sorted(values)
    return ordered[usage.nearest_rank(percent, len(ordered)) - 1]


def test_nearest_rank_in_integer_arithmetic() -> None:
    assert [usage.nearest_rank(95, n) for n in (1, 2, 19, 20, 21, 60, 100)] == [
        1, 2, 19, 19, 20, 57, 95,
    ]  # fmt: skip
    assert [usage.nearest_rank(50, n) for n in (1, 2, 3, 4)] == [1, 1, 2, 2]


def test_percentiles_equal_the_definition_on_random_samples(owner) -> None:
    """Whatever the database's method (window functions here), nearest-rank percentiles."""
    conversation = conversation_of(owner)
    rng = random.Random(12)
    sizes = {"a": 1, "b": 2, "c": 19, "d": 20, "e": 21, "f": 60, "g": 137}
    values: dict[str, list[int]] = {}
    for model, size in sizes.items():
        values[model] = [rng.randrange(0, 5000) for _ in range(size)]
        for value in values[model]:
            reply(conversation, when=NOW - dt.timedelta(minutes=5), model=model, ttft=value)
    stats = usage.request_stats(
        usage.replies(since=NOW - dt.timedelta(hours=1), until=NOW), group=usage.model_key()
    )
    for model, sample in values.items():
        assert stats[model].ttft == usage.Latency(
            p50=python_nearest_rank(sample, 50), p95=python_nearest_rank(sample, 95)
        ), model


# --- Charts -----------------------------------------------------------------------------------


def test_axis_tops_are_round_numbers() -> None:
    assert [charts.nice_ceiling(v) for v in (0, 0.3, 1, 1.2, 2.2, 4, 7, 45, 1001)] == [
        1, 0.5, 1, 2, 2.5, 5, 10, 50, 2000,
    ]  # fmt: skip


def test_bar_heights_are_proportional_and_stacked() -> None:
    starts = [NOW + dt.timedelta(hours=i) for i in range(4)]
    chart = charts.bar_chart(
        key="k", title="t", description="d", starts=starts, bucket=dt.timedelta(hours=1),
        series=[charts.Series("a", charts.BLUE, [1, 0, 4, None]),
                charts.Series("b", charts.RED, [1, 0, 1, None])],
    )  # fmt: skip
    assert chart.has_data and len(chart.rects) == 4
    plot = charts.PLOT_BOTTOM - charts.PLOT_TOP
    heights = [float(r.height) for r in chart.rects]
    assert heights == pytest.approx([plot / 5, plot / 5, plot * 4 / 5, plot / 5], abs=0.01)
    # The second series sits on the first.
    assert float(chart.rects[1].y) + float(chart.rects[1].height) == pytest.approx(
        float(chart.rects[0].y), abs=0.01
    )
    assert [g.label for g in chart.gridlines] == ["0", "2.5", "5"]


def test_lines_break_where_nothing_was_measured() -> None:
    starts = [NOW + dt.timedelta(minutes=i) for i in range(6)]
    chart = charts.line_chart(
        key="k", title="t", description="d", starts=starts, bucket=dt.timedelta(minutes=1),
        series=[charts.Series("p50", charts.BLUE, [10, 20, None, 30, None, None])],
    )  # fmt: skip
    assert len(chart.lines) == 1 and len(chart.lines[0].points.split()) == 2
    assert len(chart.dots) == 1
    empty = charts.line_chart(
        key="k", title="t", description="d", starts=starts, bucket=dt.timedelta(minutes=1),
        series=[charts.Series("p50", charts.BLUE, [None] * 6)],
    )  # fmt: skip
    assert not empty.has_data and not empty.lines and not empty.dots
