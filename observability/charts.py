"""Server-rendered SVG charts over time buckets: the geometry, pre-formatted for a template.

The template (`admin/observability/chart.html`) draws what is computed here as inline SVG,
coloured with SVG presentation attributes: no script, no inline style, nothing the strict
Content Security Policy refuses. Values are floats for geometry only; the numbers a person
reads are formatted by the caller.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from django.utils import timezone

WIDTH, HEIGHT = 560, 210
PLOT_LEFT, PLOT_RIGHT, PLOT_TOP, PLOT_BOTTOM = 58, 550, 28, 182

# Colours that stay apart for colour-blind readers (blue / orange / red), also in dark mode.
BLUE, ORANGE, RED, LIGHT_BLUE = "#417690", "#e69f00", "#ba2121", "#79aec8"


@dataclass(frozen=True)
class Series:
    name: str
    colour: str
    values: Sequence[float | None]  # one per bucket; None: nothing measured
    labels: Sequence[str] = ()  # one per bucket, shown on hover


@dataclass(frozen=True)
class Rect:
    x: str
    y: str
    width: str
    height: str
    colour: str
    title: str


@dataclass(frozen=True)
class Polyline:
    points: str
    colour: str


@dataclass(frozen=True)
class Dot:
    x: str
    y: str
    colour: str
    title: str


@dataclass(frozen=True)
class Gridline:
    y: str
    label: str


@dataclass(frozen=True)
class Tick:
    x: str
    label: str


@dataclass(frozen=True)
class LegendItem:
    x: str
    text_x: str
    colour: str
    name: str


@dataclass(frozen=True)
class Chart:
    key: str  # unique on the page: the SVG's id and its title's
    title: str
    description: str
    has_data: bool
    width: int = WIDTH
    height: int = HEIGHT
    plot_left: int = PLOT_LEFT
    plot_right: int = PLOT_RIGHT
    plot_top: int = PLOT_TOP
    plot_bottom: int = PLOT_BOTTOM
    tick_y: int = HEIGHT - 10
    gridlines: list[Gridline] = field(default_factory=list)
    ticks: list[Tick] = field(default_factory=list)
    rects: list[Rect] = field(default_factory=list)
    lines: list[Polyline] = field(default_factory=list)
    dots: list[Dot] = field(default_factory=list)
    legend: list[LegendItem] = field(default_factory=list)


def _num(value: float) -> str:
    return f"{value:.2f}"


def nice_ceiling(value: float) -> float:
    """The smallest 1, 2, 2.5 or 5 × 10ⁿ at least `value` (1 for nothing): the axis's top."""
    if value <= 0 or not math.isfinite(value):
        return 1.0
    power = 10.0 ** math.floor(math.log10(value))
    for step in (1.0, 2.0, 2.5, 5.0, 10.0):
        if value <= step * power * (1 + 1e-9):
            return step * power
    return 10 * power


def compact(value: float) -> str:
    """1234 → "1.2k", 2500000 → "2.5M", 0.5 → "0.5"."""
    for threshold, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= threshold:
            return f"{value / threshold:.3g}{suffix}"
    return f"{value:.3g}"


def milliseconds(value: float) -> str:
    return f"{value / 1000:.3g} s" if value >= 1000 else f"{value:.0f} ms"


def time_ticks(starts: Sequence[dt.datetime], bucket: dt.timedelta) -> list[tuple[int, str]]:
    """(bucket index, label) for the buckets to label, in the current time zone."""
    ticks = []
    for index, start in enumerate(starts):
        local = timezone.localtime(start)
        if bucket < dt.timedelta(hours=1):
            if local.minute % 10 == 0:
                ticks.append((index, local.strftime("%H:%M")))
        elif len(starts) <= 48:
            if local.hour % 4 == 0 and local.minute == 0:
                ticks.append((index, local.strftime("%H:%M")))
        elif local.hour == 0 and local.minute == 0:
            ticks.append((index, local.strftime("%a %d")))
    return ticks


def _frame(
    *,
    key: str,
    title: str,
    description: str,
    starts: Sequence[dt.datetime],
    bucket: dt.timedelta,
    series: Sequence[Series],
    top: float,
    y_format: Callable[[float], str],
) -> Chart:
    plot_height = PLOT_BOTTOM - PLOT_TOP
    slot = (PLOT_RIGHT - PLOT_LEFT) / max(len(starts), 1)
    gridlines = [
        Gridline(y=_num(PLOT_BOTTOM - plot_height * share), label=y_format(top * share))
        for share in (0.0, 0.5, 1.0)
    ]
    ticks = [
        Tick(x=_num(PLOT_LEFT + slot * index), label=label)
        for index, label in time_ticks(starts, bucket)
    ]
    legend, x = [], float(PLOT_LEFT)
    for item in series:
        legend.append(
            LegendItem(x=_num(x), text_x=_num(x + 14), colour=item.colour, name=item.name)
        )
        x += 24 + 7 * len(item.name)
    has_data = any(value for item in series for value in item.values)
    return Chart(
        key=key,
        title=title,
        description=description,
        has_data=has_data,
        gridlines=gridlines,
        ticks=ticks,
        legend=legend,
    )


def bar_chart(
    *,
    key: str,
    title: str,
    description: str,
    starts: Sequence[dt.datetime],
    bucket: dt.timedelta,
    series: Sequence[Series],
    y_format: Callable[[float], str] = compact,
) -> Chart:
    """Bars per bucket, the series stacked bottom up; the tallest stack sets the scale."""
    totals = [sum(item.values[i] or 0 for item in series) for i in range(len(starts))]
    top = nice_ceiling(max(totals, default=0))
    chart = _frame(
        key=key, title=title, description=description, starts=starts, bucket=bucket,
        series=series, top=top, y_format=y_format,
    )  # fmt: skip
    slot = (PLOT_RIGHT - PLOT_LEFT) / max(len(starts), 1)
    width = max(slot * 0.8, 1.0)
    scale = (PLOT_BOTTOM - PLOT_TOP) / top
    for index in range(len(starts)):
        base = float(PLOT_BOTTOM)
        for item in series:
            value = item.values[index] or 0
            if value <= 0:
                continue
            height = max(value * scale, 0.5)
            base -= height
            label = item.labels[index] if item.labels else y_format(value)
            chart.rects.append(
                Rect(
                    x=_num(PLOT_LEFT + slot * index + (slot - width) / 2),
                    y=_num(base),
                    width=_num(width),
                    height=_num(height),
                    colour=item.colour,
                    title=label,
                )
            )
    return chart


def line_chart(
    *,
    key: str,
    title: str,
    description: str,
    starts: Sequence[dt.datetime],
    bucket: dt.timedelta,
    series: Sequence[Series],
    y_format: Callable[[float], str] = compact,
) -> Chart:
    """One line per series through the buckets' centres; a bucket with no value breaks the
    line, and a value with no neighbour is drawn as a dot."""
    top = nice_ceiling(max((v or 0 for item in series for v in item.values), default=0))
    chart = _frame(
        key=key, title=title, description=description, starts=starts, bucket=bucket,
        series=series, top=top, y_format=y_format,
    )  # fmt: skip
    slot = (PLOT_RIGHT - PLOT_LEFT) / max(len(starts), 1)
    scale = (PLOT_BOTTOM - PLOT_TOP) / top
    for item in series:
        run: list[tuple[str, str, str]] = []
        for index, value in enumerate([*item.values, None]):
            if value is not None:
                label = item.labels[index] if item.labels else y_format(value)
                run.append(
                    (
                        _num(PLOT_LEFT + slot * (index + 0.5)),
                        _num(PLOT_BOTTOM - value * scale),
                        label,
                    )
                )
                continue
            if len(run) == 1:
                x, y, label = run[0]
                chart.dots.append(Dot(x=x, y=y, colour=item.colour, title=label))
            elif run:
                points = " ".join(f"{x},{y}" for x, y, _ in run)
                chart.lines.append(Polyline(points=points, colour=item.colour))
            run = []
    return chart
