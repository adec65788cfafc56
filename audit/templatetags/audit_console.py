"""The audit list's date drill-down, built from one MIN/MAX query instead of DISTINCT scans.

Django's date hierarchy lists the years, months or days that have rows with
`SELECT DISTINCT date_trunc(...)` over the whole filtered table: hundreds of milliseconds
at a million events, on every page view. Here the choices are the calendar range between
the first and last matching event (an index lookup at each end); a day in that range with no
event is still offered and simply shows an empty list.
"""

from __future__ import annotations

import datetime
from typing import Any

from django import template
from django.contrib.admin.templatetags.base import InclusionAdminNode
from django.db.models import Max, Min
from django.utils import formats, timezone
from django.utils.text import capfirst

register = template.Library()


def _local(value: datetime.datetime) -> datetime.datetime:
    return timezone.localtime(value) if timezone.is_aware(value) else value


def audit_date_hierarchy(cl: Any) -> dict[str, Any]:
    field = cl.date_hierarchy
    year_field, month_field, day_field = (f"{field}__year", f"{field}__month", f"{field}__day")
    year = cl.params.get(year_field)
    month = cl.params.get(month_field)
    day = cl.params.get(day_field)

    def link(filters: dict[str, Any]) -> str:
        return str(cl.get_query_string(filters, [f"{field}__"]))

    if year and month and day:
        chosen = datetime.date(int(year), int(month), int(day))
        return {
            "show": True,
            "back": {
                "link": link({year_field: year, month_field: month}),
                "title": capfirst(formats.date_format(chosen, "YEAR_MONTH_FORMAT")),
            },
            "choices": [{"title": capfirst(formats.date_format(chosen, "MONTH_DAY_FORMAT"))}],
        }

    span = cl.queryset.aggregate(first=Min(field), last=Max(field))
    if span["first"] is None:
        return {"show": True, "back": None, "choices": []}
    first, last = _local(span["first"]), _local(span["last"])
    if not year and first.year == last.year:
        year = first.year
        if first.month == last.month:
            month = first.month

    if year and month:
        start = first.day if (first.year, first.month) == (int(year), int(month)) else 1
        end = last.day if (last.year, last.month) == (int(year), int(month)) else 31
        days = []
        for number in range(start, end + 1):
            try:
                days.append(datetime.date(int(year), int(month), number))
            except ValueError:  # past the month's end
                break
        return {
            "show": True,
            "back": {"link": link({year_field: year}), "title": str(year)},
            "choices": [
                {
                    "link": link({year_field: year, month_field: month, day_field: d.day}),
                    "title": capfirst(formats.date_format(d, "MONTH_DAY_FORMAT")),
                }
                for d in days
            ],
        }
    if year:
        start = first.month if first.year == int(year) else 1
        end = last.month if last.year == int(year) else 12
        return {
            "show": True,
            "back": {"link": link({}), "title": "All dates"},
            "choices": [
                {
                    "link": link({year_field: year, month_field: number}),
                    "title": capfirst(
                        formats.date_format(
                            datetime.date(int(year), number, 1), "YEAR_MONTH_FORMAT"
                        )
                    ),
                }
                for number in range(start, end + 1)
            ],
        }
    return {
        "show": True,
        "back": None,
        "choices": [
            {"link": link({year_field: str(number)}), "title": str(number)}
            for number in range(first.year, last.year + 1)
        ],
    }


@register.tag(name="audit_date_hierarchy")
def audit_date_hierarchy_tag(parser: Any, token: Any) -> InclusionAdminNode:
    # django-stubs lists a `name` argument that Django 5.2's InclusionAdminNode does not take.
    return InclusionAdminNode(  # type: ignore[call-arg]
        parser,
        token,
        func=audit_date_hierarchy,
        template_name="date_hierarchy.html",
        takes_context=False,
    )
