"""The usage dashboard on PostgreSQL: nearest-rank percentiles, read from the covering index.

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
    # Settings, messages (per model with ROLLUP, then each bucket), the ledger, failed replies.
    assert len(sql) == 4, sql
    [messages] = [s for s in sql if "ROLLUP" in s]
    assert '"conversations_message"' in messages and "CROSS JOIN LATERAL" in messages
    assert messages.count("PERCENTILE_DISC(ARRAY[0.50, 0.95])") == 4  # two columns, two parts
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
    # Each bucket's percentiles are its own replies' (here, those of each minute).
    minutes: dict[dt.datetime, list[int]] = {}
    for created_at, ttft in Message.objects.filter(
        time_to_first_token_ms__isnull=False
    ).values_list("created_at", "time_to_first_token_ms"):
        minutes.setdefault(created_at.replace(second=0, microsecond=0), []).append(int(ttft or 0))
    assert {b.start: b.requests.ttft for b in busy} == {
        start: usage.Latency(nearest_rank(values, 50), nearest_rank(values, 95))
        for start, values in minutes.items()
    }


# A week of traffic, as in bench/usage_bench.py but smaller: each reply after its user's
# message, whose text makes the table wide, as in production.
WEEK_SQL = """
    INSERT INTO conversations_message (
        public_id, conversation_id, role, content, status, model, answered_by, notice,
        tool_events, cost_estimated, stop_reason, time_to_first_token_ms, duration_ms,
        error_code, error, request_id, created_at)
    SELECT
        gen_random_uuid(), %(conversation)s,
        CASE WHEN g %% 2 = 1 THEN 'user' ELSE 'assistant' END,
        repeat('Please summarise the notes in five points. ', 20),
        CASE WHEN g %% 2 = 1 THEN 'complete' WHEN g %% 100 = 14 THEN 'failed'
             ELSE 'complete' END,
        (ARRAY['gpt-4o', 'demo'])[1 + (g / 2) %% 2], '', '', '[]'::jsonb, false, '',
        CASE WHEN g %% 2 = 0 THEN 100 + g %% 3000 END,
        CASE WHEN g %% 2 = 0 THEN 1000 + g %% 9000 END,
        CASE WHEN g %% 100 = 14 THEN 'timeout' ELSE '' END, '', '',
        now() - interval '7 days' + (g::float8 / %(rows)s) * interval '7 days'
    FROM generate_series(1, %(rows)s) AS g
"""


@pytest.mark.django_db(transaction=True)  # VACUUM cannot run inside a transaction
def test_the_planner_reads_replies_from_the_covering_index(owner: Any) -> None:
    """The dashboard's message queries use `msg_usage_idx`, index-only for the figures.

    No planner setting is forced (enable_seqscan stays on): with a week of replies among
    wide user messages and the visibility map set by VACUUM, as in production, the planner
    itself prefers the index, for an hour as for the whole week.
    """
    conversation = Conversation.objects.create(owner=owner, title="Week", model="demo")
    with connection.cursor() as cursor:
        cursor.execute(WEEK_SQL, {"conversation": conversation.pk, "rows": 40_000})
        cursor.execute("VACUUM (ANALYZE) conversations_message")
    for key in ("hour", "week"):
        with CaptureQueriesContext(connection) as queries:
            dashboard = usage.usage_dashboard(period=usage.PERIODS[key])
        assert dashboard.total.requests.requests > 0, key
        [figures] = [q["sql"] for q in queries.captured_queries if "ROLLUP" in q["sql"]]
        [failed] = [q["sql"] for q in queries.captured_queries if "LIMIT" in q["sql"]]
        with connection.cursor() as cursor:
            cursor.execute(f"EXPLAIN (ANALYZE) {figures}")
            plan = "\n".join(line for (line,) in cursor.fetchall())
            cursor.execute(f"EXPLAIN {failed}")
            failed_plan = "\n".join(line for (line,) in cursor.fetchall())
        # Both parts (the period by model, each bucket) scan the index alone.
        assert plan.count("Index Only Scan using msg_usage_idx on conversations_message") == 2, (
            key, plan,
        )  # fmt: skip
        assert plan.count("Heap Fetches: 0") == 2 and "Seq Scan" not in plan, (key, plan)
        # The latest failed replies: the same index from the period's end, newest first.
        assert "Index Scan Backward using msg_usage_idx" in failed_plan, (key, failed_plan)
