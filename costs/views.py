"""My usage (/usage/): the signed-in person's own spend, tokens and budgets."""

from __future__ import annotations

import dataclasses
import datetime as dt

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils import timezone
from django.views.decorators.http import require_GET

from costs.reports import costs_zone
from costs.selectors import PersonalUsage, personal_usage
from observability import charts


def _day_ticks(usage: PersonalUsage) -> list[charts.Tick]:
    """A label under every seventh day (and today), centred on its bar."""
    slot = (charts.PLOT_RIGHT - charts.PLOT_LEFT) / max(len(usage.days), 1)
    last = len(usage.days) - 1
    return [
        charts.Tick(x=f"{charts.PLOT_LEFT + slot * (i + 0.5):.2f}", label=day.day.strftime("%d %b"))
        for i, day in enumerate(usage.days)
        if (last - i) % 7 == 0
    ]


def usage_charts(usage: PersonalUsage) -> list[charts.Chart]:
    """Spend and tokens per day, as server-rendered SVG bars (the page's tables are their
    text alternative)."""
    zone = costs_zone()
    starts = [dt.datetime.combine(day.day, dt.time(), tzinfo=zone) for day in usage.days]
    labels = [day.day.isoformat() for day in usage.days]
    spend = charts.bar_chart(
        key="my-spend",
        title=f"Spend per day ({usage.currency})",
        description=f"Your spend per day from {usage.since} to {usage.until}, chat and API "
        "keys stacked. The table below lists the same figures.",
        starts=starts,
        bucket=dt.timedelta(days=1),
        series=[
            charts.Series(
                "Chat",
                charts.BLUE,
                [float(d.chat.cost) for d in usage.days],
                [
                    f"{label}: chat {d.chat.cost_text} {usage.currency}"
                    for label, d in zip(labels, usage.days, strict=True)
                ],
            ),
            charts.Series(
                "API keys",
                charts.ORANGE,
                [float(d.api.cost) for d in usage.days],
                [
                    f"{label}: API keys {d.api.cost_text} {usage.currency}"
                    for label, d in zip(labels, usage.days, strict=True)
                ],
            ),
        ],
    )
    tokens = charts.bar_chart(
        key="my-tokens",
        title="Tokens per day",
        description=f"Input and output tokens per day from {usage.since} to {usage.until}, "
        "stacked. The table below lists the same figures.",
        starts=starts,
        bucket=dt.timedelta(days=1),
        series=[
            charts.Series(
                "Input",
                charts.BLUE,
                [float(d.total.input_tokens) for d in usage.days],
                [
                    f"{label}: {d.total.input_tokens:,} input tokens"
                    for label, d in zip(labels, usage.days, strict=True)
                ],
            ),
            charts.Series(
                "Output",
                charts.ORANGE,
                [float(d.total.output_tokens) for d in usage.days],
                [
                    f"{label}: {d.total.output_tokens:,} output tokens"
                    for label, d in zip(labels, usage.days, strict=True)
                ],
            ),
        ],
    )
    ticks = _day_ticks(usage)
    return [dataclasses.replace(chart, ticks=ticks) for chart in (spend, tokens)]


@require_GET
def my_usage(request: HttpRequest) -> HttpResponse:
    usage = personal_usage(user=request.user, now=timezone.now())
    return render(
        request,
        "costs/my_usage.html",
        {"usage": usage, "charts": usage_charts(usage), "time_zone": str(costs_zone())},
    )
