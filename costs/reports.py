"""Spend reports for the console: filters, aggregate totals, a cost-per-day chart, CSV.

Everything here reads. Totals are computed by the database (SUM and COUNT grouped by day,
person, department or model), so a report costs the same handful of queries whatever the
number of ledger entries: no entry is ever loaded into Python. Days are calendar days in
COSTS_TIME_ZONE, like budget periods.

Only entries in the ledger's currency (COSTS_CURRENCY) are summed; entries in any other
currency (written before the setting changed) are counted and reported, never added up.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import io
import uuid
import zoneinfo
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from asgiref.sync import sync_to_async
from django import forms
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db.models import Count, Q, QuerySet, Sum
from django.db.models.functions import TruncDate
from django.utils import timezone

from accounts.roles import ROLES
from costs.models import MICRO, CostEntry
from costs.services import format_amount
from providers.models import AIModel

# A report spans at most this many days (a year, leap day included), within these years.
MAX_REPORT_DAYS = 366
FIRST_DAY = dt.date(2000, 1, 1)
LAST_DAY = dt.date(2999, 12, 31)
# Each breakdown table on the page shows at most this many rows (every day of the longest
# report fits); the CSV export always has them all.
PAGE_ROWS = 400

BREAKDOWNS = ("day", "user", "department", "model")
CSV_COLUMNS = (
    "breakdown", "key", "label", "cost", "currency", "input_tokens", "output_tokens",
    "tokens", "calls",
)  # fmt: skip
# Spreadsheet programs run cells that start with these as formulas (CSV injection).
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def costs_zone() -> zoneinfo.ZoneInfo:
    return zoneinfo.ZoneInfo(settings.COSTS_TIME_ZONE)


def current_month(*, now: dt.datetime | None = None) -> tuple[dt.date, dt.date]:
    """(first day, last day) of the current month in COSTS_TIME_ZONE."""
    today = (now or timezone.now()).astimezone(costs_zone()).date()
    first = today.replace(day=1)
    last = (first + dt.timedelta(days=32)).replace(day=1) - dt.timedelta(days=1)
    return first, last


# --- Filters ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SpendFilters:
    """What a report covers: days `start` to `end` (both included) in COSTS_TIME_ZONE."""

    start: dt.date
    end: dt.date
    department: Group | None = None
    user: Any = None
    model: str = ""

    @property
    def since(self) -> dt.datetime:
        return dt.datetime.combine(self.start, dt.time(), tzinfo=costs_zone())

    @property
    def until(self) -> dt.datetime:
        """The first moment after the report (exclusive bound)."""
        return dt.datetime.combine(self.end + dt.timedelta(days=1), dt.time(), tzinfo=costs_zone())

    @property
    def days(self) -> int:
        return (self.end - self.start).days + 1


class PersonField(forms.CharField):
    """A person, given by e-mail address, username or public id (the per-person links)."""

    default_error_messages = {
        "unknown": "No person has this e-mail address, username or id.",
    }

    def clean(self, value: Any) -> Any:
        text = super().clean(value)
        if not text:
            return None
        users = get_user_model().objects.all()
        person = None
        with contextlib.suppress(ValueError):
            person = users.filter(public_id=uuid.UUID(text)).first()
        if person is None:
            lookup = {"email__iexact": text} if "@" in text else {"username": text}
            person = users.filter(**lookup).order_by("pk").first()
        if person is None:
            raise forms.ValidationError(self.error_messages["unknown"], code="unknown")
        return person


class SpendFilterForm(forms.Form):
    """The report's filters, read from the query string. Bind it with `spend_filter_form`."""

    start = forms.DateField(
        label="From",
        widget=forms.DateInput(attrs={"type": "date"}, format="%Y-%m-%d"),
        error_messages={"invalid": "Enter the first day as a date (YYYY-MM-DD)."},
    )
    end = forms.DateField(
        label="To (included)",
        widget=forms.DateInput(attrs={"type": "date"}, format="%Y-%m-%d"),
        error_messages={"invalid": "Enter the last day as a date (YYYY-MM-DD)."},
    )
    department = forms.ModelChoiceField(
        queryset=Group.objects.exclude(name__in=ROLES).order_by("name"),
        required=False,
        empty_label="All departments",
        error_messages={"invalid_choice": "Unknown department: pick one from the list."},
    )
    user = PersonField(
        label="Person",
        required=False,
        max_length=254,
        help_text="E-mail address or username.",
    )
    model = forms.CharField(required=False, max_length=100, widget=forms.Select)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        choices = [("", "All models")]
        choices += [
            (key, f"{name} ({key})")
            for key, name in AIModel.objects.order_by("position", "display_name").values_list(
                "key", "display_name"
            )
        ]
        self.catalogue = {key for key, _ in choices if key}
        chosen = str(self.data.get("model", ""))[:100] if self.is_bound else ""
        if chosen and chosen not in self.catalogue:
            choices.append((chosen, chosen))  # a model no longer in the catalogue
        self.fields["model"].widget.choices = choices

    def clean_model(self) -> str:
        key = str(self.cleaned_data.get("model") or "").strip()
        # A model removed from the catalogue may still have ledger entries (index lookup).
        if key and key not in self.catalogue and not CostEntry.objects.filter(model=key).exists():
            raise forms.ValidationError("Unknown model: pick one from the list.")
        return key

    def _day_in_range(self, name: str) -> dt.date:
        day: dt.date = self.cleaned_data[name]
        if not FIRST_DAY <= day <= LAST_DAY:
            raise forms.ValidationError(
                f"Pick a day between {FIRST_DAY.isoformat()} and {LAST_DAY.isoformat()}."
            )
        return day

    def clean_start(self) -> dt.date:
        return self._day_in_range("start")

    def clean_end(self) -> dt.date:
        return self._day_in_range("end")

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        start, end = cleaned.get("start"), cleaned.get("end")
        if start and end:
            if end < start:
                self.add_error("end", "The last day is before the first day.")
            elif (end - start).days + 1 > MAX_REPORT_DAYS:
                self.add_error("end", f"A report covers at most {MAX_REPORT_DAYS} days.")
        return cleaned

    def filters(self) -> SpendFilters:
        """The validated filters. Call only after `is_valid()` returned True."""
        data = self.cleaned_data
        return SpendFilters(
            start=data["start"],
            end=data["end"],
            department=data.get("department"),
            user=data.get("user"),
            model=data.get("model") or "",
        )


def spend_filter_form(*, data: Any, now: dt.datetime | None = None) -> SpendFilterForm:
    """The filter form bound to a query string; a missing date defaults to the current month.

    Without `start`, the report starts on the first day of the month of `end` (of the current
    month without either); without `end`, it ends on the last day of the month it starts in.
    """
    values = {key: str(data.get(key, "")).strip() for key in ("start", "end", "department")}
    values["user"] = str(data.get("user", "")).strip()
    values["model"] = str(data.get("model", "")).strip()
    first, last = current_month(now=now)
    if not values["start"] and not values["end"]:
        values["start"], values["end"] = first.isoformat(), last.isoformat()
    elif not values["start"] or not values["end"]:
        given = "end" if not values["start"] else "start"
        missing = "start" if given == "end" else "end"
        try:
            day = dt.date.fromisoformat(values[given])
        except ValueError:
            day = None
        if day is None or not FIRST_DAY <= day <= LAST_DAY:
            # The form reports the bad date; the other one gets the current month's.
            values[missing] = (first if missing == "start" else last).isoformat()
        else:
            month_first = day.replace(day=1)
            month_last = (month_first + dt.timedelta(days=32)).replace(day=1) - dt.timedelta(1)
            values[missing] = (month_first if missing == "start" else month_last).isoformat()
    return SpendFilterForm(data=values)


# --- Totals -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SpendRow:
    """One line of a breakdown: a day, a person, a department or a model."""

    breakdown: str
    key: str  # the value that filters on this line ("" when there is none)
    label: str
    cost: Decimal
    input_tokens: int
    output_tokens: int
    calls: int

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.output_tokens


@dataclass(frozen=True)
class SpendTotals:
    cost: Decimal
    input_tokens: int
    output_tokens: int
    calls: int
    estimated_calls: int
    unpriced_calls: int
    other_currency_calls: int

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.output_tokens


@dataclass
class SpendReport:
    filters: SpendFilters
    currency: str
    totals: SpendTotals
    per_day: list[SpendRow] = field(default_factory=list)
    per_user: list[SpendRow] = field(default_factory=list)
    per_department: list[SpendRow] = field(default_factory=list)
    per_model: list[SpendRow] = field(default_factory=list)


def _filtered_entries(*, filters: SpendFilters) -> QuerySet[CostEntry]:
    entries = CostEntry.objects.filter(created_at__gte=filters.since, created_at__lt=filters.until)
    if filters.department is not None:
        entries = entries.filter(department=filters.department)
    if filters.user is not None:
        entries = entries.filter(user=filters.user)
    if filters.model:
        entries = entries.filter(model=filters.model)
    return entries.order_by()


def _sums() -> dict[str, Any]:
    return {
        "cost_sum": Sum("cost"),
        "input_sum": Sum("input_tokens"),
        "output_sum": Sum("output_tokens"),
        "calls": Count("id"),
    }


def _amount(value: Any) -> Decimal:
    return Decimal(value or 0).quantize(MICRO)


def spend_totals(*, filters: SpendFilters) -> SpendTotals:
    """The report's grand totals, in one aggregate query."""
    currency = settings.COSTS_CURRENCY
    ours = Q(currency=currency)
    row = _filtered_entries(filters=filters).aggregate(
        cost_sum=Sum("cost", filter=ours),
        input_sum=Sum("input_tokens", filter=ours),
        output_sum=Sum("output_tokens", filter=ours),
        calls=Count("id", filter=ours),
        estimated=Count("id", filter=ours & Q(estimated=True)),
        unpriced=Count("id", filter=ours & Q(priced=False)),
        other_currency=Count("id", filter=~ours),
    )
    return SpendTotals(
        cost=_amount(row["cost_sum"]),
        input_tokens=int(row["input_sum"] or 0),
        output_tokens=int(row["output_sum"] or 0),
        calls=int(row["calls"]),
        estimated_calls=int(row["estimated"]),
        unpriced_calls=int(row["unpriced"]),
        other_currency_calls=int(row["other_currency"]),
    )


def _grouped(*, filters: SpendFilters, breakdown: str) -> QuerySet[Any, dict[str, Any]]:
    """One aggregate query: the filtered entries grouped by `breakdown`."""
    # Any: django-stubs cannot follow annotations passed as **kwargs.
    entries: Any = _filtered_entries(filters=filters).filter(currency=settings.COSTS_CURRENCY)
    if breakdown == "day":
        return (
            entries.annotate(day=TruncDate("created_at", tzinfo=costs_zone()))
            .values("day")
            .annotate(**_sums())
            .order_by("day")
        )
    if breakdown == "user":
        return (
            entries.values("user_id", "user__public_id", "user__username", "user__email")
            .annotate(**_sums())
            .order_by("-cost_sum", "user__username")
        )
    if breakdown == "department":
        return (
            entries.values("department_id", "department__name")
            .annotate(**_sums())
            .order_by("-cost_sum", "department__name")
        )
    if breakdown == "model":
        return entries.values("model").annotate(**_sums()).order_by("-cost_sum", "model")
    raise ValueError(f"unknown breakdown {breakdown!r}")


def _row(breakdown: str, values: dict[str, Any]) -> SpendRow:
    if breakdown == "day":
        key = label = values["day"].isoformat()
    elif breakdown == "user":
        key = str(values["user__public_id"])
        label = values["user__email"] or values["user__username"]
    elif breakdown == "department":
        key = str(values["department_id"] or "")
        label = values["department__name"] or "No department"
    else:
        key = label = values["model"]
    return SpendRow(
        breakdown=breakdown,
        key=key,
        label=label,
        cost=_amount(values["cost_sum"]),
        input_tokens=int(values["input_sum"] or 0),
        output_tokens=int(values["output_sum"] or 0),
        calls=int(values["calls"]),
    )


def spend_rows(*, filters: SpendFilters, breakdown: str) -> Iterator[SpendRow]:
    """Totals per day (in date order), person, department or model (most spent first)."""
    for values in _grouped(filters=filters, breakdown=breakdown).iterator():
        yield _row(breakdown, values)


def spend_report(*, filters: SpendFilters) -> SpendReport:
    """The whole report: grand totals and the four breakdowns (five aggregate queries)."""
    return SpendReport(
        filters=filters,
        currency=settings.COSTS_CURRENCY,
        totals=spend_totals(filters=filters),
        per_day=list(spend_rows(filters=filters, breakdown="day")),
        per_user=list(spend_rows(filters=filters, breakdown="user")),
        per_department=list(spend_rows(filters=filters, breakdown="department")),
        per_model=list(spend_rows(filters=filters, breakdown="model")),
    )


# --- Chart ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChartBar:
    day: dt.date
    cost: Decimal
    x: str
    y: str
    width: str
    height: str


@dataclass(frozen=True)
class ChartTick:
    x: str
    label: str


@dataclass(frozen=True)
class CostChart:
    """Geometry of a bar chart of cost per day, for an inline SVG (numbers pre-formatted)."""

    width: int
    height: int
    plot_left: int
    plot_top: int
    plot_bottom: int
    plot_right: int
    label_x: int  # right edge of the y-axis labels
    max_label_y: int
    tick_y: int  # baseline of the date labels
    max_cost: Decimal
    max_label: str
    bars: list[ChartBar]
    ticks: list[ChartTick]


def _num(value: float) -> str:
    return f"{value:.2f}"


def cost_chart(
    *,
    per_day: Iterable[SpendRow],
    start: dt.date,
    end: dt.date,
    width: int = 800,
    height: int = 240,
) -> CostChart:
    """One bar per day with entries, placed on a time axis from `start` to `end`.

    Days without entries leave a gap. Bar heights are proportional to the day's cost (the
    most expensive day fills the plot); a day with entries but no cost has a zero-height bar.
    """
    left, right, top, bottom = 90, width - 10, 10, height - 30
    days = max((end - start).days + 1, 1)
    slot = (right - left) / days
    bar_width = max(slot * 0.8, 1.0)
    rows = [row for row in per_day if start <= dt.date.fromisoformat(row.key) <= end]
    max_cost = max((row.cost for row in rows), default=Decimal(0))
    plot_height = bottom - top
    bars = []
    for row in rows:
        day = dt.date.fromisoformat(row.key)
        share = float(row.cost / max_cost) if max_cost > 0 else 0.0
        bar_height = plot_height * share
        bars.append(
            ChartBar(
                day=day,
                cost=row.cost,
                x=_num(left + (day - start).days * slot + (slot - bar_width) / 2),
                y=_num(bottom - bar_height),
                width=_num(bar_width),
                height=_num(bar_height),
            )
        )
    step = max(1, -(-days // 8))  # at most about eight date labels
    ticks = [
        ChartTick(
            x=_num(left + (offset + 0.5) * slot),
            label=(start + dt.timedelta(days=offset)).strftime("%m-%d"),
        )
        for offset in range(0, days, step)
    ]
    return CostChart(
        width=width,
        height=height,
        plot_left=left,
        plot_top=top,
        plot_bottom=bottom,
        plot_right=right,
        label_x=left - 6,
        max_label_y=top + 10,
        tick_y=bottom + 18,
        max_cost=max_cost,
        max_label=format_amount(max_cost),
        bars=bars,
        ticks=ticks,
    )


# --- CSV --------------------------------------------------------------------------------------


def csv_cell(value: Any) -> str:
    """A cell as text that spreadsheets show as-is: formulas are neutralised with a quote."""
    if value is None:
        return ""
    text = f"{value:f}" if isinstance(value, Decimal) else str(value)
    return "'" + text if text.startswith(_FORMULA_START) else text


def _csv_line(values: Iterable[Any]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer).writerow([csv_cell(value) for value in values])
    return buffer.getvalue()


def _csv_values(row: SpendRow | SpendTotals, breakdown: str, key: str, label: str) -> list[Any]:
    return [
        breakdown,
        key,
        label,
        row.cost,
        settings.COSTS_CURRENCY,
        row.input_tokens,
        row.output_tokens,
        row.tokens,
        row.calls,
    ]


def spend_csv_chunks(*, filters: SpendFilters) -> Iterator[bytes]:
    """The report as CSV: a header, the total, then every line of each breakdown.

    One chunk per breakdown (each one aggregate query), so the export streams; amounts are
    exact decimal strings and every cell is safe to open in a spreadsheet.
    """
    totals = spend_totals(filters=filters)
    label = f"{filters.start.isoformat()} to {filters.end.isoformat()}"
    yield (_csv_line(CSV_COLUMNS) + _csv_line(_csv_values(totals, "total", "", label))).encode(
        "utf-8"
    )
    for breakdown in BREAKDOWNS:
        yield "".join(
            _csv_line(_csv_values(row, breakdown, row.key, row.label))
            for row in spend_rows(filters=filters, breakdown=breakdown)
        ).encode("utf-8")


async def aspend_csv_chunks(*, filters: SpendFilters) -> AsyncIterator[bytes]:
    """`spend_csv_chunks` for ASGI: each chunk's query runs in the sync thread."""
    chunks = spend_csv_chunks(filters=filters)

    def next_chunk() -> bytes | None:
        return next(chunks, None)

    while True:
        chunk = await sync_to_async(next_chunk, thread_sensitive=True)()
        if chunk is None:
            return
        yield chunk


# --- Budgets in the console -------------------------------------------------------------------
