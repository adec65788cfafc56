"""The production path as separate real processes, for tests that break it on purpose.

Each piece runs as operators run it: daphne (`manage.py serve`), Celery workers on the thread
pool, Celery beat, against PostgreSQL and Redis (or RabbitMQ as the broker). A test starts
what it needs, kills what it wants, and reads each process's log (tests/production/
test_faults.py adds every log's tail to a failing test's report).

    database = Database.create(pg_settings)          # CREATE DATABASE, once per module
    stack = Stack(tmp_path, base_env(database_url=database.url, redis_url=..., ...))
    stack.manage("migrate", "--noinput")
    web, worker = stack.start_web(), stack.start_worker(concurrency=8, wait=False)
    stack.wait_ready(worker)
    cookie = sign_in(web.base_url, USERNAME, PASSWORD)
    async with await ChatSocket.connect(web.base_url, cookie) as chat: ...
    worker.kill()                                    # SIGKILL, the whole process group
    stack.close()                                    # every process ends, also on failure

Services the tests use and that may be missing: `redis_server_missing()` and
`rabbitmq_missing()` say why; the caller skips (or fails under CI) with
conftest.service_missing.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import http.client
import http.cookiejar
import json
import os
import re
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlparse

import psycopg
from psycopg import sql
from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.typing import Origin

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent

SECRET_KEY = "faults-only-secret-key-not-for-production-use-0123456789"
AUDIT_HMAC_KEY = "faults-only-audit-checkpoint-key-not-for-production-0123"

#: Variables of the test run's own environment that never reach a launched process: each
#: process gets exactly the configuration the test gives it.
_NOT_INHERITED = ("DATABASE_", "REDIS_", "CELERY_", "CHAT_", "CHANNEL_LAYER_", "SECURE_")
_NOT_INHERITED_NAMES = {
    "SECRET_KEY",
    "AUDIT_HMAC_KEY",
    "ENCRYPTION_MASTER_KEY",
    "ENCRYPTION_KMS_KEY_ID",
    "AUDIT_ANCHOR_S3_BUCKET",
    "ALLOWED_HOSTS",
    "LOCAL_DATA_DIR",
    "OPENAI_COMPATIBLE_BASE_URL",
    "OPENAI_COMPATIBLE_API_KEY",
}


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_open(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        socket.create_connection((host, port), timeout).close()
    except OSError:
        return False
    return True


def wait_until(
    condition: Callable[[], Any], *, timeout: float, interval: float = 0.1, what: str = ""
) -> Any:
    """Poll `condition` until it returns something true; return it. AssertionError on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:g}s: {what or condition}")
        time.sleep(interval)


def base_env(
    *,
    database_url: str,
    redis_url: str,
    key_prefix: str,
    data_dir: Path,
    **overrides: str,
) -> dict[str, str]:
    """The production path's environment (as in docs/configuration.md), over plain HTTP."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(_NOT_INHERITED) and key not in _NOT_INHERITED_NAMES
    }
    env.update(
        DJANGO_SETTINGS_MODULE="enterprise_ai.settings",
        PYTHONUNBUFFERED="1",
        LOCAL_DATA_DIR=str(data_dir),
        DATABASE_URL=database_url,
        REDIS_URL=redis_url,
        REDIS_KEY_PREFIX=key_prefix,
        SECRET_KEY=SECRET_KEY,
        AUDIT_HMAC_KEY=AUDIT_HMAC_KEY,
        ENCRYPTION_MASTER_KEY="test-only-encryption-key-not-for-production",
        ALLOWED_HOSTS="localhost,127.0.0.1",
        SECURE_SSL_REDIRECT="false",
        SECURE_COOKIES="false",
        SECURE_HSTS_SECONDS="0",
        DEBUG="false",
        LOG_LEVEL="INFO",
        # The tests connect as PostgreSQL's superuser, which the processes refuse otherwise
        # (enterprise_ai/db_role.py); tests/production/test_database_roles.py proves the
        # documented roles instead.
        DATABASE_PRIVILEGED_ROLE="allow",
    )
    env.update(overrides)
    return env


# --- Processes ------------------------------------------------------------------------------


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """Linux: the child is killed if the test run dies without its teardown (PR_SET_PDEATHSIG)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)


def _child_setup() -> Callable[[], None] | None:
    # Only for children of the main thread: the signal fires when the parent *thread* ends.
    return _die_with_parent if threading.current_thread() is threading.main_thread() else None


class Process:
    """One launched process: its own process group, stdout and stderr in `log_path`."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        *,
        env: Mapping[str, str],
        log_path: Path,
        ready: Callable[[Process], bool] | None = None,
    ) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self._ready = ready
        with log_path.open("ab") as log:
            log.write(f"$ {' '.join(argv)}\n".encode())
            log.flush()
            self.popen = subprocess.Popen(
                argv,
                cwd=ROOT,
                env=dict(env),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=_child_setup(),
            )

    def __repr__(self) -> str:
        return f"<Process {self.name} pid={self.pid} alive={self.alive}>"

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def alive(self) -> bool:
        return self.popen.poll() is None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_size(self) -> int:
        """Where the log ends now: pass it as `since` to wait only for what comes next."""
        try:
            return self.log_path.stat().st_size
        except FileNotFoundError:
            return 0

    def tail(self, lines: int = 60) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def wait_for_log(self, pattern: str, *, timeout: float, since: int = 0) -> re.Match[str]:
        """The first match of the regular expression `pattern` in the log after byte `since`.

        AssertionError (with the log's tail) on timeout or when the process exits first.
        """
        compiled = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            try:
                with self.log_path.open("rb") as log:
                    log.seek(since)
                    text = log.read().decode(errors="replace")
            except FileNotFoundError:
                text = ""
            match = compiled.search(text)
            if match:
                return match
            if not self.alive:
                raise AssertionError(
                    f"{self.name} exited ({self.popen.returncode}) before logging {pattern!r}:\n"
                    f"{self.tail()}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{self.name} did not log {pattern!r} within {timeout:g}s:\n{self.tail()}"
                )
            time.sleep(0.1)

    def is_ready(self) -> bool:
        return self._ready is None or self._ready(self)

    def wait_ready(self, timeout: float = 60) -> Process:
        """Wait until the process serves (its readiness check passes)."""
        deadline = time.monotonic() + timeout
        while not self.is_ready():
            if not self.alive:
                raise AssertionError(
                    f"{self.name} exited ({self.popen.returncode}) before it was ready:\n"
                    f"{self.tail()}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name} not ready within {timeout:g}s:\n{self.tail()}")
            time.sleep(0.1)
        return self

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send `sig` (default SIGKILL) to the process and all its children, and reap it."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, sig)
        if sig == signal.SIGKILL:
            self.popen.wait(timeout=10)

    def stop(self, timeout: float = 3) -> None:
        """SIGTERM, then SIGKILL whatever is left after `timeout` seconds."""
        if self.alive:
            self.kill(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout=timeout)
        # Children may outlive a leader that exited: end the whole group.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=10)


class WebProcess(Process):
    """`manage.py serve` (daphne) on 127.0.0.1:`port`."""

    def __init__(self, name: str, port: int, **kwargs: Any) -> None:
        self.port = port
        self.base_url = f"http://127.0.0.1:{port}"
        super().__init__(name, **kwargs)


def _web_ready(process: Process) -> bool:
    assert isinstance(process, WebProcess)
    try:
        with urllib.request.urlopen(f"{process.base_url}/healthz", timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def _logged(pattern: str) -> Callable[[Process], bool]:
    compiled = re.compile(pattern)
    return lambda process: bool(compiled.search(process.log()))


class Stack:
    """The processes of one test, all sharing one environment (plus per-process extras).

    Every process started here is ended by `close()` (also a context manager), whatever
    happened; `report()` gives each log's path and tail for a failure message.
    """

    def __init__(self, workdir: Path, env: Mapping[str, str]) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.env = dict(env)
        self.processes: list[Process] = []
        self._names: dict[str, int] = {}

    def __enter__(self) -> Stack:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _log_path(self, name: str) -> Path:
        count = self._names.get(name, 0)
        self._names[name] = count + 1
        return self.workdir / (f"{name}.log" if count == 0 else f"{name}-{count + 1}.log")

    def _env(self, extra_env: Mapping[str, str] | None) -> dict[str, str]:
        return {**self.env, **(extra_env or {})}

    def manage(
        self, *args: str, extra_env: Mapping[str, str] | None = None, timeout: float = 180
    ) -> str:
        """Run `manage.py <args>` to completion; its output. AssertionError if it fails."""
        result = subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=ROOT,
            env=self._env(extra_env),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if result.returncode != 0:
            raise AssertionError(
                f"manage.py {' '.join(args)} failed ({result.returncode}):\n"
                f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
            )
        return result.stdout

    def start(
        self,
        name: str,
        argv: list[str],
        *,
        extra_env: Mapping[str, str] | None = None,
        ready: Callable[[Process], bool] | None = None,
        wait: bool = True,
        timeout: float = 60,
    ) -> Process:
        process = Process(
            name, argv, env=self._env(extra_env), log_path=self._log_path(name), ready=ready
        )
        self.processes.append(process)
        if wait:
            process.wait_ready(timeout)
        return process

    def start_web(
        self,
        name: str = "web",
        *,
        port: int | None = None,
        extra_env: Mapping[str, str] | None = None,
        wait: bool = True,
        timeout: float = 60,
    ) -> WebProcess:
        """daphne as `make run` serves it: `manage.py serve --host 127.0.0.1 --port P`.

        Ready when /healthz answers 200.
        """
        port = port or free_port()
        argv = [sys.executable, "manage.py", "serve", "--host", "127.0.0.1", "--port", str(port)]
        process = WebProcess(
            name,
            port,
            argv=argv,
            env=self._env(extra_env),
            log_path=self._log_path(name),
            ready=_web_ready,
        )
        self.processes.append(process)
        if wait:
            process.wait_ready(timeout)
        return process

    def start_worker(
        self,
        name: str = "worker",
        *,
        concurrency: int = 8,
        pool: str = "threads",
        queues: str = "llm,default",
        extra_env: Mapping[str, str] | None = None,
        wait: bool = True,
        timeout: float = 60,
    ) -> Process:
        """One Celery worker on the thread pool (`--pool threads`, or `pool`), logging at INFO.

        Ready when Celery logs `<node> ready.` (it consumes from then on). Each worker gets
        its own node name, so several can run side by side.
        """
        argv = [
            str(BIN / "celery"), "-A", "enterprise_ai", "worker",
            "-Q", queues, "--pool", pool, "--concurrency", str(concurrency),
            "--loglevel=INFO", "-n", f"{name}-{secrets.token_hex(3)}@%h",
            "--without-gossip", "--without-mingle",
        ]  # fmt: skip
        return self.start(
            name,
            argv,
            extra_env=extra_env,
            ready=_logged(r"@\S+ ready\."),
            wait=wait,
            timeout=timeout,
        )

    def start_beat(
        self,
        name: str = "beat",
        *,
        extra_env: Mapping[str, str] | None = None,
        wait: bool = True,
        timeout: float = 60,
    ) -> Process:
        """Celery beat with its schedule file in this stack's directory. Ready once started."""
        argv = [
            str(BIN / "celery"), "-A", "enterprise_ai", "beat", "--loglevel=INFO",
            "--schedule", str(self.workdir / f"{name}-schedule"),
            "--pidfile", str(self.workdir / f"{name}.pid"),
        ]  # fmt: skip
        return self.start(
            name,
            argv,
            extra_env=extra_env,
            ready=_logged(r"beat: Starting"),
            wait=wait,
            timeout=timeout,
        )

    def wait_ready(self, *processes: Process, timeout: float = 60) -> None:
        """Wait for processes started with `wait=False` (started together, ready sooner)."""
        deadline = time.monotonic() + timeout
        for process in processes:
            process.wait_ready(max(1.0, deadline - time.monotonic()))

    def close(self, grace: float = 3) -> None:
        """End every process: SIGTERM to all, SIGKILL to what is left after `grace` seconds."""
        for process in self.processes:
            if process.alive:
                process.kill(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for process in self.processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.popen.wait(timeout=max(0.0, deadline - time.monotonic()))
        for process in self.processes:
            process.stop(timeout=0)

    def states(self) -> str:
        """Which processes run and which exited (with their exit codes), in one line."""
        return ", ".join(
            f"{p.name}: {'running' if p.alive else f'exited {p.popen.returncode}'}"
            for p in self.processes
        )

    def report(self, lines: int = 80) -> str:
        """Each process's command, state, log path and log tail."""
        parts = []
        for process in self.processes:
            state = "running" if process.alive else f"exited {process.popen.returncode}"
            parts.append(
                f"===== {process.name} (pid {process.pid}, {state}) log: {process.log_path}\n"
                f"{process.tail(lines)}"
            )
        return "\n".join(parts) or "(no processes)"


# --- PostgreSQL -------------------------------------------------------------------------------


class Database:
    """A PostgreSQL database of the test's own, created empty and dropped at the end.

    Queries here use a fresh autocommit connection each, so they survive the test killing
    every other connection to the database.
    """

    def __init__(self, *, host: str, port: int, user: str, password: str, name: str) -> None:
        self.host, self.port, self.user, self.password, self.name = host, port, user, password, name

    @classmethod
    def create(cls, settings_db: Mapping[str, Any], prefix: str = "eai_faults") -> Database:
        """CREATE DATABASE `<prefix>_<random>` on the server of Django's `settings_db`."""
        database = cls(
            host=str(settings_db.get("HOST") or "127.0.0.1"),
            port=int(settings_db.get("PORT") or 5432),
            user=str(settings_db.get("USER") or "postgres"),
            password=str(settings_db.get("PASSWORD") or ""),
            name=f"{prefix}_{os.getpid()}_{secrets.token_hex(3)}",
        )
        with database._connect("postgres") as admin:
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database.name)))
        return database

    def _connect(self, dbname: str | None = None) -> psycopg.Connection[Any]:
        return psycopg.connect(
            host=self.host,
            port=self.port,
            user=self.user,
            password=self.password or None,
            dbname=dbname or self.name,
            autocommit=True,
            connect_timeout=5,
        )

    @property
    def url(self) -> str:
        auth = urllib.parse.quote(self.user, safe="")
        if self.password:
            auth += ":" + urllib.parse.quote(self.password, safe="")
        return f"postgres://{auth}@{self.host}:{self.port}/{self.name}"

    def rows(self, query: str, *params: Any) -> list[tuple[Any, ...]]:
        with self._connect() as conn:
            return list(conn.execute(query.encode(), params or None).fetchall())

    def value(self, query: str, *params: Any) -> Any:
        rows = self.rows(query, *params)
        return rows[0][0] if rows else None

    def plaintext(self, stored: str, *, column: str = "conversations.message.content") -> str:
        """A transcript column's value as the product reads it (protection.fields): stored
        values are encrypted at rest, so a test reading rows over SQL opens them with this
        database's data key and the master key the processes share (ENCRYPTION_MASTER_KEY).
        "" stays ""."""
        from protection import datakeys, keyring

        if not stored:
            return stored
        assert datakeys.is_sealed(stored), f"{column} is stored in clear"

        def key_for(key_id: str) -> bytes:
            ((purpose, master_key_id, wrapped),) = self.rows(
                "SELECT purpose, master_key_id, wrapped FROM protection_datakey WHERE key_id = %s",
                key_id,
            )
            wrapped_key = keyring.WrappedKey(master_key_id=master_key_id, blob=bytes(wrapped))
            return keyring.unwrap(wrapped_key, purpose=f"{purpose}:{key_id}")

        return datakeys.open_bytes(stored, aad=column.encode(), key_for=key_for).decode("utf-8")

    def terminate_connections(self) -> int:
        """pg_terminate_backend every other connection to this database; how many there were."""
        with self._connect() as conn:
            cursor = conn.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()",
                (self.name,),
            )
            row = cursor.fetchone()
        return int(row[0]) if row else 0

    def drop(self) -> None:
        with self._connect("postgres") as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(self.name))
            )


# --- Redis --------------------------------------------------------------------------------------


class RedisDatabase:
    """One numbered database of a shared Redis, claimed for this run and emptied when freed.

    Celery's broker keys (`llm`, `unacked`, …) carry no prefix, so two runs must never share
    a database: a claim key (SET NX with a lifetime) marks it taken, and only an empty
    database is claimed.
    """

    CLAIM_KEY = "eai-faults:claimed-by"

    def __init__(self, url: str, db: int) -> None:
        parsed = urlparse(url)
        self.host = parsed.hostname or "127.0.0.1"
        self.port = parsed.port or 6379
        self.db = db
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/{self.db}"

    def client(self) -> Redis:
        return Redis(host=self.host, port=self.port, db=self.db, socket_timeout=5)

    @classmethod
    def claim(
        cls, url: str, candidates: Iterable[int] = (10, 11, 13, 14, 15), lifetime: int = 1800
    ) -> RedisDatabase:
        """Claim the first empty database among `candidates` (9 and 12 are the other tests')."""
        for db in candidates:
            database = cls(url, db)
            client = database.client()
            if client.set(cls.CLAIM_KEY, database.owner, nx=True, ex=lifetime):
                if client.dbsize() == 1:
                    return database
                client.delete(cls.CLAIM_KEY)  # someone's data without a claim: leave it
        raise RuntimeError(f"no free Redis database among {list(candidates)} at {url}")

    def flush(self) -> None:
        """Empty the database (keeping the claim)."""
        client = self.client()
        client.flushdb()
        client.set(self.CLAIM_KEY, self.owner, ex=1800)

    def release(self) -> None:
        client = self.client()
        if client.get(self.CLAIM_KEY) == self.owner.encode():
            client.flushdb()


@contextlib.contextmanager
def launcher(request: Any, workdir: Path, env: Mapping[str, str]) -> Iterator[Callable[..., Stack]]:
    """launch(**extra_env) -> a new Stack under `workdir` with `env` plus the extras. At the
    end every process of every such stack is ended, and when the test (`request`'s node)
    failed each process's log tail is added to its report (the logs stay in `workdir`)."""
    stacks: list[Stack] = []

    def make(**extra_env: str) -> Stack:
        stack = Stack(workdir / f"stack-{len(stacks) + 1}", {**env, **extra_env})
        stacks.append(stack)
        return stack

    try:
        yield make
    finally:
        for stack in stacks:
            stack.close()
        report = getattr(request.node, "rep_call", None)
        if report is not None and report.failed:
            logs = "\n".join(stack.report() for stack in stacks)
            report.sections.append(("process logs", f"(logs in {workdir})\n{logs}"))


@contextlib.contextmanager
def own_services(prefix: str) -> Iterator[tuple[Database, RedisDatabase]]:
    """A PostgreSQL database (`<prefix>_…`, on the server of Django's settings) and a Redis
    database of the caller's own; dropped and released afterwards. When either cannot be
    had the test is skipped with the reason (failed under CI=true)."""
    from django.conf import settings

    from conftest import service_missing

    try:
        database = Database.create(settings.DATABASES["default"], prefix=prefix)
    except psycopg.Error as exc:
        service_missing(f"cannot create a PostgreSQL database: {exc}")
    try:
        redis = RedisDatabase.claim(settings.REDIS_URL)
    except Exception as exc:
        database.drop()
        service_missing(f"no Redis database to claim: {exc}")
    try:
        yield database, redis
    finally:
        database.drop()
        redis.release()


def redis_server_missing() -> str | None:
    if shutil.which("redis-server") is None:
        return "redis-server is not installed (the Redis restart test starts a private one)"
    return None


class RedisServer:
    """A private redis-server on a free loopback port, which a test may restart.

    Configured like a packaged Redis: snapshots to `workdir` on shutdown, so a restart keeps
    the data (as `systemctl restart redis-server` does); nothing else shares it.
    """

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def client(self) -> Redis:
        return Redis(host="127.0.0.1", port=self.port, socket_timeout=5)

    def start(self, timeout: float = 15) -> None:
        log = (self.workdir / "redis.log").open("ab")
        self.process = subprocess.Popen(
            [
                shutil.which("redis-server") or "redis-server",
                "--port", str(self.port), "--bind", "127.0.0.1",
                "--dir", str(self.workdir), "--dbfilename", "dump.rdb",
                "--save", "3600 1 300 100 60 10000", "--appendonly", "no",
                "--protected-mode", "yes", "--daemonize", "no", "--logfile", "",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_child_setup(),
        )  # fmt: skip
        log.close()

        def answers() -> bool:
            try:
                return bool(self.client().ping())
            except RedisConnectionError:
                return False

        wait_until(answers, timeout=timeout, what=f"redis-server on port {self.port}")

    def shutdown(self, *, save: bool = True, timeout: float = 15) -> None:
        """SHUTDOWN (SAVE by default, as a service restart does); wait until the port closes."""
        with contextlib.suppress(RedisConnectionError):
            self.client().shutdown(save=save, nosave=not save)
        if self.process is not None:
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        wait_until(lambda: not port_open("127.0.0.1", self.port), timeout=timeout)

    def restart(self, *, downtime: float = 1.0) -> None:
        """Stop the server (saving its data), stay down `downtime` seconds, start it again."""
        self.shutdown()
        time.sleep(downtime)
        self.start()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)


def rabbitmq_missing(url: str) -> str | None:
    parsed = urlparse(url)
    if not port_open(parsed.hostname or "127.0.0.1", parsed.port or 5672):
        return f"RabbitMQ is not reachable at {parsed.hostname}:{parsed.port or 5672}"
    return None


# --- A person at a browser ------------------------------------------------------------------------


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def _opener(
    jar: http.cookiejar.CookieJar,
    context: ssl.SSLContext | None = None,
    source_address: str | None = None,
) -> urllib.request.OpenerDirector:
    """A cookie-keeping opener that follows no redirect; over HTTPS verified with `context`
    (else the system's CAs), its connections from `source_address` (a local IP) if given."""
    return urllib.request.build_opener(
        urllib.request.HTTPCookieProcessor(jar),
        _NoRedirect,
        _HTTPSHandler(context, (source_address, 0) if source_address else None),
    )


class _HTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, context: ssl.SSLContext | None, source: tuple[str, int] | None) -> None:
        super().__init__(context=context)
        self._tls = context
        self._source = source

    def https_open(self, req: Any) -> Any:
        extra = {"source_address": self._source} if self._source else {}
        return self.do_open(http.client.HTTPSConnection, req, context=self._tls, **extra)


def login_page(
    base_url: str, timeout: float = 20, *, context: ssl.SSLContext | None = None
) -> tuple[int, str]:
    """GET the sign-in page: (status, body)."""
    with urllib.request.urlopen(
        f"{base_url}/accounts/login/", timeout=timeout, context=context
    ) as response:
        return response.status, response.read().decode()


def sign_in(
    base_url: str,
    username: str,
    password: str,
    timeout: float = 20,
    *,
    context: ssl.SSLContext | None = None,
    source_address: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> str:
    """Sign in through the real form (CSRF token and all); the Cookie header of the session.

    Over HTTPS the server's certificate is verified with `context`; `source_address` (an
    HTTPS base_url only) is the local IP to connect from; `headers` go with both requests.
    """
    jar = http.cookiejar.CookieJar()
    opener = _opener(jar, context, source_address)
    page_request = urllib.request.Request(
        f"{base_url}/accounts/login/", headers=dict(headers or {})
    )
    page = opener.open(page_request, timeout=timeout).read().decode()
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page)
    if token is None:
        raise AssertionError(f"no CSRF token on the sign-in page of {base_url}")
    body = urllib.parse.urlencode(
        {"username": username, "password": password, "csrfmiddlewaretoken": token[1]}
    ).encode()
    request = urllib.request.Request(
        f"{base_url}/accounts/login/",
        data=body,
        headers={**(headers or {}), "Referer": f"{base_url}/accounts/login/"},
    )
    try:
        opener.open(request, timeout=timeout)
        raise AssertionError(f"sign-in at {base_url} did not redirect (wrong password?)")
    except urllib.error.HTTPError as redirect:
        if redirect.code != 302:
            raise AssertionError(f"sign-in at {base_url} answered {redirect.code}") from None
    cookies = {cookie.name: cookie.value for cookie in jar}
    # Secure cookies (SECURE_COOKIES, over HTTPS) are named `__Host-sessionid`.
    if not any(name.removeprefix("__Host-") == "sessionid" for name in cookies):
        raise AssertionError(f"sign-in at {base_url} set no session cookie: {sorted(cookies)}")
    return "; ".join(f"{name}={value}" for name, value in cookies.items())


class ChatSocket:
    """A chat WebSocket as the browser opens it (Origin, session cookie), with every frame
    it received kept in `frames`."""

    def __init__(self, base_url: str, connection: ClientConnection) -> None:
        self.base_url = base_url
        self.connection = connection
        self.frames: list[dict[str, Any]] = []

    @classmethod
    async def connect(
        cls,
        base_url: str,
        cookie: str,
        *,
        timeout: float = 15,
        ssl_context: ssl.SSLContext | None = None,
        ping_interval: float | None = 20,
    ) -> ChatSocket:
        """Open the socket of the page at `base_url` (`https://` opens `wss://`, verified with
        `ssl_context`); `ping_interval` None sends no keepalive pings (a truly idle socket)."""
        scheme = "wss://" if base_url.startswith("https://") else "ws://"
        tls: dict[str, Any] = {"ssl": ssl_context} if ssl_context is not None else {}
        connection = await connect(
            scheme + base_url.split("://", 1)[1] + "/ws/chat/",
            origin=Origin(base_url),
            additional_headers={"Cookie": cookie},
            open_timeout=timeout,
            max_size=2**22,
            ping_interval=ping_interval,
            **tls,
        )
        return cls(base_url, connection)

    async def __aenter__(self) -> ChatSocket:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def send(self, frame: dict[str, Any]) -> None:
        await self.connection.send(json.dumps(frame))

    async def receive(self, timeout: float) -> dict[str, Any]:
        """The next frame; TimeoutError when none comes within `timeout`."""
        raw = await asyncio.wait_for(self.connection.recv(), timeout)
        frame: dict[str, Any] = json.loads(raw)
        self.frames.append(frame)
        return frame

    async def until(
        self, stop: Callable[[dict[str, Any]], bool], *, timeout: float
    ) -> list[dict[str, Any]]:
        """Frames up to and including the first for which `stop` is true.

        AssertionError naming what came instead when none does within `timeout`.
        """
        received: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            try:
                if remaining <= 0:
                    raise TimeoutError
                frame = await self.receive(remaining)
            except TimeoutError:
                raise AssertionError(
                    f"no awaited frame within {timeout:g}s; received {_summary(received)}"
                ) from None
            except ConnectionClosed as exc:
                raise AssertionError(
                    f"the socket was closed ({_close_of(exc)}) while awaiting a frame; "
                    f"received {_summary(received)}"
                ) from None
            received.append(frame)
            if stop(frame):
                return received

    async def quiet_for(self, seconds: float) -> list[dict[str, Any]]:
        """Whatever arrives in the next `seconds` (an empty list when nothing does)."""
        received: list[dict[str, Any]] = []
        deadline = time.monotonic() + seconds
        with contextlib.suppress(TimeoutError):
            while (remaining := deadline - time.monotonic()) > 0:
                received.append(await self.receive(remaining))
        return received

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.connection.close(), 5)


def _close_of(exc: ConnectionClosed) -> str:
    """Who closed the socket, with which code and reason."""
    if exc.rcvd is not None:
        return f"by the server, code {exc.rcvd.code} {exc.rcvd.reason!r}".rstrip(" '")
    if exc.sent is not None:
        return f"by the client, code {exc.sent.code}"
    return "without a close frame"


def _summary(frames: list[dict[str, Any]], limit: int = 12) -> str:
    shown = [
        {k: (v if k not in {"text", "html"} else f"<{len(str(v))} chars>") for k, v in f.items()}
        for f in frames[-limit:]
    ]
    return f"{len(frames)} frames, the last: {shown!r}"
