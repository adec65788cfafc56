"""Streaming export of audit events as CSV or JSON Lines, in constant memory.

Rows are read in pages by keyset (`sequence > last`), not with OFFSET or a long-lived
cursor, so memory and per-page cost stay flat for millions of rows and nothing holds a
database cursor across the network writes. Every field an event's hash covers is exported
as stored, plus the hash itself, so an export can be checked against the chain; sealed
personal fields (audit/personal.py) are stored as ciphertext, so `revealed` adds them opened
— or "[erased]" — read through audit.personal like the console.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

from asgiref.sync import sync_to_async
from django.db.models import QuerySet

from audit import chain, personal
from audit.models import AuditEvent

PAGE_SIZE = 2000
# Every field the hash covers, in the chain's order, then the hash itself.
STORED = (*chain.HASHED_FIELDS, "hash")
# Then the personal fields as a reader sees them: {"actor_email", "ip", "details"}.
COLUMNS = (*STORED, "revealed")
FORMATS = {"csv": "text/csv; charset=utf-8", "jsonl": "application/x-ndjson; charset=utf-8"}
# Spreadsheet programs run cells that start with these as formulas (CSV injection).
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _pages(queryset: QuerySet[AuditEvent]) -> Iterator[list[tuple[Any, ...]]]:
    rows = queryset.order_by("sequence").values_list(*STORED)
    last = 0
    while True:
        page = list(rows.filter(sequence__gt=last)[:PAGE_SIZE])
        if not page:
            return
        yield page
        last = page[-1][0]


def _rows(page: list[tuple[Any, ...]]) -> list[dict[str, Any]]:
    rows = [dict(zip(STORED, values, strict=True)) for values in page]
    for row, shown in zip(rows, personal.reveal_rows(rows), strict=True):
        row["occurred_at"] = chain.timestamp(row["occurred_at"])
        row["revealed"] = {"actor_email": shown.actor_email, "ip": shown.ip}
        if shown.details != row["details"]:
            row["revealed"]["details"] = shown.details
    return rows


def _csv_cell(value: Any) -> str:
    if value is None:
        return ""
    text = json.dumps(value, sort_keys=True) if isinstance(value, dict) else str(value)
    if text.startswith(_FORMULA_START):
        return "'" + text
    return text


def export_chunks(queryset: QuerySet[AuditEvent], fmt: str) -> Iterator[bytes]:
    """The export as a series of byte chunks, one per page of events."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}")
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(COLUMNS)
        yield buffer.getvalue().encode("utf-8")
    for page in _pages(queryset):
        if fmt == "csv":
            buffer = io.StringIO()
            writer = csv.writer(buffer)
            for row in _rows(page):
                writer.writerow([_csv_cell(row[name]) for name in COLUMNS])
            yield buffer.getvalue().encode("utf-8")
        else:
            yield "".join(
                json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n" for row in _rows(page)
            ).encode("utf-8")


async def aexport_chunks(queryset: QuerySet[AuditEvent], fmt: str) -> AsyncIterator[bytes]:
    """The same chunks for an ASGI server, each page read in Django's sync thread.

    Django would otherwise read a synchronous streaming body whole into memory under ASGI.
    """
    chunks = export_chunks(queryset, fmt)
    take = sync_to_async(lambda: next(chunks, None), thread_sensitive=True)
    while True:
        chunk = await take()
        if chunk is None:
            return
        yield chunk
