"""The usage dashboard in the console (docs/operations.md, "The usage dashboard").

Requests per minute, errors, time to first token and duration, tokens and spend, over the
last hour, day or week, in total and per model, as server-rendered SVG charts and tables,
with the latest failed replies and their error codes. Routed by `audit.console.ConsoleSite`,
which also lists it on the console's index and sidebar.

Who may open it: whoever reads the cost ledger (`costs.view_costentry`: administrators and
compliance officers). It shows no message text, only models, counts, timings and codes.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django.core.exceptions import PermissionDenied
from django.http import HttpRequest
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone

from costs.services import format_amount
from observability import charts, usage

PERMISSION = "costs.view_costentry"


def can_view_usage(request: HttpRequest) -> bool:
    return bool(request.user.is_active and request.user.has_perm(PERMISSION))


def console_app_entry(request: HttpRequest) -> dict[str, Any] | None:
    """The dashboard as an entry of the console's app list (index page and sidebar)."""
    if not can_view_usage(request):
        return None
    url = reverse("admin:usage_dashboard")
    return {
        "name": "Observability",
        "app_label": "observability",
        "app_url": url,
        "has_module_perms": True,
        "models": [
            {
                "name": "Usage dashboard",
                "object_name": "UsageDashboard",
                "admin_url": url,
                "add_url": None,
                "view_only": True,
                "perms": {"view": True},
            }
        ],
    }


# --- Formatting -------------------------------------------------------------------------------


def _ms(value: int | None) -> str:
    return "—" if value is None else charts.milliseconds(value)


def _latency(latency: usage.Latency) -> str:
    return f"{_ms(latency.p50)} / {_ms(latency.p95)}"


def _percent(fraction: float | None) -> str:
    return "—" if fraction is None else f"{fraction * 100:.1f} %"


def _rate(per_minute: float) -> str:
    """Two decimals, more for a trickle (0.0041), none from ten a minute."""
    if per_minute >= 10:
        return f"{per_minute:,.0f}"
    if 0 < per_minute < 0.01:
        return f"{per_minute:.2g}"
    return f"{per_minute:.2f}"


@dataclass(frozen=True)
class Line:
    """One row of the per-model table (or the totals), formatted."""

    model: str
    requests: int
    per_minute: str
    failed: int
    cancelled: int
    in_flight: int
    error_rate: str
    ttft: str
    duration: str
    tokens: int
    input_tokens: int
    output_tokens: int
    cost: str


def _line(model: usage.ModelUsage) -> Line:
    r, s = model.requests, model.spend
    return Line(
        model=model.model,
        requests=r.requests,
        per_minute=_rate(model.requests_per_minute),
        failed=r.failed,
        cancelled=r.cancelled,
        in_flight=r.in_flight,
        error_rate=_percent(r.error_rate),
        ttft=_latency(r.ttft),
        duration=_latency(r.duration),
        tokens=s.tokens,
        input_tokens=s.input_tokens,
        output_tokens=s.output_tokens,
        cost=format_amount(s.cost),
    )


# --- Charts -----------------------------------------------------------------------------------


def dashboard_charts(dashboard: usage.UsageDashboard) -> list[charts.Chart]:
    """Requests per minute (failed ones in red), latency p50/p95, tokens and spend."""
    period = dashboard.period
    buckets = dashboard.buckets
    starts = [b.start for b in buckets]
    minutes = period.bucket.total_seconds() / 60
    when = [
        timezone.localtime(s).strftime("%a %H:%M" if period.key == "week" else "%H:%M")
        for s in starts
    ]
    per = "minute" if minutes == 1 else f"{minutes:.0f} minutes"
    common: dict[str, Any] = {"starts": starts, "bucket": period.bucket}
    currency = dashboard.currency

    def ms_labels(values: list[int | None], what: str) -> list[str]:
        return [f"{w}: {what} {_ms(v)}" for w, v in zip(when, values, strict=True)]

    ttft50 = [b.requests.ttft.p50 for b in buckets]
    ttft95 = [b.requests.ttft.p95 for b in buckets]
    dur50 = [b.requests.duration.p50 for b in buckets]
    dur95 = [b.requests.duration.p95 for b in buckets]
    return [
        charts.bar_chart(
            key="requests",
            title="Requests per minute",
            description=f"Replies asked for, per minute, averaged over each {per}; failed "
            "ones in red.",
            series=[
                charts.Series(
                    "answered",
                    charts.BLUE,
                    [(b.requests.requests - b.requests.failed) / minutes for b in buckets],
                    [
                        f"{w}: {b.requests.requests} requests "
                        f"({_rate(b.requests.requests / minutes)}/min)"
                        for w, b in zip(when, buckets, strict=True)
                    ],
                ),
                charts.Series(
                    "failed",
                    charts.RED,
                    [b.requests.failed / minutes for b in buckets],
                    [
                        f"{w}: {b.requests.failed} failed ({_percent(b.requests.error_rate)})"
                        for w, b in zip(when, buckets, strict=True)
                    ],
                ),
            ],
            **common,
        ),
        charts.line_chart(
            key="ttft",
            title="Time to first token",
            description=f"p50 and p95 per {per}, from the moment the message was accepted.",
            series=[
                charts.Series(
                    "p50", charts.BLUE, [*ttft50], ms_labels(ttft50, "time to first token p50")
                ),
                charts.Series(
                    "p95", charts.ORANGE, [*ttft95], ms_labels(ttft95, "time to first token p95")
                ),
            ],
            y_format=charts.milliseconds,
            **common,
        ),
        charts.line_chart(
            key="duration",
            title="Duration of completed replies",
            description=f"p50 and p95 per {per}, from acceptance to the last token.",
            series=[
                charts.Series("p50", charts.BLUE, [*dur50], ms_labels(dur50, "duration p50")),
                charts.Series("p95", charts.ORANGE, [*dur95], ms_labels(dur95, "duration p95")),
            ],
            y_format=charts.milliseconds,
            **common,
        ),
        charts.bar_chart(
            key="tokens",
            title="Tokens",
            description=f"Input and output tokens per {per}, from the cost ledger.",
            series=[
                charts.Series(
                    "input",
                    charts.LIGHT_BLUE,
                    [b.spend.input_tokens for b in buckets],
                    [
                        f"{w}: {b.spend.input_tokens:,} input tokens"
                        for w, b in zip(when, buckets, strict=True)
                    ],
                ),
                charts.Series(
                    "output",
                    charts.BLUE,
                    [b.spend.output_tokens for b in buckets],
                    [
                        f"{w}: {b.spend.output_tokens:,} output tokens"
                        for w, b in zip(when, buckets, strict=True)
                    ],
                ),
            ],
            **common,
        ),
        charts.bar_chart(
            key="spend",
            title=f"Spend ({currency})",
            description=f"Cost per {per} in {currency}, from the cost ledger.",
            series=[
                charts.Series(
                    "spend",
                    charts.BLUE,
                    [float(b.spend.cost) for b in buckets],
                    [
                        f"{w}: {format_amount(b.spend.cost)} {currency}"
                        for w, b in zip(when, buckets, strict=True)
                    ],
                )
            ],
            y_format=lambda value: format_amount(Decimal(str(round(value, 6)))),
            **common,
        ),
    ]


# --- The view ---------------------------------------------------------------------------------


def usage_dashboard_view(request: HttpRequest, *, site: Any) -> TemplateResponse:
    """The dashboard for `?period=hour|day|week` (an unknown period shows the default)."""
    if not can_view_usage(request):
        raise PermissionDenied
    period = usage.PERIODS.get(str(request.GET.get("period", "")), None)
    period = period or usage.PERIODS[usage.DEFAULT_PERIOD]
    dashboard = usage.usage_dashboard(period=period)
    user = request.user
    return TemplateResponse(
        request,
        "admin/observability/usage_dashboard.html",
        {
            **site.each_context(request),
            "title": "Usage dashboard",
            "dashboard": dashboard,
            "periods": list(usage.PERIODS.values()),
            "total": _line(dashboard.total),
            "lines": [_line(model) for model in dashboard.per_model],
            "charts": dashboard_charts(dashboard),
            "can_search_audit": user.has_perm("audit.view_auditevent"),
            "can_find_messages": user.has_perm("conversations.view_message"),
            "time_zone": timezone.get_current_timezone_name(),
        },
    )
