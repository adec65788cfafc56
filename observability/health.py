"""Liveness and readiness probes (`/healthz`, `/readyz`), answered by ProbeMiddleware.

`/healthz` says the process answers and nothing more: no I/O, so a slow database never gets
a healthy process restarted. `/readyz` says whether this process can serve a chat turn now:

* `database`: SELECT 1 on the default database (through the connection pool when there is
  one, waiting at most the check timeout for a connection);
* `migrations`: none unapplied (a positive answer is kept for the life of the process:
  migrations do not un-apply);
* `redis` (when REDIS_URL is set): PING;
* `broker` (Celery dispatch): a connection to CELERY_BROKER_URL (Redis or RabbitMQ);
* `workers` (Celery dispatch, unless READINESS_REQUIRE_WORKERS is false): at least one
  Celery worker with a current heartbeat (observability/heartbeat.py). In the embedded
  default replies run on the server's own threads, and the check says so.

The checks run at once on a small thread pool, each bounded by
READINESS_CHECK_TIMEOUT_SECONDS. A failure is named with a fixed, short reason ("connection
refused", "timed out", …), never the exception's text: driver messages quote host names and
connection strings, and the probe answers anyone who can reach the pod.
"""

from __future__ import annotations

import concurrent.futures
import errno
import logging
import math
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connections
from django.db.migrations.exceptions import InconsistentMigrationHistory
from django.db.migrations.executor import MigrationExecutor
from django.http import HttpRequest, HttpResponse, JsonResponse

from enterprise_ai.logging import Throttled

logger = logging.getLogger(__name__)
# An outage fails every probe the same way: one line every 10 s.
warn = Throttled(logger)

#: SCAN calls (of up to 1,000 keys each) spent looking for worker keys, at most.
_MAX_SCAN_CALLS = 200
#: A readiness result is reused for this long, so that a burst of probes (or someone
#: hammering the public /readyz) costs one round of checks a second.
RESULT_REUSE_SECONDS = 1.0


class CheckFailed(Exception):
    """A check's answer is "not ready"; the message is safe to show (no secrets)."""


@dataclass(frozen=True)
class Outcome:
    ok: bool
    ms: int
    error: str | None = None
    extra: dict[str, Any] | None = None

    def as_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"ok": self.ok, "ms": self.ms}
        if self.error is not None:
            body["error"] = self.error
        body.update(self.extra or {})
        return body


# --- The endpoints ------------------------------------------------------------------------


def healthz(request: HttpRequest) -> HttpResponse:
    """Liveness: the process answers. Says nothing about the database or the workers."""
    return JsonResponse({"status": "ok"})


def readyz(request: HttpRequest) -> HttpResponse:
    """Readiness: 200 when every check passes, else 503 naming the failed checks."""
    outcomes = readiness()
    failed = [name for name, outcome in outcomes.items() if not outcome.ok]
    checks = {name: outcome.as_json() for name, outcome in outcomes.items()}
    if not failed:
        return JsonResponse({"status": "ok", "checks": checks})
    warn.warning(
        "not ready: %s",
        ", ".join(f"{name} ({outcomes[name].error})" for name in failed),
    )
    response = JsonResponse(
        {"status": "unavailable", "failed": failed, "checks": checks}, status=503
    )
    # Logged above, once every 10 s: not as a server error on every probe (Django's
    # django.request logger would, and a probe runs every few seconds while unready).
    response._has_been_logged = True  # type: ignore[attr-defined]
    return response


_last_lock = threading.Lock()
_last: tuple[float, dict[str, Outcome]] | None = None


def readiness() -> dict[str, Outcome]:
    """Every check's outcome, by name, in a stable order (reused for RESULT_REUSE_SECONDS)."""
    global _last
    with _last_lock:
        if _last is not None and time.monotonic() - _last[0] < RESULT_REUSE_SECONDS:
            return _last[1]
        outcomes = _run_checks(_checks())
        _last = (time.monotonic(), outcomes)
        return outcomes


# --- Worker liveness (also read by the eai_workers_alive metric) ---------------------------


def workers_alive() -> int:
    """How many Celery workers have a current heartbeat (observability/heartbeat.py).

    One per worker node (`celery worker`), whatever its pool and concurrency. A worker counts
    until it shuts down, or for up to WORKER_HEARTBEAT_TTL_SECONDS after it died. Returns 0
    when replies are not dispatched to Celery (the embedded default: no workers exist).

    Raises redis.exceptions.RedisError (ConnectionError, TimeoutError, …) when Redis cannot
    be asked within READINESS_CHECK_TIMEOUT_SECONDS: the count is then unknown, not zero.
    """
    if settings.TASK_DISPATCH != "celery":
        return 0
    from observability import heartbeat

    client = heartbeat.redis_client()
    match = heartbeat.key_prefix().replace("[", "\\[").replace("*", "\\*") + "*"
    found: set[bytes | str] = set()
    cursor = 0
    for _ in range(_MAX_SCAN_CALLS):
        cursor, keys = client.scan(cursor=cursor, match=match, count=1000)
        found.update(keys)
        if cursor == 0:
            break
    return len(found)


# --- The checks ---------------------------------------------------------------------------


Check = Callable[[], dict[str, Outcome]]


def _checks() -> dict[tuple[str, ...], Check]:
    """The checks that apply to this configuration, by the names each one answers for.

    One check answers both `database` and `migrations`: one connection, and no verdict on
    migrations without a database."""
    checks: dict[tuple[str, ...], Check] = {("database", "migrations"): _database_and_migrations}
    if settings.REDIS_URL:
        checks[("redis",)] = _single("redis", _check_redis)
    if settings.TASK_DISPATCH == "celery":
        checks[("broker",)] = _single("broker", _check_broker)
        if settings.READINESS_REQUIRE_WORKERS:
            checks[("workers",)] = _single("workers", _check_workers)
    else:
        checks[("workers",)] = _single("workers", _check_in_process_dispatch)
    return checks


def _check_database() -> dict[str, Any] | None:
    connection = connections[DEFAULT_DB_ALIAS]
    pool = getattr(connection, "pool", None)  # PostgreSQL with OPTIONS["pool"]
    if pool is not None:
        _select_one_pooled(pool)
        return None
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    finally:
        connection.close()  # this thread runs other checks next
    return None


def _select_one_pooled(pool: Any) -> None:
    """SELECT 1 on a connection of the process's pool, waiting the check's timeout for one
    (Django would wait DATABASE_POOL_TIMEOUT). The pool checks a connection as it hands it
    out, and takes it back after."""
    from psycopg_pool import PoolTimeout

    pool.open(wait=False)
    try:
        with pool.connection(timeout=settings.READINESS_CHECK_TIMEOUT_SECONDS) as raw:
            raw.execute("SELECT 1")
        return
    except PoolTimeout:
        pass
    # Outside the except block, so that the diagnosis's own error does not chain to it.
    raise CheckFailed(_why_no_pooled_connection(pool))


def _why_no_pooled_connection(pool: Any) -> str:
    """The pool handed out no connection in time: one direct attempt tells a server that
    is unreachable (and why) from a pool whose connections are all in use."""
    import psycopg

    kwargs = {
        **pool.kwargs,
        "connect_timeout": max(2, math.ceil(settings.READINESS_CHECK_TIMEOUT_SECONDS)),
    }
    try:
        with psycopg.connect(pool.conninfo, **kwargs) as raw:
            raw.execute("SELECT 1")
    except Exception as exc:
        return _reason(exc)
    return "every pooled connection is in use (DATABASE_POOL_MAX_SIZE)"


_migrations_applied = False


def _check_migrations() -> dict[str, Any] | None:
    global _migrations_applied
    if _migrations_applied:
        return None
    connection = connections[DEFAULT_DB_ALIAS]
    try:
        executor = MigrationExecutor(connection)
        plan = executor.migration_plan(executor.loader.graph.leaf_nodes())
    except InconsistentMigrationHistory:
        raise CheckFailed("the migration history is inconsistent") from None
    finally:
        connection.close()
    if plan:
        names = [f"{migration.app_label}.{migration.name}" for migration, _ in plan]
        shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        raise CheckFailed(f"{len(names)} unapplied: {shown}")
    _migrations_applied = True
    return None


def _check_redis() -> dict[str, Any] | None:
    from observability import heartbeat

    heartbeat.redis_client().ping()
    return None


def _check_broker() -> dict[str, Any] | None:
    from enterprise_ai.celery import app

    timeout = settings.READINESS_CHECK_TIMEOUT_SECONDS
    transport_options = {
        **(app.conf.broker_transport_options or {}),
        # Redis transport: bounded socket waits, no retries, one connection.
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "retry_on_timeout": False,
        "max_connections": 2,
    }
    # The URL from settings (not the app's cached configuration), the app's transport class,
    # TLS and transport options otherwise. A fresh connection: the publishing pool's
    # connections are left alone. For Redis connecting means a PING; for AMQP the handshake.
    with app.connection_for_write(
        settings.CELERY_BROKER_URL,
        connect_timeout=timeout,
        transport_options=transport_options,
        heartbeat=0,
    ) as connection:
        connection.ensure_connection(max_retries=0, timeout=math.ceil(timeout))
        connection.default_channel  # noqa: B018 - Redis: the channel is what PINGs
    return None


def _check_workers() -> dict[str, Any] | None:
    count = workers_alive()
    if count < 1:
        raise CheckFailed(
            "no Celery worker has a current heartbeat "
            f"(within {settings.WORKER_HEARTBEAT_TTL_SECONDS:g} s)"
        )
    return {"count": count}


def _check_in_process_dispatch() -> dict[str, Any] | None:
    # The embedded default: replies run on this server's own threads, alive with it.
    return {"dispatch": "in-process"}


# --- Running them ---------------------------------------------------------------------------


_executor_lock = threading.Lock()
_executor: concurrent.futures.ThreadPoolExecutor | None = None


def _pool() -> concurrent.futures.ThreadPoolExecutor:
    """The checks' threads: few, kept, and bounded (a hung check occupies one; when all are
    occupied later checks wait in line and are reported as timed out)."""
    global _executor
    with _executor_lock:
        if _executor is None:
            _executor = concurrent.futures.ThreadPoolExecutor(
                max_workers=8, thread_name_prefix="readyz"
            )
        return _executor


def _timed(check: Callable[[], dict[str, Any] | None]) -> Outcome:
    started = time.monotonic()
    try:
        extra = check()
    except Exception as exc:
        return Outcome(False, _ms_since(started), _reason(exc))
    return Outcome(True, _ms_since(started), extra=extra)


def _single(name: str, check: Callable[[], dict[str, Any] | None]) -> Check:
    return lambda: {name: _timed(check)}


def _database_and_migrations() -> dict[str, Outcome]:
    database = _timed(_check_database)
    if not database.ok and not _migrations_applied:
        skipped = Outcome(False, 0, "not checked: the database is unavailable")
        return {"database": database, "migrations": skipped}
    # Applied migrations stay applied: once seen, a database outage does not fail them too.
    return {"database": database, "migrations": _timed(_check_migrations)}


def _run_checks(checks: dict[tuple[str, ...], Check]) -> dict[str, Outcome]:
    timeout = settings.READINESS_CHECK_TIMEOUT_SECONDS
    pool = _pool()
    futures = {names: pool.submit(check) for names, check in checks.items()}
    # The database check may take two steps (a connection, then the migration table): the
    # wait is two timeouts, plus a little for thread hand-over. Checks that are still
    # running then are reported as failed; they finish (bounded) on their own.
    concurrent.futures.wait(futures.values(), timeout=2 * timeout + 0.25)
    outcomes: dict[str, Outcome] = {}
    for names, future in futures.items():
        if future.done():
            outcomes.update(future.result())
            continue
        late = f"no answer within {timeout:g} s"
        for name in names:
            outcomes[name] = Outcome(False, round(timeout * 1000), late)
    return outcomes


def _ms_since(started: float) -> int:
    return round((time.monotonic() - started) * 1000)


# --- Safe reasons ---------------------------------------------------------------------------

_MESSAGES = (
    # (text in a driver's message, what the probe says): first match wins.
    ("password authentication failed", "authentication failed"),
    ("authentication", "authentication failed"),
    ("no password supplied", "authentication failed"),
    ("access_refused", "authentication failed"),
    ("connection refused", "connection refused"),
    ("could not translate host name", "host name not resolved"),
    ("name or service not known", "host name not resolved"),
    ("temporary failure in name resolution", "host name not resolved"),
    ("no route to host", "no route to host"),
    ("timeout", "timed out"),
    ("timed out", "timed out"),
    ("too many connections", "too many connections"),
    ("too many clients", "too many connections"),
    ("does not exist", "database or role does not exist"),
    ("the database system is starting up", "database starting up"),
    ("the database system is shutting down", "database shutting down"),
    ("in recovery mode", "database in recovery"),
    ("is loading the dataset", "loading its data set"),
    ("server closed the connection", "connection closed by the server"),
    ("connection reset", "connection reset"),
    ("connection closed", "connection closed by the server"),
)


def _reason(exc: BaseException) -> str:
    """A short reason for a failed check that names no host, user, password or URL."""
    if isinstance(exc, CheckFailed):
        return str(exc)
    # Outermost first: what went wrong, before what it was handling at the time.
    for link in _chain(exc):
        kind = type(link).__name__
        if kind == "AuthenticationError":  # redis
            return "authentication failed"
        if kind == "PoolTimeout":  # psycopg_pool
            return "no pooled connection within the timeout"
        if kind == "TimeoutError" or isinstance(link, socket.timeout):  # redis-py's, builtin
            return "timed out"
        if isinstance(link, ConnectionRefusedError):
            return "connection refused"
        if isinstance(link, socket.gaierror):
            return "host name not resolved"
        text = str(link).lower()
        for needle, said in _MESSAGES:
            if needle in text:
                return said
        if isinstance(link, OSError) and link.errno is not None and link.errno in errno.errorcode:
            return f"network error ({errno.errorcode[link.errno]})"
    return f"failed ({type(exc).__name__})"


def _chain(exc: BaseException) -> list[BaseException]:
    """The exception and its causes and contexts, outermost first."""
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen and len(seen) < 10:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen
