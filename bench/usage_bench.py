"""Usage dashboard benchmark on a real PostgreSQL: the console's dashboard over 1,000,000 calls.

What it measures, in a database of its own (`enterprise_ai_usage_bench` on 127.0.0.1:5432,
user `postgres`, trust auth), which it drops, recreates and migrates on every run:

1. **Seeding** — a week of traffic generated inside PostgreSQL (`generate_series`): N
   replies (default 1,000,000) by 500 people in 20,000 conversations, each after its user's
   message (2N message rows, ids growing with time as in production), across four models
   (one in twenty answered by another model after failover); 2 % failed with an error code,
   2 % stopped; time to first token and duration drawn from a long-tailed spread; one ledger
   row per reply (N ledger rows). Then VACUUM ANALYZE: the statistics for the planner, and
   the visibility map, without which PostgreSQL cannot answer from the covering index
   `msg_usage_idx` alone (an index-only scan reads the table for every row on a page not
   marked all-visible; autovacuum sets it in production).
2. **Dashboard queries** — `observability.usage.usage_dashboard()` for the last hour, day
   and week (about N/168, N/7 and all N replies), several runs each after one warm-up: p50 and
   p95 wall time, the number of SQL queries and each query's own time (the slowest named).
3. **Plans** — EXPLAIN (ANALYZE, BUFFERS) of the dashboard's message query and of its latest
   failed replies for the week, in the dashboard's own settings: the scan nodes are kept
   (index-only scans of `msg_usage_idx`, heap fetches, buffers).
4. **Dashboard page** — `/admin/usage/?period=…` as a superuser (`django.test.Client`,
   `force_login`): the same queries plus the charts and the template.

It is a benchmark, not a test: nothing asserts on timings (a wrong count does stop it).
Results are written to `bench/results/usage.json` and `bench/results/usage.md`.

Run it with `make bench`, or directly:

    .venv/bin/python -m bench.usage_bench                    # about three minutes on two cores
    .venv/bin/python -m bench.usage_bench --replies 100000 --runs 3     # a quick smoke run

Options can also be set in the environment: BENCH_USAGE_REPLIES, BENCH_USAGE_RUNS. Exits
with status 2 and a message when PostgreSQL is unreachable.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psycopg

from bench import audit_bench
from bench.audit_bench import (
    PG_HOST,
    PG_PORT,
    PG_USER,
    code_line,
    git_state,
    log,
    machine_facts,
    percentile,
    postgres_facts,
)

RESULTS_DIR = Path(__file__).resolve().parent / "results"
DB_NAME = "enterprise_ai_usage_bench"

BENCH_ENV = {
    "DJANGO_SETTINGS_MODULE": "enterprise_ai.settings",
    "DATABASE_URL": f"postgres://{PG_USER}@{PG_HOST}:{PG_PORT}/{DB_NAME}",
    "SECRET_KEY": "bench-only-secret-key-not-for-production-use-0123456789",
    "AUDIT_HMAC_KEY": "bench-only-audit-checkpoint-key-not-for-production-0123",
    "ALLOWED_HOSTS": "testserver,localhost,127.0.0.1",
    "LOG_LEVEL": "WARNING",
}
UNSET_ENV = ("REDIS_URL", "CELERY_BROKER_URL", "AUDIT_ANCHOR_S3_BUCKET")

PEOPLE = 500
CONVERSATIONS = 20_000
MODELS = ("gpt-4o", "claude-sonnet", "llama-3-70b", "demo")
PERIODS = ("hour", "day", "week")

# The whole week of traffic in three statements. :n is the number of replies; row g of
# 2n is a user message (odd g) or the reply to it (even g), in time order.
SEED_SQL = (
    """
    INSERT INTO conversations_message (
        public_id, conversation_id, role, content, status, model, answered_by, notice,
        tool_events, input_tokens, output_tokens, cost, cost_estimated, stop_reason,
        time_to_first_token_ms, duration_ms, error_code, error, request_id, created_at,
        started_at, heartbeat_at, completed_at)
    SELECT
        gen_random_uuid(),
        first_conversation + (g / 2) %% %(conversations)s,
        CASE WHEN g %% 2 = 1 THEN 'user' ELSE 'assistant' END,
        CASE WHEN g %% 2 = 1 THEN repeat('Please summarise the notes. ', 8)
             ELSE repeat('Here is a summary of the notes in five points. ', 24) END,
        CASE WHEN g %% 2 = 1 THEN 'complete'
             WHEN (g / 2) %% 50 = 7 THEN 'failed'
             WHEN (g / 2) %% 50 = 23 THEN 'cancelled'
             ELSE 'complete' END,
        (ARRAY['gpt-4o', 'claude-sonnet', 'llama-3-70b', 'demo'])[1 + (g / 2) %% 4],
        CASE WHEN g %% 2 = 1 THEN ''
             WHEN (g / 2) %% 20 = 5 THEN 'demo'
             ELSE (ARRAY['gpt-4o', 'claude-sonnet', 'llama-3-70b', 'demo'])[1 + (g / 2) %% 4]
        END,
        '', '[]'::jsonb, NULL, NULL, NULL, false, '',
        CASE WHEN g %% 2 = 1 THEN NULL
             WHEN (g / 2) %% 50 = 7 AND (g / 2) %% 3 = 0 THEN NULL
             ELSE (150 + 4000 * power(random(), 3))::int END,
        CASE WHEN g %% 2 = 1 THEN NULL
             ELSE (900 + 30000 * power(random(), 2))::int END,
        CASE WHEN g %% 2 = 0 AND (g / 2) %% 50 = 7
             THEN (ARRAY['provider_unavailable', 'rate_limited', 'timeout', 'internal'])
                  [1 + (g / 100) %% 4]
             ELSE '' END,
        '', 'req-' || (g / 2)::text,
        start_at + (g::float8 / (2 * %(replies)s)) * (interval '7 days' - interval '4 minutes'),
        NULL, NULL, NULL
    FROM generate_series(1, 2 * %(replies)s) AS g,
         (SELECT min(id) AS first_conversation FROM conversations_conversation) AS c,
         (SELECT now() - interval '7 days' + interval '2 minutes' AS start_at) AS t
    """,
    """
    INSERT INTO costs_costentry (
        idempotency_key, created_at, user_id, department_id, conversation_id, message_id,
        call_index, model, provider, input_tokens, cached_input_tokens, output_tokens, cost,
        currency, estimated, priced, outcome, request_id)
    SELECT
        m.public_id::text || ':0', m.created_at + interval '1 second', c.owner_id, NULL,
        m.conversation_id, m.id, 0, coalesce(nullif(m.answered_by, ''), m.model), 'demo',
        1000 + m.id %% 3000, 0, 50 + m.id %% 1500,
        ((1000 + m.id %% 3000) * 3 + (50 + m.id %% 1500) * 15) / 1000000.0,
        'USD', false, true, m.status, m.request_id
    FROM conversations_message m
    JOIN conversations_conversation c ON c.id = m.conversation_id
    WHERE m.role = 'assistant'
    """,
)


def configure_environment() -> None:
    audit_bench.configure_environment(BENCH_ENV, UNSET_ENV)


def setup_django() -> None:
    audit_bench.setup_django(BENCH_ENV, UNSET_ENV)


def create_people() -> Any:
    """PEOPLE people, CONVERSATIONS conversations among them, and a superuser to look."""
    from django.contrib.auth.hashers import make_password

    from accounts.models import User
    from conversations.models import Conversation

    unusable = make_password(None)
    User.objects.bulk_create(
        User(username=f"user{i:03d}", email=f"user{i:03d}@example.com", password=unusable)
        for i in range(PEOPLE)
    )
    people = list(User.objects.order_by("pk"))
    Conversation.objects.bulk_create(
        (
            Conversation(owner=people[i % PEOPLE], title="Benchmark", model=MODELS[i % 4])
            for i in range(CONVERSATIONS)
        ),
        batch_size=5000,
    )
    return User.objects.create_superuser("usage-admin", "usage-admin@example.com", None)


def seed(replies: int) -> dict[str, Any]:
    from django.db import connection

    started = time.perf_counter()
    with connection.cursor() as cursor:
        for statement in SEED_SQL:
            cursor.execute(statement, {"replies": replies, "conversations": CONVERSATIONS})
    seeded = time.perf_counter() - started
    log(f"seeded {replies:,} replies and their ledger rows in {seeded:.1f} s")
    started = time.perf_counter()
    with connection.cursor() as cursor:
        cursor.execute("VACUUM (ANALYZE) conversations_message")
        cursor.execute("VACUUM (ANALYZE) costs_costentry")
        cursor.execute(
            "SELECT (SELECT count(*) FROM conversations_message), "
            "(SELECT count(*) FROM costs_costentry), "
            "pg_total_relation_size('conversations_message'), "
            "pg_total_relation_size('costs_costentry')"
        )
        row: Any = cursor.fetchone()
        messages, entries, message_bytes, ledger_bytes = row
    if entries != replies or messages != 2 * replies:
        raise RuntimeError(f"seeded {messages} messages and {entries} ledger rows, not {replies}")
    return {
        "replies": replies,
        "messages": messages,
        "ledger_entries": entries,
        "seconds": round(seeded, 1),
        "vacuum_analyze_seconds": round(time.perf_counter() - started, 1),
        "message_table_mb": round(message_bytes / 2**20),
        "ledger_table_mb": round(ledger_bytes / 2**20),
        "people": PEOPLE,
        "conversations": CONVERSATIONS,
        "models": list(MODELS),
    }


def stats(seconds: Sequence[float]) -> dict[str, float]:
    values = [s * 1000 for s in seconds]
    return {
        "p50_ms": round(percentile(values, 50), 1),
        "p95_ms": round(percentile(values, 95), 1),
        "min_ms": round(min(values), 1),
        "max_ms": round(max(values), 1),
        "mean_ms": round(statistics.fmean(values), 1),
    }


def _describe(sql: str) -> str:
    """A short name for each of the dashboard's queries."""
    upper = sql.upper()
    if upper in ("BEGIN", "COMMIT"):
        return "transaction"
    if "SET_CONFIG" in upper:
        return "settings"
    if "ROLLUP" in upper:
        return "messages"
    if '"COSTS_COSTENTRY"' in upper:
        return "ledger"
    if "LIMIT" in upper:
        return "failed replies"
    return "other"


def time_dashboard(period_key: str, runs: int) -> dict[str, Any]:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from observability import usage

    period = usage.PERIODS[period_key]
    usage.usage_dashboard(period=period)  # warm-up: not counted
    seconds: list[float] = []
    per_query: dict[str, list[float]] = {}
    dashboard = None
    queries = 0
    for _ in range(runs):
        with CaptureQueriesContext(connection) as captured:
            started = time.perf_counter()
            dashboard = usage.usage_dashboard(period=period)
            seconds.append(time.perf_counter() - started)
        queries = len(captured)
        for query in captured.captured_queries:
            per_query.setdefault(_describe(query["sql"]), []).append(float(query["time"]))
    assert dashboard is not None  # noqa: S101  (runs >= 1)
    result: dict[str, Any] = {
        "period": period_key,
        "replies_in_period": dashboard.total.requests.requests,
        "ledger_rows_in_period": dashboard.total.spend.calls,
        "queries": queries,
        "dashboard": stats(seconds),
        "per_query_p50_ms": {
            name: round(percentile([t * 1000 for t in times], 50), 1)
            for name, times in sorted(per_query.items())
        },
        "error_rate": round(dashboard.total.requests.error_rate or 0, 4),
        "ttft_ms": [dashboard.total.requests.ttft.p50, dashboard.total.requests.ttft.p95],
        "duration_ms": [
            dashboard.total.requests.duration.p50,
            dashboard.total.requests.duration.p95,
        ],
    }
    log(
        f"  {period_key}: {result['replies_in_period']:,} replies, {queries} queries, "
        f"p50 {result['dashboard']['p50_ms']} ms, p95 {result['dashboard']['p95_ms']} ms"
    )
    return result


def explain_week() -> dict[str, list[str]]:
    """EXPLAIN (ANALYZE, BUFFERS) of the week's message and failed-reply queries: scan nodes."""
    from django.db import connection, transaction
    from django.test.utils import CaptureQueriesContext

    from observability import usage

    with CaptureQueriesContext(connection) as captured:
        usage.usage_dashboard(period=usage.PERIODS["week"])
    plans: dict[str, list[str]] = {}
    for query in captured.captured_queries:
        name = _describe(query["sql"])
        if name not in ("messages", "failed replies"):
            continue
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(
                "SELECT set_config('work_mem', %s, true), set_config('jit', 'off', true)",
                [usage.SORT_MEMORY],
            )
            cursor.execute(f"EXPLAIN (ANALYZE, BUFFERS) {query['sql']}")
            lines = [line for (line,) in cursor.fetchall()]
        wanted = ("Scan", "Heap Fetches", "Buffers", "Sort Method", "Execution Time", "loops")
        plans[name] = [line.rstrip() for line in lines if any(w in line for w in wanted)]
    figures = "\n".join(plans.get("messages", []))
    only_index = figures.count("Heap Fetches: 0") == 2 and "Seq Scan" not in figures
    log(f"  plans: {'index-only, no heap fetch' if only_index else 'NOT index-only'}")
    return plans


def time_page(superuser: Any, period_key: str, runs: int) -> dict[str, Any]:
    from django.test import Client

    client = Client()
    client.force_login(superuser)
    url = f"/admin/usage/?period={period_key}"
    response = client.get(url, secure=True)  # warm-up (production settings: HTTPS)
    if response.status_code != 200 or b'data-chart="requests"' not in response.content:
        raise RuntimeError(f"{url} answered {response.status_code} without its charts")
    seconds = []
    for _ in range(runs):
        started = time.perf_counter()
        client.get(url, secure=True)
        seconds.append(time.perf_counter() - started)
    return {"period": period_key, "page": stats(seconds), "bytes": len(response.content)}


def render_markdown(results: dict[str, Any]) -> str:
    m, pg, s = results["machine"], results["postgres"], results["seed"]
    lines = [
        "# Usage dashboard benchmark",
        "",
        f"`make bench` (bench/usage_bench.py), {m['date']}.",
        "",
        "## Machine",
        "",
        "| CPU | Memory | Python | Django | PostgreSQL | shared_buffers | work_mem |",
        "|---|---|---|---|---|---|---|",
        f"| {m['cpu_count']} × {m['cpu_model'] or '?'} | {m['memory_gb']} GB | {m['python']} "
        f"| {m['django']} | {pg['server_version']} | {pg['shared_buffers']} | {pg['work_mem']} |",
        "",
        f"Platform {m['platform']}; load average at start {m['load_average_at_start']}.",
        "",
        code_line(results),
        "",
        "## Data",
        "",
        f"{s['replies']:,} replies over the last 7 days ({s['messages']:,} message rows with "
        f"their users' messages; {s['message_table_mb']:,} MB) and {s['ledger_entries']:,} "
        f"ledger rows ({s['ledger_table_mb']:,} MB); {s['people']} people, "
        f"{s['conversations']:,} conversations, {len(s['models'])} models; 2 % failed, 2 % "
        f"stopped. Seeded in {s['seconds']} s inside PostgreSQL, then VACUUM ANALYZE "
        f"({s['vacuum_analyze_seconds']} s).",
        "",
        "## The dashboard",
        "",
        f"`observability.usage.usage_dashboard()` — every figure on the page — {results['runs']} "
        "runs per period after one warm-up; the page is `/admin/usage/` as a superuser "
        "(queries, charts and template).",
        "",
        "| Period | Replies in it | Ledger rows in it | Queries | Dashboard p50 / p95 ms "
        "| Page p50 / p95 ms | Slowest query (p50 ms) |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    pages = {p["period"]: p for p in results["pages"]}
    for r in results["dashboards"]:
        page = pages[r["period"]]["page"]
        slowest = max(r["per_query_p50_ms"].items(), key=lambda item: item[1])
        lines.append(
            f"| {r['period']} | {r['replies_in_period']:,} | {r['ledger_rows_in_period']:,} "
            f"| {r['queries']} | {r['dashboard']['p50_ms']} / {r['dashboard']['p95_ms']} "
            f"| {page['p50_ms']} / {page['p95_ms']} | {slowest[0]} ({slowest[1]}) |"
        )
    lines += [
        "",
        "Each query's own p50 (ms):",
        "",
        "| Period | " + " | ".join(sorted(results["dashboards"][0]["per_query_p50_ms"])) + " |",
        "|---|" + "---:|" * len(results["dashboards"][0]["per_query_p50_ms"]),
    ]
    for r in results["dashboards"]:
        values = [str(v) for _, v in sorted(r["per_query_p50_ms"].items())]
        lines.append(f"| {r['period']} | " + " | ".join(values) + " |")
    lines += [
        "",
        "The query count is the same for every period and every data size (a test holds it "
        "constant for 10 and 1,000 replies): BEGIN and COMMIT, the settings of the "
        "dashboard's transaction (`work_mem`, no JIT), the messages (one query: the period "
        "per model with ROLLUP for the total, then each bucket on its own in a LATERAL "
        "subquery; counts and exact nearest-rank `percentile_disc(ARRAY[0.5, 0.95])`, one "
        "sort per column and group), the ledger (per model × bucket) and the 20 latest "
        "failed replies. The messages are found by their own `created_at` and read from the "
        "partial covering index `msg_usage_idx` alone (index-only scans, no heap fetch after "
        "VACUUM), never from the table's wide rows; what remains of the week's figure is "
        "sorting a million replies' timings (by model, then each column within each group) "
        "and the ledger's pass over its own rows.",
        "",
        "### Plans for the week",
        "",
        "EXPLAIN (ANALYZE, BUFFERS) in the dashboard's settings, scan and sort lines:",
        "",
    ]
    for name, plan in results.get("plans_week", {}).items():
        lines += [f"{name}:", "", "```", *plan, "```", ""]
    lines += [
        f"Load average at the end: {results['load_average_at_end']}.",
        "",
        f"Whole run: {results['total_seconds']} s.",
        "",
    ]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else "")
    parser.add_argument(
        "--replies",
        type=int,
        default=int(os.environ.get("BENCH_USAGE_REPLIES", "1000000")),
        help="replies (and ledger rows) seeded (default: BENCH_USAGE_REPLIES or 1,000,000)",
    )
    parser.add_argument(
        "--runs",
        type=int,
        default=int(os.environ.get("BENCH_USAGE_RUNS", "9")),
        help="timed runs per period (default: BENCH_USAGE_RUNS or 9)",
    )
    parser.add_argument("--output-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--keep-db", action="store_true", help=f"keep {DB_NAME} afterwards")
    args = parser.parse_args(argv)
    if args.replies < 1000 or args.runs < 1:
        parser.error("seed at least 1,000 replies and time at least one run")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    configure_environment()
    try:
        pg = postgres_facts()
    except psycopg.OperationalError as exc:
        print(
            f"SKIPPED: PostgreSQL is unreachable at {PG_HOST}:{PG_PORT} (user {PG_USER}): "
            f"{exc}".strip(),
            file=sys.stderr,
        )
        return 2
    started = time.monotonic()
    log(f"PostgreSQL {pg['server_version']}; recreating database {DB_NAME}")
    audit_bench.recreate_database(DB_NAME)
    setup_django()
    from django.core.management import call_command
    from django.db import connections

    results: dict[str, Any] = {
        "machine": machine_facts(),
        "postgres": pg,
        "git": git_state(),
        "runs": args.runs,
    }
    try:
        call_command("migrate", interactive=False, verbosity=0)
        log("migrated")
        superuser = create_people()
        results["seed"] = seed(args.replies)
        log(f"dashboard: {args.runs} runs per period…")
        results["dashboards"] = [time_dashboard(key, args.runs) for key in PERIODS]
        results["plans_week"] = explain_week()
        results["pages"] = [time_page(superuser, key, args.runs) for key in PERIODS]
        results["total_seconds"] = round(time.monotonic() - started, 1)
        results["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
        results["git_at_end"] = git_state()
        if results["git_at_end"] != results["git"]:
            log("WARNING: the code changed during the run; the figures may mix versions")
    finally:
        connections.close_all()
        if not args.keep_db:
            audit_bench.drop_database(DB_NAME)

    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / "usage.json").write_text(json.dumps(results, indent=2) + "\n", "utf-8")
    markdown = render_markdown(results)
    (args.output_dir / "usage.md").write_text(markdown, "utf-8")
    print()
    print(markdown)
    log(f"results written to {args.output_dir}/usage.json and usage.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
