"""The usage dashboard on PostgreSQL: `percentile_disc` gives the nearest-rank percentiles.

Production computes the dashboard's percentiles with PostgreSQL's ordered-set aggregate; the
embedded default (SQLite) with window functions (observability/usage.py). These tests hold
the PostgreSQL path to the same definition, and to the window path itself, on samples whose
sizes sit on the rank boundaries. Run by `make test-production`.
"""

from __future__ import annotations

import datetime as dt
import random
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from conversations.models import Conversation, Message
from observability import usage

pytestmark = [pytest.mark.production, pytest.mark.django_db]

SIZES = {"a": 1, "b": 2, "c": 3, "d": 19, "e": 20, "f": 21, "g": 40, "h": 60, "i": 99, "j": 100,
         "k": 101, "l": 333}  # fmt: skip


def nearest_rank(values: list[int], percent: int) -> int:
    ordered = sorted(values)
    return ordered[usage.nearest_rank(percent, len(ordered)) - 1]


@pytest.fixture
def samples(owner: Any) -> dict[str, list[int]]:
    """Replies of several models created in the last minutes, with random timings."""
    conversation = Conversation.objects.create(owner=owner, title="Usage", model="demo")
    rng = random.Random(2026)  # the same samples on every run
    values: dict[str, list[int]] = {}
    messages = []
    for model, size in SIZES.items():
        values[model] = [rng.randrange(0, 20_000) for _ in range(size)]
        messages += [
            Message(
                conversation=conversation,
                role=Message.Role.ASSISTANT,
                status=Message.Status.COMPLETE,
                model=model,
                time_to_first_token_ms=value,
                duration_ms=value * 3,
            )
            for value in values[model]
        ]
    # A reply with no measurement is left out, as in SQLite.
    messages.append(
        Message(conversation=conversation, role=Message.Role.ASSISTANT, model="a",
                status=Message.Status.FAILED)
    )  # fmt: skip
    Message.objects.bulk_create(messages)
    return values


def test_percentile_disc_is_the_nearest_rank(samples: dict[str, list[int]]) -> None:
    assert usage.ordered_set_aggregates()
    now = timezone.now()
    rows = usage.replies(since=now - dt.timedelta(hours=1), until=now + dt.timedelta(minutes=1))
    with CaptureQueriesContext(connection) as queries:
        stats = usage.request_stats(rows, group=usage.model_key())
    assert len(queries) == 1  # counts and the four percentiles in one aggregate query
    assert "PERCENTILE_DISC(0.95) WITHIN GROUP" in queries[0]["sql"]
    for model, values in samples.items():
        expected = usage.Latency(p50=nearest_rank(values, 50), p95=nearest_rank(values, 95))
        assert stats[model].ttft == expected, model
        assert stats[model].duration == usage.Latency(
            p50=expected.p50 * 3 if expected.p50 is not None else None,
            p95=expected.p95 * 3 if expected.p95 is not None else None,
        ), model
    assert stats["a"].requests == 2 and stats["a"].failed == 1


def test_the_window_path_agrees_on_postgresql(samples: dict[str, list[int]]) -> None:
    """The SQLite method, run on PostgreSQL, gives the same figures as percentile_disc."""
    now = timezone.now()
    rows = usage.replies(since=now - dt.timedelta(hours=1), until=now + dt.timedelta(minutes=1))
    aggregate = usage.request_stats(rows, group=usage.model_key())
    ranked = usage._ranked_percentiles(
        rows, value="time_to_first_token_ms", group=usage.model_key()
    )
    for model in samples:
        assert aggregate[model].ttft == usage.Latency(ranked[model][50], ranked[model][95])
    total = usage.request_stats(rows, group=None)[""]
    everything = [v for values in samples.values() for v in values]
    assert total.ttft == usage.Latency(nearest_rank(everything, 50), nearest_rank(everything, 95))


def test_the_dashboard_reads_messages_once_on_postgresql(samples: dict[str, list[int]]) -> None:
    with CaptureQueriesContext(connection) as queries:
        dashboard = usage.usage_dashboard(period=usage.PERIODS["hour"])
    sql = [q["sql"] for q in queries.captured_queries if "SAVEPOINT" not in q["sql"]]
    # Settings, the id bound, messages (all groupings at once), the ledger, failed replies.
    assert len(sql) == 5, sql
    assert sum('"conversations_message"' in s and "GROUPING SETS" in s for s in sql) == 1
    assert "set_config('jit', 'off', true)" in sql[0]
    assert dashboard.total.requests.requests == sum(SIZES.values()) + 1
    busy = [b for b in dashboard.buckets if b.requests.requests]
    assert sum(b.requests.requests for b in busy) == dashboard.total.requests.requests
    everything = [v for values in samples.values() for v in values]
    assert dashboard.total.requests.ttft == usage.Latency(
        nearest_rank(everything, 50), nearest_rank(everything, 95)
    )
    lines = {line.model: line.requests for line in dashboard.per_model}
    for model, values in samples.items():
        assert lines[model].ttft == usage.Latency(
            nearest_rank(values, 50), nearest_rank(values, 95)
        ), model
