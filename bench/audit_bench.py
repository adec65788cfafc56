"""Audit trail benchmark on a real PostgreSQL: insert rate, chain verification, console list.

What it measures, in a database of its own (`enterprise_ai_bench` on 127.0.0.1:5432, or the
name in BENCH_AUDIT_DB; user `postgres`, trust auth), which it drops, recreates and migrates
on every run:

1. **Seeding** — N events (default 1,000,000) of a realistic mix (sign-ins, messages, replies,
   chat sockets, console changes…) by a few hundred people, appended with
   `audit.services.audit_record_batch` in chunks of 50,000, with a signed checkpoint after each
   chunk. While seeding, `audit.services` reads its clock from a simulated one, so the events
   spread evenly over the past year (as a year of traffic would); the chain is hashed exactly
   as the product hashes it.
2. **Verification** — a full run (`audit.services.audit_chain_verify()`, which walks from
   event #1 and records its signed marker) over N/10 and then all N events, each run in a
   fresh process: seconds, events per second and the process's own peak RSS (VmHWM; see
   `peak_rss_mb` for why not `resource.getrusage` alone), so that equal peaks at both sizes
   show that memory stays flat however long the chain is. At the end, after the inserts
   below, an incremental run (`audit_chain_verify(incremental=True)`) walks only the events
   written since the last full run's marker. Before each run a checkpoint is signed with the
   real clock, as the schedule would have (the seeded ones carry the simulated past).
3. **Console list** — `/admin/audit/auditevent/` as a superuser (`django.test.Client`,
   `force_login`): unfiltered, filtered by action, searched by an e-mail address and drilled
   down to one month by the date hierarchy. Median (and min, max, first "cold" load) of
   several loads, the number of SQL queries and the slowest query
   (`CaptureQueriesContext`).
4. **Inserts** — `audit.services.audit_record(...)`, one event per transaction as the product
   writes them, into the seeded table, with 1 and with 8 concurrent writers (separate spawned
   processes, each with its own connection), on both write paths (AUDIT_WRITE_PATH): `direct`
   (each event chained in its own transaction under the chain lock: writers serialise) and
   `deferred` (PostgreSQL's default: recorded without the lock, chained right after the
   commit by the writer that wins the try-lock). A writer's latency includes the chaining it
   does after its commit; the rate counts only events that are in the chain at the end (any
   left pending when the writers finish are chained, and timed, before the clock stops), and
   the chain must be gapless. A CHECKPOINT comes first, so the seeding's pending write-back
   does not skew the commits.

It is a benchmark, not a test: nothing asserts on timings. Results are written to
`bench/results/audit.json` and `bench/results/audit.md`.

Run it with `make bench` (1,000,000 events; about ten minutes on two cores), or directly:

    .venv/bin/python -m bench.audit_bench --events 20000      # a quick smoke run

Options can also be set in the environment: BENCH_AUDIT_EVENTS (events seeded),
BENCH_INSERT_EVENTS (events per insert configuration), BENCH_AUDIT_DB (the database's name).
Exits with status 2 and a message when
PostgreSQL is unreachable.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import multiprocessing
import os
import platform
import queue as queue_module
import random
import resource
import shutil
import statistics
import subprocess
import sys
import time
import traceback
import uuid
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import psycopg
from psycopg import sql

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = Path(__file__).resolve().parent / "results"

PG_HOST = "127.0.0.1"
PG_PORT = 5432
PG_USER = "postgres"
# BENCH_AUDIT_DB: run beside another copy of this benchmark without sharing its database.
DB_NAME = os.environ.get("BENCH_AUDIT_DB", "enterprise_ai_bench")


SEED_CHUNK = 50_000
SEED_SPAN = timedelta(days=365)
SEED_SEED = 20_240_601  # the random traffic is the same on every run

BENCH_ENV = {
    "DJANGO_SETTINGS_MODULE": "enterprise_ai.settings",
    "DATABASE_URL": f"postgres://{PG_USER}@{PG_HOST}:{PG_PORT}/{DB_NAME}",
    "SECRET_KEY": "bench-only-secret-key-not-for-production-use-0123456789",
    "AUDIT_HMAC_KEY": "bench-only-audit-checkpoint-key-not-for-production-0123",
    "ENCRYPTION_MASTER_KEY": "test-only-encryption-key-not-for-production",
    "ALLOWED_HOSTS": "testserver,localhost,127.0.0.1",
    "LOG_LEVEL": "WARNING",
}
# Without these, replies dispatch in-process and the cache is local memory (settings.py).
UNSET_ENV = ("REDIS_URL", "CELERY_BROKER_URL", "AUDIT_ANCHOR_S3_BUCKET")

_STARTED = time.monotonic()


def log(message: str) -> None:
    print(f"[{time.monotonic() - _STARTED:7.1f}s] {message}", flush=True)


# --- Environment and database ------------------------------------------------------------------


def configure_environment(
    env: dict[str, str] | None = None, unset: Sequence[str] = UNSET_ENV
) -> None:
    """Point Django at a benchmark's database; inherited by the spawned worker processes."""
    os.environ.update(BENCH_ENV if env is None else env)
    for name in unset:
        os.environ.pop(name, None)


def setup_django(env: dict[str, str] | None = None, unset: Sequence[str] = UNSET_ENV) -> None:
    configure_environment(env, unset)
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    # WhiteNoise warns that collectstatic has not been run; no static file is served here.
    warnings.filterwarnings("ignore", message="No directory at")
    import django

    django.setup()


def pg_connect(dbname: str = "postgres") -> psycopg.Connection[Any]:
    return psycopg.connect(
        host=PG_HOST, port=PG_PORT, user=PG_USER, dbname=dbname, connect_timeout=5, autocommit=True
    )


def postgres_facts() -> dict[str, Any]:
    """The server's version and the settings that matter most for these figures."""
    facts: dict[str, Any] = {}
    with pg_connect() as conn:
        for name in ("server_version", "shared_buffers", "synchronous_commit", "fsync", "work_mem"):
            row = conn.execute(sql.SQL("SHOW {}").format(sql.Identifier(name))).fetchone()
            facts[name] = row[0] if row else None
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND pid <> "
            "pg_backend_pid() AND backend_type = 'client backend'"
        ).fetchone()
        facts["other_active_connections_at_start"] = row[0] if row else None
    return facts


def recreate_database(name: str = DB_NAME) -> None:
    with pg_connect() as conn:
        identifier = sql.Identifier(name)
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(identifier))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(identifier))


def drop_database(name: str = DB_NAME) -> None:
    with pg_connect() as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def machine_facts() -> dict[str, Any]:
    cpu_model = ""
    memory_gb = None
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("MemTotal:"):
                memory_gb = round(int(line.split()[1]) / 1024 / 1024, 1)
                break
    import django

    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model,
        "memory_gb": memory_gb,
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "platform": platform.platform(),
        "python": platform.python_version(),
        "django": django.get_version(),
        "psycopg": psycopg.__version__,
    }


def git_state() -> dict[str, Any]:
    """The commit measured and the tracked files modified on top of it (empty without git)."""
    git = shutil.which("git")
    if git is None:
        return {}

    def run(*args: str) -> str:
        done = subprocess.run(  # noqa: S603  (fixed arguments, no shell)
            [git, *args], cwd=ROOT, capture_output=True, text=True, timeout=30, check=False
        )
        return done.stdout

    status = run("status", "--porcelain", "--untracked-files=no")  # "XY path" lines
    return {
        "commit": run("rev-parse", "--short", "HEAD").strip(),
        "modified": sorted(line[3:] for line in status.splitlines() if line[3:]),
    }


def peak_rss_mb() -> float:
    """This process's own peak resident set size so far (VmHWM), in MiB.

    Not ru_maxrss alone: on Linux a spawned child's ru_maxrss starts at its parent's peak
    (the high-water mark survives fork and exec), which would hide the verifier's own.
    ru_maxrss is the fallback where /proc is not available.
    """
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text(encoding="utf-8").splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    return ru_maxrss_mb()


def ru_maxrss_mb() -> float:
    """resource.getrusage's peak RSS (KiB on Linux), in MiB; see peak_rss_mb."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, math.ceil(pct / 100 * len(ordered)) - 1))
    return ordered[index]


def run_processes(target: Callable[..., None], args_list: list[tuple[Any, ...]]) -> list[Any]:
    """Run target(queue, *args) in spawned processes, one per args; return what each put."""
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    processes = [ctx.Process(target=target, args=(queue, *args)) for args in args_list]
    for process in processes:
        process.start()
    results: list[Any] = []
    while len(results) < len(processes):
        try:
            results.append(queue.get(timeout=1))
        except queue_module.Empty:
            if not any(process.is_alive() for process in processes) and queue.empty():
                raise RuntimeError("a benchmark process died without reporting") from None
    for process in processes:
        process.join()
    errors = [r["error"] for r in results if isinstance(r, dict) and "error" in r]
    if errors:
        raise RuntimeError("a benchmark process failed:\n" + "\n".join(errors))
    return results


def migrate() -> None:
    """Apply every migration to the scratch database."""
    from django.core.management import call_command

    call_command("migrate", interactive=False, verbosity=0)


# --- Realistic traffic -------------------------------------------------------------------------

# Relative frequency of each action in a working day of chat traffic.
ACTION_WEIGHTS: tuple[tuple[str, int], ...] = (
    ("message.sent", 300),
    ("reply.completed", 280),
    ("reply.failed", 6),
    ("reply.cancelled", 8),
    ("ws.connect", 120),
    ("ws.disconnect", 118),
    ("ws.refused", 2),
    ("auth.login", 60),
    ("auth.logout", 35),
    ("auth.login_failed", 20),
    ("auth.lockout", 1),
    ("auth.password_changed", 2),
    ("model.refused", 3),
    ("conversation.access_denied", 4),
    ("conversation.viewed", 10),
    ("tool.refused", 3),
    ("admin.add", 2),
    ("admin.change", 5),
    ("admin.delete", 1),
    ("legal_hold.set", 1),
    ("legal_hold.released", 1),
    ("audit.exported", 1),
)
MODELS = (("gpt-4o", "openai"), ("claude-sonnet", "bedrock"), ("llama-3-70b", "vllm"))
USER_AGENTS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/126.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.5 Safari/605.1.15",
    "Mozilla/5.0 (X11; Linux x86_64; rv:127.0) Gecko/20100101 Firefox/127.0",
)


@dataclass(frozen=True)
class Person:
    user: Any
    public_id: str
    ip: str
    user_agent: str
    session_hash: str
    conversations: tuple[str, ...]


class Traffic:
    """Deterministic, varied audit events by a population of people."""

    def __init__(self, users: Sequence[Any], admins: Sequence[Any], seed: int) -> None:
        self.rng = random.Random(seed)  # noqa: S311  (test data, not security)
        self.people = [self._person(user) for user in users]
        self.admins = [self._person(user) for user in admins]
        self.actions = [action for action, _ in ACTION_WEIGHTS]
        self.cum_weights: list[int] = []
        total = 0
        for _, weight in ACTION_WEIGHTS:
            total += weight
            self.cum_weights.append(total)

    def _uuid(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def _person(self, user: Any) -> Person:
        rng = self.rng
        return Person(
            user=user,
            public_id=str(user.public_id),
            ip=f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}",
            user_agent=rng.choice(USER_AGENTS),
            session_hash=f"{rng.getrandbits(256):064x}",
            conversations=tuple(self._uuid() for _ in range(rng.randrange(5, 40))),
        )

    def specs(self, count: int) -> Iterator[Any]:
        for _ in range(count):
            yield self.spec()

    def spec(self) -> Any:
        from audit.services import EventSpec

        rng = self.rng
        action = rng.choices(self.actions, cum_weights=self.cum_weights)[0]
        person = rng.choice(self.admins if action.startswith(("admin.", "legal_")) else self.people)
        fields: dict[str, Any] = {
            "action": action,
            "actor": person.user,
            "ip": person.ip,
            "user_agent": person.user_agent,
            "session_hash": person.session_hash,
            "request_id": f"{rng.getrandbits(128):032x}",
        }
        fields.update(self._specifics(action, person))
        return EventSpec(**fields)

    def _specifics(self, action: str, person: Person) -> dict[str, Any]:
        """Outcome, target and details of one action, shaped like the product's own."""
        rng = self.rng
        model, provider = rng.choice(MODELS)
        conversation = rng.choice(person.conversations)
        if action == "message.sent":
            return {
                "target_type": "conversation",
                "target_id": conversation,
                "details": {
                    "message": self._uuid(),
                    "reply": self._uuid(),
                    "model": model,
                    "characters": rng.randrange(5, 4000),
                    "new_conversation": rng.random() < 0.15,
                },
            }
        if action.startswith("reply."):
            outcome = {"reply.completed": "success", "reply.failed": "failed"}.get(
                action, "success"
            )
            return {
                "outcome": outcome,
                "target_type": "conversation",
                "target_id": conversation,
                "details": {
                    "reply": self._uuid(),
                    "model": model,
                    "answered_by": provider,
                    "input_tokens": rng.randrange(50, 30_000),
                    "output_tokens": rng.randrange(1, 4000),
                    "duration_ms": rng.randrange(300, 90_000),
                    "time_to_first_token_ms": rng.randrange(150, 5000),
                    "stop_reason": "" if outcome == "failed" else "end_turn",
                    "error_code": "provider_timeout" if outcome == "failed" else "",
                    "tool_calls": rng.choice((0, 0, 0, 1, 2)),
                },
            }
        if action.startswith("ws."):
            details: dict[str, Any] = {"path": "/ws/chat/"}
            if action == "ws.disconnect":
                details.update(code=1000, seconds_open=round(rng.uniform(1, 7200), 1))
            return {
                "outcome": "denied" if action == "ws.refused" else "success",
                "target_type": "socket",
                "target_id": self._uuid().replace("-", ""),
                "details": details,
            }
        if action in {"auth.login", "auth.logout", "auth.password_changed"}:
            return {"target_type": "user", "target_id": person.public_id}
        if action in {"auth.login_failed", "auth.lockout"}:
            known = rng.random() < 0.8
            username = person.user.email if known else f"nobody{rng.randrange(10_000)}@example.com"
            details = {"username": username}
            if action == "auth.login_failed":
                details["known_user"] = known
            return {
                "actor": None,
                "outcome": "failed" if action == "auth.login_failed" else "denied",
                "target_type": "user" if known else "",
                "target_id": person.public_id if known else "",
                "details": details,
            }
        if action == "model.refused":
            return {"outcome": "denied", "details": {"model": "gpt-4-internal"}}
        if action == "conversation.access_denied":
            return {
                "outcome": "denied",
                "target_type": "conversation",
                "target_id": self._uuid(),
                "details": {"reason": "not_owner"},
            }
        if action == "tool.refused":
            return {"outcome": "denied", "details": {"tool": "search_internet", "reason": "off"}}
        subject = rng.choice(self.people)
        if action == "conversation.viewed":
            return {
                "target_type": "conversation",
                "target_id": rng.choice(subject.conversations),
                "details": {"messages": rng.randrange(2, 200), "owner": subject.public_id},
            }
        if action.startswith("admin."):
            return {
                "target_type": "user",
                "target_id": subject.public_id,
                "details": {
                    "object": subject.user.email,
                    "changed_fields": ["groups", "is_active"] if action == "admin.change" else [],
                    "change": [{"changed": {"fields": ["Groups", "Active"]}}],
                },
            }
        if action.startswith("legal_hold."):
            return {
                "target_type": "user",
                "target_id": subject.public_id,
                "details": {"reason": f"Matter {rng.randrange(1000, 9999)}: litigation hold"},
            }
        # audit.exported
        return {
            "target_type": "audit_trail",
            "target_id": "export",
            "details": {"format": rng.choice(("csv", "jsonl")), "filters": {"action": action}},
        }


class SimulatedClock:
    """Stands in for `django.utils.timezone` in audit.services while seeding.

    Each call to now() is one step later, so N events spread evenly, in order, over the span.
    """

    def __init__(self, start: datetime, step: timedelta) -> None:
        self._next = start
        self._step = step

    def now(self) -> datetime:
        value = self._next
        self._next += self._step
        return value


# --- Phases ------------------------------------------------------------------------------------


def create_users(count: int) -> tuple[list[Any], list[Any], Any]:
    """`count` staff, a handful of console administrators and the benchmark's superuser."""
    from django.contrib.auth.hashers import make_password

    from accounts.models import User

    unusable = make_password(None)
    User.objects.bulk_create(
        [
            User(
                username=f"user{i:04d}",
                email=f"user{i:04d}@example.com",
                first_name=f"First{i}",
                last_name=f"Last{i}",
                password=unusable,
            )
            for i in range(1, count + 1)
        ],
        batch_size=1000,
    )
    User.objects.bulk_create(
        [
            User(
                username=f"admin{i}",
                email=f"admin{i}@example.com",
                is_staff=True,
                password=unusable,
            )
            for i in range(1, 6)
        ]
    )
    superuser = User.objects.create_superuser("bench-admin", "bench-admin@example.com", None)
    users = list(User.objects.filter(username__startswith="user").order_by("pk"))
    admins = list(User.objects.filter(username__startswith="admin").order_by("pk"))
    return users, admins, superuser


def seed(
    traffic: Traffic, total: int, verify_at: set[int], on_stage: Callable[[int], None]
) -> dict[str, Any]:
    """Append `total` events in chunks, a checkpoint after each; call on_stage at sizes."""
    from unittest import mock

    from audit import services

    clock = SimulatedClock(
        datetime.now(UTC) - SEED_SPAN - timedelta(hours=1), SEED_SPAN / max(total, 1)
    )
    done = 0
    checkpoints = 0
    seconds = 0.0
    while done < total:
        size = min(SEED_CHUNK, total - done)
        stage = min((s for s in verify_at if s > done), default=total)
        size = min(size, stage - done)
        started = time.perf_counter()
        with mock.patch.object(services, "timezone", clock):
            done += services.audit_record_batch(traffic.specs(size))
            services.checkpoint_create()
        seconds += time.perf_counter() - started
        checkpoints += 1
        log(f"seeded {done:,}/{total:,} events ({done / seconds:,.0f} events/s)")
        if done in verify_at:
            on_stage(done)
    return {
        "events": total,
        "seconds": round(seconds, 2),
        "events_per_second": round(total / seconds) if seconds else None,
        "checkpoints": checkpoints,
        "span_days": SEED_SPAN.days,
        "chunk": SEED_CHUNK,
    }


def _verify_process(queue: Any, incremental: bool) -> None:
    try:
        setup_django()
        from django.db import connection

        from audit.services import audit_chain_verify, checkpoint_create

        checkpoint_create()  # as the schedule would have, with the real clock
        connection.ensure_connection()
        rss_before = peak_rss_mb()
        started = time.perf_counter()
        report = audit_chain_verify(incremental=incremental)
        seconds = time.perf_counter() - started
        queue.put(
            {
                "mode": report.mode,
                "from_sequence": report.from_sequence,
                "head_sequence": report.last_sequence,
                "events": report.events_checked,
                "checkpoints": report.checkpoints_checked,
                "ok": report.ok,
                "summary": report.summary(),
                "seconds": round(seconds, 2),
                "events_per_second": round(report.events_checked / seconds) if seconds else None,
                "rss_before_mb": rss_before,
                "peak_rss_mb": peak_rss_mb(),
                # The machine is shared: how busy it was while this run walked.
                "load_average_1m_after": round(os.getloadavg()[0], 2),
                "ru_maxrss_mb_inherited_from_parent": ru_maxrss_mb(),
            }
        )
    except BaseException:
        queue.put({"error": traceback.format_exc()})


def verify(events: int, *, incremental: bool = False) -> dict[str, Any]:
    mode = "incremental" if incremental else "full"
    log(f"verifying the chain ({mode}) at {events:,} events (fresh process)…")
    (result,) = run_processes(_verify_process, [(incremental,)])
    if "error" in result:
        raise RuntimeError(result["error"])
    log(
        f"  {result['summary']} {result['seconds']} s, {result['events_per_second'] or 0:,} "
        "events/s, "
        f"peak RSS {result['peak_rss_mb']} MB (after setup {result['rss_before_mb']} MB)"
    )
    return dict(result)


def vacuum_analyze() -> float:
    from django.db import connection

    started = time.perf_counter()
    with connection.cursor() as cursor:
        cursor.execute("VACUUM (ANALYZE) audit_auditevent")
        cursor.execute("ANALYZE")
    return round(time.perf_counter() - started, 2)


def changelist(superuser: Any, search_email: str, seeded: int, loads: int) -> list[dict[str, Any]]:
    """Time the console's audit list as a superuser, several ways, `loads` times each."""
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    from audit.models import AuditEvent

    # The month of the middle event of the seeded year: a full month of events.
    middle = AuditEvent.objects.filter(sequence=max(1, seeded // 2))
    month = middle.values_list("occurred_at", flat=True).first() or datetime.now(UTC)
    pages: list[tuple[str, dict[str, Any]]] = [
        ("unfiltered", {}),
        ("action filter", {"action": "auth.login"}),
        ("search by e-mail", {"q": search_email}),
        ("date drill-down", {"occurred_at__year": month.year, "occurred_at__month": month.month}),
    ]
    client = Client()
    client.force_login(superuser)
    results = []
    for name, params in pages:
        url = "/admin/audit/auditevent/" + (f"?{urlencode(params)}" if params else "")
        timings: list[float] = []
        cold = 0.0
        queries: list[dict[str, Any]] = []
        size = 0
        for attempt in range(loads + 1):
            with CaptureQueriesContext(connection) as captured:
                started = time.perf_counter()
                response = client.get(url, secure=True)
                elapsed = (time.perf_counter() - started) * 1000
            if response.status_code != 200:
                raise RuntimeError(f"GET {url} answered {response.status_code}")
            size = len(response.content)
            if attempt == 0:
                cold = elapsed
            else:
                timings.append(elapsed)
            queries = list(captured.captured_queries)
        slowest = max(queries, key=lambda q: float(q["time"]))
        result = {
            "page": name,
            "url": url,
            "loads": loads,
            "median_ms": round(statistics.median(timings), 1),
            "min_ms": round(min(timings), 1),
            "max_ms": round(max(timings), 1),
            "cold_ms": round(cold, 1),
            "queries": len(queries),
            "sql_ms": round(sum(float(q["time"]) for q in queries) * 1000, 1),
            "slowest_query_ms": round(float(slowest["time"]) * 1000, 1),
            "slowest_query": slowest["sql"][:300],
            "response_bytes": size,
        }
        log(
            f"  {name}: median {result['median_ms']} ms, {result['queries']} queries "
            f"(slowest {result['slowest_query_ms']} ms)"
        )
        results.append(result)
    return results


def _insert_process(queue: Any, index: int, count: int, barrier: Any) -> None:
    try:
        setup_django()
        from django.db import connection

        from accounts.models import User
        from audit.context import AuditContext
        from audit.services import audit_record

        users = list(User.objects.filter(username__startswith="user").order_by("pk")[:64])
        user = users[index % len(users)]
        context = AuditContext(
            actor=user,
            ip=f"10.1.{index}.10",
            user_agent=USER_AGENTS[index % len(USER_AGENTS)],
            session_hash=f"{index:064x}",
            request_id=f"bench-writer-{index}",
        )
        conversation = ("conversation", str(uuid.uuid4()))

        def insert(n: int) -> None:
            audit_record(
                action="message.sent",
                target=conversation,
                details={"message": str(uuid.uuid4()), "model": "gpt-4o", "characters": n},
                context=context,
            )

        connection.ensure_connection()
        for n in range(3):  # warm up: first queries, code paths; not counted
            insert(n)
        barrier.wait(timeout=300)
        latencies: list[float] = []
        started = time.monotonic()
        for n in range(count):
            before = time.perf_counter()
            insert(n)
            latencies.append(time.perf_counter() - before)
        finished = time.monotonic()
        queue.put({"started": started, "finished": finished, "latencies": latencies})
    except BaseException:
        queue.put({"error": traceback.format_exc()})


def flush_dirty_buffers() -> float | None:
    """CHECKPOINT, so that inserts are not measured against the seeding's write-back."""
    from django.db import DatabaseError, connection

    started = time.perf_counter()
    try:
        with connection.cursor() as cursor:
            cursor.execute("CHECKPOINT")
    except DatabaseError as exc:  # not a superuser: measure as things are
        log(f"  CHECKPOINT refused ({exc}); inserts measured without it")
        return None
    return round(time.perf_counter() - started, 2)


def inserts(writers: int, events: int, path: str) -> dict[str, Any]:
    from audit.models import AuditEvent, PendingAuditEvent
    from audit.services import audit_chain_flush

    table_events = AuditEvent.objects.count()
    head_before = (
        AuditEvent.objects.order_by("-sequence").values_list("sequence", flat=True).first() or 0
    )
    checkpoint_seconds = flush_dirty_buffers()
    per_writer = max(1, events // writers)
    log(f"inserting {per_writer * writers:,} events with {writers} writer(s), {path} path…")
    os.environ["AUDIT_WRITE_PATH"] = path  # read by the spawned writers' settings
    barrier = multiprocessing.get_context("spawn").Barrier(writers)
    try:
        results = run_processes(_insert_process, [(i, per_writer, barrier) for i in range(writers)])
    finally:
        os.environ.pop("AUDIT_WRITE_PATH", None)
    # Whatever a writer's chainer left behind (none, normally) is chained before the clock stops.
    # audit_chain_flush waits for the chain lock: an exiting writer may still hold it.
    pending_after = PendingAuditEvent.objects.count()
    drain_started = time.monotonic()
    audit_chain_flush()
    drain_seconds = time.monotonic() - drain_started
    latencies = [latency * 1000 for r in results for latency in r["latencies"]]
    wall = max(r["finished"] for r in results) - min(r["started"] for r in results)
    wall += drain_seconds if pending_after else 0.0
    first = head_before + 1
    sequences = list(
        AuditEvent.objects.filter(sequence__gte=first)
        .order_by("sequence")
        .values_list("sequence", flat=True)
    )
    # 3 warm-up events per writer come before the timed ones.
    expected = len(latencies) + 3 * writers
    gapless = sequences == list(range(first, first + expected))
    result = {
        "writers": writers,
        "path": path,
        "events": len(latencies),
        "table_events_before": table_events,
        "checkpoint_before_seconds": checkpoint_seconds,
        "seconds": round(wall, 2),
        "events_per_second": round(len(latencies) / wall, 1),
        "p50_ms": round(percentile(latencies, 50), 2),
        "p95_ms": round(percentile(latencies, 95), 2),
        "p99_ms": round(percentile(latencies, 99), 2),
        "max_ms": round(max(latencies), 2),
        "pending_after_writers": pending_after,
        "chained_gapless": gapless,
    }
    log(
        f"  {writers} writer(s), {path}: {result['events_per_second']:,} events/s, "
        f"p50 {result['p50_ms']} ms, p95 {result['p95_ms']} ms, pending after {pending_after}, "
        f"gapless {gapless}"
    )
    return result


def chain_facts() -> dict[str, Any]:
    """Row count against the head's sequence (a linear chain has no gaps), and table sizes."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*), max(sequence), pg_size_pretty(pg_relation_size('audit_auditevent')),"
            " pg_size_pretty(pg_indexes_size('audit_auditevent')),"
            " pg_size_pretty(pg_total_relation_size('audit_auditevent'))"
            " FROM audit_auditevent"
        )
        rows, head, table, indexes, total = cursor.fetchone() or (0, 0, "", "", "")
        cursor.execute(
            "SELECT count(*) FROM pg_trigger WHERE tgname = 'audit_auditevent_append_only'"
        )
        (triggers,) = cursor.fetchone() or (0,)
    return {
        "rows": rows,
        "head_sequence": head,
        "linear": rows == head,
        "table_size": table,
        "indexes_size": indexes,
        "total_size": total,
        "append_only_trigger": triggers == 1,
    }


# --- Report ------------------------------------------------------------------------------------


def code_line(results: dict[str, Any]) -> str:
    def describe(state: dict[str, Any]) -> str:
        if not state:
            return "unknown (no git)"
        modified = state["modified"]
        extra = f" + {len(modified)} modified file(s): {', '.join(modified)}" if modified else ""
        return f"commit {state['commit']}{extra}"

    line = f"Code measured: {describe(results['git'])}."
    if results["git_at_end"] != results["git"]:
        line += (
            f" **The code changed during the run** (at the end: {describe(results['git_at_end'])})"
            ": these figures may mix two versions."
        )
    return line


def render_markdown(results: dict[str, Any]) -> str:
    m, pg, s = results["machine"], results["postgres"], results["seed"]
    lines = [
        "# Audit trail benchmark",
        "",
        f"`make bench` (bench/audit_bench.py), {m['date']}, {s['events']:,} events seeded.",
        "",
        "## Machine",
        "",
        "| CPU | Memory | Python | Django | PostgreSQL | shared_buffers | synchronous_commit |",
        "|---|---|---|---|---|---|---|",
        f"| {m['cpu_count']} × {m['cpu_model'] or '?'} | {m['memory_gb']} GB | {m['python']} "
        f"| {m['django']} | {pg['server_version']} | {pg['shared_buffers']} "
        f"| {pg['synchronous_commit']} |",
        "",
        f"Platform {m['platform']}; load average at start {m['load_average_at_start']}; "
        f"other active PostgreSQL clients at start: {pg['other_active_connections_at_start']}.",
        "",
        code_line(results),
        "",
        "## Inserts: `audit_record`, one event per transaction",
        "",
        "Events/s counts events in the chain when the clock stops (a writer's latency includes "
        "the chaining it does after its commit). `direct`: chained in the writer's transaction "
        "under the chain lock; `deferred`: recorded without the lock, chained after the commit "
        "(AUDIT_WRITE_PATH; docs/audit.md).",
        "",
        "| Writers | Path | Events | Events/s | p50 ms | p95 ms | p99 ms | max ms | Rows before "
        "| Left pending | Gapless |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in results["inserts"]:
        lines.append(
            f"| {r['writers']} | {r.get('path', 'direct')} | {r['events']:,} "
            f"| {r['events_per_second']:,} | {r['p50_ms']} | {r['p95_ms']} | {r['p99_ms']} "
            f"| {r['max_ms']} | {r['table_events_before']:,} | {r.get('pending_after_writers', 0)} "
            f"| {'yes' if r.get('chained_gapless', True) else 'NO'} |"
        )
    lines += [
        "",
        "## Verification: `audit_chain_verify()` (fresh process each)",
        "",
        "| Run | Head | Events walked | Checkpoints | Seconds | Events/s | RSS after setup MB "
        "| Peak RSS MB | Load (1 min) after | Result |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in [*results["verify"], *results.get("verify_incremental", [])]:
        run = r.get("mode", "full")
        if run == "incremental":
            run += f" (from #{r['from_sequence']:,})"
        lines.append(
            f"| {run} | #{r.get('head_sequence', r['events']):,} | {r['events']:,} "
            f"| {r['checkpoints']} | {r['seconds']} | {r['events_per_second'] or 0:,} "
            f"| {r['rss_before_mb']} | {r['peak_rss_mb']} "
            f"| {r.get('load_average_1m_after', '?')} | {'OK' if r['ok'] else 'FAILED'} |"
        )
    lines += [
        "",
        "RSS is the verifying process's own high-water mark (VmHWM): after `django.setup()` and "
        "at the end of the walk. Seconds include recording the result (one audit event).",
        "",
        f"## Console list: `/admin/audit/auditevent/` at {results['seed']['events']:,} events",
        "",
        "| Page | Median ms | Min ms | Max ms | Cold ms | Queries | SQL ms | Slowest query ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results["changelist"]:
        lines.append(
            f"| {r['page']} (`{r['url'].removeprefix('/admin/audit/auditevent/') or '/'}`) "
            f"| {r['median_ms']} | {r['min_ms']} | {r['max_ms']} | {r['cold_ms']} "
            f"| {r['queries']} | {r['sql_ms']} | {r['slowest_query_ms']} |"
        )
    c = results["chain"]
    lines += [
        "",
        f"Median of {results['changelist'][0]['loads']} loads after one cold load; "
        "SQL ms and queries are from the last load.",
        "",
        "## Seeding and storage",
        "",
        f"- Seeded {s['events']:,} events with `audit_record_batch` in {s['seconds']} s "
        f"({s['events_per_second']:,} events/s), {s['checkpoints']} signed checkpoints, "
        f"spread over {s['span_days']} days; VACUUM ANALYZE {results['vacuum_seconds']} s.",
        f"- Table at the end: {c['rows']:,} rows (head #{c['head_sequence']:,}, "
        f"{'linear, no gaps' if c['linear'] else 'NOT linear'}); heap {c['table_size']}, "
        f"indexes {c['indexes_size']}, total {c['total_size']}.",
        f"- Append-only trigger installed: {'yes' if c['append_only_trigger'] else 'NO'}.",
        f"- Whole run: {results['total_seconds']} s.",
        "",
    ]
    return "\n".join(lines)


# --- Main --------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else "")
    parser.add_argument(
        "--events",
        type=int,
        default=int(os.environ.get("BENCH_AUDIT_EVENTS", "1000000")),
        help="events to seed (default: BENCH_AUDIT_EVENTS or 1,000,000)",
    )
    parser.add_argument(
        "--insert-events",
        type=int,
        default=int(os.environ.get("BENCH_INSERT_EVENTS", "8000")),
        help="events inserted per writer configuration (default: BENCH_INSERT_EVENTS or 8,000)",
    )
    parser.add_argument("--writers", default="1,8", help="writer counts (default: 1,8)")
    parser.add_argument(
        "--write-paths",
        default="direct,deferred",
        help="AUDIT_WRITE_PATH values to measure inserts on (default: direct,deferred)",
    )
    parser.add_argument("--users", type=int, default=300, help="people acting (default: 300)")
    parser.add_argument("--page-loads", type=int, default=5, help="timed loads per page")
    parser.add_argument("--output-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--keep-db", action="store_true", help=f"keep {DB_NAME} afterwards")
    args = parser.parse_args(argv)
    if args.events < 1000 or args.insert_events < 10 or args.page_loads < 1:
        parser.error("use at least 1,000 events, 10 insert events and 1 page load")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    writer_counts = [int(w) for w in args.writers.split(",") if w.strip()]
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
    log(f"PostgreSQL {pg['server_version']}; recreating database {DB_NAME}")
    recreate_database()
    setup_django()
    from django.db import connections

    results: dict[str, Any] = {"machine": machine_facts(), "postgres": pg, "git": git_state()}

    try:
        started = time.perf_counter()
        migrate()
        log(f"migrated in {time.perf_counter() - started:.1f} s")
        users, admins, superuser = create_users(args.users)
        log(f"created {len(users)} users, {len(admins)} console admins and a superuser")

        verify_results: list[dict[str, Any]] = []
        stages = {args.events // 10, args.events} if args.events >= 10_000 else {args.events}

        def on_stage(done: int) -> None:
            # As autovacuum would have by then: visibility map set, statistics fresh.
            results["vacuum_seconds"] = seconds = vacuum_analyze()
            log(f"VACUUM ANALYZE in {seconds} s")
            verify_results.append(verify(done))

        log(f"seeding {args.events:,} events…")
        traffic = Traffic(users, admins, SEED_SEED)
        results["seed"] = seed(traffic, args.events, stages, on_stage)
        results["verify"] = verify_results
        log("loading the console's audit list…")
        results["changelist"] = changelist(superuser, users[0].email, args.events, args.page_loads)
        paths = [p.strip() for p in args.write_paths.split(",") if p.strip()]
        results["inserts"] = [
            inserts(w, args.insert_events, path) for path in paths for w in writer_counts
        ]
        # What the scheduled incremental run walks: the events since the last marker.
        results["verify_incremental"] = [verify(args.events, incremental=True)]
        results["chain"] = chain_facts()
        results["total_seconds"] = round(time.monotonic() - _STARTED, 1)
        results["git_at_end"] = git_state()
        if results["git_at_end"] != results["git"]:
            # Other people edit the tree: modules and templates load lazily, so the figures
            # may mix two versions of the code.
            log("WARNING: the code changed during the run; the figures may mix versions")
    finally:
        connections.close_all()
        if not args.keep_db:
            drop_database()

    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / "audit.json").write_text(json.dumps(results, indent=2) + "\n", "utf-8")
    markdown = render_markdown(results)
    (args.output_dir / "audit.md").write_text(markdown, "utf-8")
    print()
    print(markdown)
    log(f"results written to {args.output_dir}/audit.json and audit.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
