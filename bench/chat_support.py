"""Helpers for the chat and API benchmarks (bench/chat_bench.py, bench/api_bench.py): the
loopback upstream, the product's processes, read-only look-ups in its database, wire-counting
proxies for PostgreSQL and Redis, and the socket and direct-upstream clients.

Everything listens on and connects to 127.0.0.1 only. Nothing here imports Django: the
benchmark's own process stays a plain client, so that its work never shares a lock or an
event loop with the product it measures.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import html
import json
import multiprocessing
import os
import re
import shlex
import signal
import socket
import sqlite3
import struct
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import websockets
from websockets.asyncio.client import ClientConnection

from bench.audit_bench import percentile, pg_connect

ROOT = Path(__file__).resolve().parent.parent
# The web client asks for the stored state of a reply silent this long (static/js/chat.js).
SILENT_REPLY_SECONDS = 20.0
# The interpreter running the benchmark is the project's (its venv has celery, daphne…).
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return True
        time.sleep(0.1)
    return False


def ms_summary(seconds: Sequence[float]) -> dict[str, float | None]:
    """p50 / p95 / max in milliseconds (nearest rank); None when there is nothing."""
    if not seconds:
        return {"p50_ms": None, "p95_ms": None, "max_ms": None}
    values = [s * 1000 for s in seconds]
    return {
        "p50_ms": round(percentile(values, 50), 1),
        "p95_ms": round(percentile(values, 95), 1),
        "max_ms": round(max(values), 1),
    }


def p50_p95(summary: dict[str, Any] | None) -> str:
    """An ms_summary as `p50 (p95)` in whole milliseconds; "—" when it is empty."""
    if not summary or summary.get("p50_ms") is None:
        return "—"
    return f"{summary['p50_ms']:,.0f} ({summary['p95_ms']:,.0f})"


class Stopped(Exception):
    """SIGTERM: unwind through the `finally` blocks that stop the processes."""


def on_sigterm(signum: int, frame: Any) -> None:
    raise Stopped


# --- Reading what the product stored -----------------------------------------------------------


class Store:
    """Read-only look-ups in the product's database (PostgreSQL or SQLite), outside Django."""

    def __init__(
        self,
        sqlite_path: Path | None = None,
        *,
        database: str = "",
        env: dict[str, str] | None = None,
    ) -> None:
        self.sqlite_path = sqlite_path
        self.database = database  # PostgreSQL, when there is no SQLite path
        # The product's environment: transcripts are encrypted at rest, so reply text is read
        # through the product itself (its one read path), in a `manage.py shell` of its own.
        self.env = env

    def _rows(self, query: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        if self.sqlite_path is not None:
            with sqlite3.connect(f"file:{self.sqlite_path}?mode=ro", uri=True, timeout=20) as db:
                return list(db.execute(query.replace("%s", "?"), list(params)).fetchall())
        with pg_connect(self.database) as conn:
            return list(conn.execute(query, list(params)).fetchall())

    def unfinished_replies(self) -> int:
        rows = self._rows(
            "SELECT count(*) FROM conversations_message WHERE role = %s AND status IN (%s, %s)",
            ("assistant", "pending", "streaming"),
        )
        return int(rows[0][0])

    def replies(self, ids: Sequence[str]) -> dict[str, tuple[str, str]]:
        """public id (hex, no dashes) → (status, content), the content as the product reads it
        (decrypted) when the Store has the product's environment."""
        if self.env is not None:
            return self._replies_through_the_product(ids)
        found: dict[str, tuple[str, str]] = {}
        for start in range(0, len(ids), 200):
            chunk = [i.replace("-", "") for i in ids[start : start + 200]]
            if self.sqlite_path is None:
                rows = self._rows(
                    "SELECT replace(public_id::text, '-', ''), status, content "
                    "FROM conversations_message WHERE replace(public_id::text, '-', '') = "
                    "ANY(%s)",
                    (chunk,),
                )
            else:
                marks = ",".join("?" for _ in chunk)  # placeholders only, never values
                query = "SELECT replace(public_id, '-', ''), status, content FROM "
                query += f"conversations_message WHERE replace(public_id, '-', '') IN ({marks})"
                rows = self._rows(query, chunk)
            found.update({str(r[0]): (str(r[1]), str(r[2])) for r in rows})
        return found

    def _replies_through_the_product(self, ids: Sequence[str]) -> dict[str, tuple[str, str]]:
        code = (
            "import json, sys, uuid\n"
            "from conversations.models import Message\n"
            "ids = [uuid.UUID(i) for i in json.load(sys.stdin)]\n"
            "rows = Message.objects.filter(public_id__in=ids).values_list("
            "'public_id', 'status', 'content')\n"
            "print(json.dumps({p.hex: [s, str(c)] for p, s, c in rows}))\n"
        )
        done = subprocess.run(  # noqa: S603  (fixed arguments, no shell)
            [sys.executable, "manage.py", "shell", "-c", code],
            input=json.dumps([i.replace("-", "") for i in ids]),
            capture_output=True,
            text=True,
            env=self.env,
            cwd=Path(__file__).resolve().parent.parent,
            timeout=300,
            check=True,
        )
        rows = json.loads(done.stdout.strip().splitlines()[-1])
        return {key: (str(status), str(content)) for key, (status, content) in rows.items()}

    def audit_count(self, action: str, usernames: Sequence[str], since: datetime) -> int:
        rows = self._rows(
            "SELECT count(*) FROM audit_auditevent e JOIN accounts_user u ON u.id = e.actor_id "
            "WHERE e.action = %s AND e.occurred_at >= %s AND u.username = ANY(%s)",
            (action, since, list(usernames)),
        )
        return int(rows[0][0])

    def wait_quiet(self, timeout: float) -> int:
        """Wait until no reply is pending or streaming; how many still are at the end."""
        deadline = time.monotonic() + timeout
        left = self.unfinished_replies()
        while left and time.monotonic() < deadline:
            time.sleep(0.5)
            left = self.unfinished_replies()
        return left


# --- The loopback upstream, in a process of its own ---------------------------------------------


def _upstream_main(conn: Any, first_token_delay: float, tokens_per_second: float) -> None:
    from providers.testing import openai_server

    # socketserver listens with a backlog of 5: 200 clients connecting at once would see SYNs
    # dropped and retried a second later. A real upstream's accept queue is deeper.
    openai_server._Server.request_queue_size = 1024
    double = openai_server.OpenAIDouble(
        first_token_delay=first_token_delay, tokens_per_second=tokens_per_second
    )
    double.start()
    conn.send(double.base_url)
    try:
        while True:
            command, value = conn.recv()
            if command == "words":
                double.reply_words = int(value)
                conn.send(True)
            elif command == "stats":
                requests = double.model_requests()
                conn.send(
                    {
                        "model_requests": len(requests),
                        "outcomes": dict(Counter(r.outcome for r in requests)),
                    }
                )
            elif command == "reset":
                double.reset()
                conn.send(True)
            else:
                break
    except EOFError:
        pass
    finally:
        double.stop()


class Upstream:
    """providers/testing/openai_server.OpenAIDouble served from a spawned process."""

    def __init__(self, *, first_token_delay: float, tokens_per_second: float) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self.process = ctx.Process(
            target=_upstream_main,
            args=(child, first_token_delay, tokens_per_second),
            name="bench-upstream",
            daemon=True,
        )
        self.process.start()
        if not self._conn.poll(30):
            raise RuntimeError("the upstream did not start")
        self.base_url: str = self._conn.recv()

    def _ask(self, command: str, value: Any = None) -> Any:
        self._conn.send((command, value))
        if not self._conn.poll(10):
            raise RuntimeError(f"the upstream did not answer {command!r}")
        return self._conn.recv()

    def set_reply_words(self, words: int) -> None:
        self._ask("words", words)

    def stats(self) -> dict[str, Any]:
        return dict(self._ask("stats"))

    def reset(self) -> None:
        self._ask("reset")

    def stop(self) -> None:
        with contextlib.suppress(OSError, BrokenPipeError):
            self._conn.send(("stop", None))
        self.process.join(5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5)

    @property
    def pid(self) -> int | None:
        return self.process.pid


# --- The product's processes -------------------------------------------------------------------


def rss_kib(pid: int) -> int:
    """VmRSS of one process in KiB (0 when it is gone)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path(f"/proc/{pid}/status").read_text(encoding="utf-8").splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def descendants(pid: int) -> list[int]:
    """Child processes, recursively (Celery's prefork pool processes)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            stat = (entry / "stat").read_text(encoding="utf-8")
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
    found: list[int] = []
    stack = [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process, in seconds."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        fields = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8").rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return 0.0


class Service:
    """One of the product's processes (and its children), logging to a file.

    Started in a session of its own so that stopping it also stops the pool processes it
    forked; stopped with SIGTERM, then SIGKILL.
    """

    def __init__(self, name: str, argv: Sequence[str], env: dict[str, str], log_path: Path):
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self._log = log_path.open("ab")
        self.start_offset = self._log.tell()
        self.process = subprocess.Popen(  # noqa: S603  (fixed arguments, no shell)
            self.argv,
            cwd=ROOT,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def rss_mb(self) -> dict[str, float]:
        """The main process's RSS and that of the whole tree (main + children), in MiB."""
        main = rss_kib(self.pid)
        total = main + sum(rss_kib(child) for child in descendants(self.pid))
        return {"main_mb": round(main / 1024, 1), "tree_mb": round(total / 1024, 1)}

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pid) + sum(cpu_seconds(c) for c in descendants(self.pid))

    def log_size(self) -> int:
        with contextlib.suppress(OSError):
            return self.log_path.stat().st_size
        return 0

    def log_since(self, offset: int) -> str:
        with contextlib.suppress(OSError), self.log_path.open("rb") as handle:
            handle.seek(offset)
            return handle.read().decode("utf-8", "replace")
        return ""

    def stop(self) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(15)
        # Whatever is left of the group (a pool process that ignored SIGTERM).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(5)
        self._log.close()


def worker_argv_from_makefile(makefile: Path) -> list[str]:
    """The Celery worker's arguments as the Makefile's `worker` target runs them.

    Continuation lines are joined; `$(BIN)` and the Makefile's own variables are expanded
    (`?=` ones from the environment when set, as make does), then shell defaults such as
    `${WORKER_CONCURRENCY:-200}`.
    """
    text = makefile.read_text(encoding="utf-8").replace("\\\n", " ")
    variables: dict[str, str] = {"BIN": str(BIN)}
    for name, kind, value in re.findall(r"^(\w+)\s*([?:]?)=\s*(.*)$", text, re.MULTILINE):
        if name == "BIN":
            continue
        variables[name] = os.environ.get(name, value.strip()) if kind == "?" else value.strip()
    recipe = re.search(r"^worker\s*:.*\n((?:\t.*\n?)+)", text, re.MULTILINE)
    if recipe is None:
        raise RuntimeError("no `worker` target in the Makefile")
    for command in re.split(r";|&&", recipe.group(1)):
        if "celery" in command and " worker" in command:
            command = command.strip().removeprefix("exec ").strip()
            command = re.sub(r"\$\((\w+)\)", lambda m: variables.get(m.group(1), ""), command)
            command = command.replace("$$", "$")
            command = re.sub(
                r"\$\{(\w+):-([^}]*)\}",
                lambda m: os.environ.get(m.group(1)) or m.group(2),
                command,
            )
            return shlex.split(command)
    raise RuntimeError("no celery worker command in the Makefile's `worker` target")


_POOL_FLAGS = ("--pool", "-P")
_CONCURRENCY_FLAGS = ("--concurrency", "-c")


def _flag_value(argv: Sequence[str], names: Sequence[str]) -> str | None:
    for index, arg in enumerate(argv):
        for name in names:
            if arg == name and index + 1 < len(argv):
                return argv[index + 1]
            if arg.startswith(f"{name}="):
                return arg.split("=", 1)[1]
            if len(name) == 2 and arg.startswith(name) and len(arg) > 2:
                return arg[2:]
    return None


def _without_flag(argv: Sequence[str], names: Sequence[str]) -> list[str]:
    result: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg in names:
            skip = True
            continue
        if any(arg.startswith(f"{n}=") or (len(n) == 2 and arg.startswith(n)) for n in names):
            continue
        result.append(arg)
    return result


def worker_argv(makefile: Path, pool: str | None, concurrency: str | None) -> list[str]:
    """The Makefile's worker command, with --pool / --concurrency replaced when given."""
    argv = worker_argv_from_makefile(makefile)
    if pool:
        argv = [*_without_flag(argv, _POOL_FLAGS), f"--pool={pool}"]
    if concurrency:
        argv = [*_without_flag(argv, _CONCURRENCY_FLAGS), f"--concurrency={concurrency}"]
    return argv


def worker_flags(argv: Sequence[str]) -> dict[str, str | None]:
    return {
        "pool": _flag_value(argv, _POOL_FLAGS),
        "concurrency": _flag_value(argv, _CONCURRENCY_FLAGS),
    }


# --- Counting proxies --------------------------------------------------------------------------

_TABLE = re.compile(r'\b(?:FROM|INTO|UPDATE|JOIN)\s+"?([A-Za-z_][\w]*)"?', re.IGNORECASE)


def statement_kind(text: str) -> str:
    """The statement's first word; three kinds are named by what sends them:

    CHECK: psycopg-pool's empty query when it hands out a connection (per checkout);
    HEARTBEAT and SWEEP: the per-process reply monitor's timed statements
    (conversations/inflight.py), which run every few seconds whatever the turns do.
    """
    if not text.strip():
        return "CHECK"
    if text.lstrip().startswith('UPDATE "conversations_message" SET "heartbeat_at"'):
        return "HEARTBEAT"
    if '"conversations_message"."heartbeat_at" <' in text and text.lstrip().startswith("SELECT"):
        return "SWEEP"
    words = text.lstrip().split(None, 1)
    return words[0].upper() if words else "?"


@dataclass
class WireCounts:
    """What one proxy saw from its clients (cumulative)."""

    connections: int = 0
    statements: int = 0  # PostgreSQL: executed statements; Redis: commands
    writes: int = 0  # client → server reads of the socket, about one per round trip
    kinds: Counter[str] = field(default_factory=Counter)
    tables: Counter[str] = field(default_factory=Counter)

    def snapshot(self) -> WireCounts:
        return WireCounts(
            self.connections,
            self.statements,
            self.writes,
            Counter(self.kinds),
            Counter(self.tables),
        )

    def minus(self, before: WireCounts) -> dict[str, Any]:
        return {
            "connections": self.connections - before.connections,
            "statements": self.statements - before.statements,
            "client_writes": self.writes - before.writes,
            "kinds": dict((self.kinds - before.kinds).most_common()),
            "tables": dict((self.tables - before.tables).most_common(12)),
        }


class _PgParser:
    """Counts statements in a PostgreSQL frontend stream: each simple Query ('Q') and each
    Execute ('E') of the extended protocol, named after the SQL it runs."""

    def __init__(self, counts: WireCounts) -> None:
        self.counts = counts
        self.buffer = b""
        self.started = False
        self.statements: dict[bytes, str] = {}
        self.portals: dict[bytes, str] = {}

    def _count(self, text: str) -> None:
        self.counts.statements += 1
        self.counts.kinds[statement_kind(text)] += 1
        match = _TABLE.search(text)
        if match:
            self.counts.tables[match.group(1)] += 1

    def feed(self, data: bytes) -> None:
        self.buffer += data
        while True:
            if not self.started:
                if len(self.buffer) < 8:
                    return
                (length,) = struct.unpack("!I", self.buffer[:4])
                if len(self.buffer) < length:
                    return
                (code,) = struct.unpack("!I", self.buffer[4:8])
                self.buffer = self.buffer[length:]
                if code not in (80877103, 80877104):  # SSLRequest, GSSENCRequest: not yet
                    self.started = True
                continue
            if len(self.buffer) < 5:
                return
            kind = self.buffer[:1]
            (length,) = struct.unpack("!I", self.buffer[1:5])
            if len(self.buffer) < 1 + length:
                return
            body = self.buffer[5 : 1 + length]
            self.buffer = self.buffer[1 + length :]
            if kind == b"Q":
                self._count(body.split(b"\0", 1)[0].decode("utf-8", "replace"))
            elif kind == b"P":
                name, rest = body.split(b"\0", 1)
                self.statements[name] = rest.split(b"\0", 1)[0].decode("utf-8", "replace")
            elif kind == b"B":
                portal, rest = body.split(b"\0", 1)
                statement = rest.split(b"\0", 1)[0]
                self.portals[portal] = self.statements.get(statement, "?")
            elif kind == b"E":
                self._count(self.portals.get(body.split(b"\0", 1)[0], "?"))


class _RespParser:
    """Counts commands in a Redis client stream (RESP arrays of bulk strings)."""

    def __init__(self, counts: WireCounts) -> None:
        self.counts = counts
        self.buffer = b""

    def feed(self, data: bytes) -> None:
        self.buffer += data
        while self.buffer:
            parsed = self._one()
            if parsed is None:
                return
            name, used = parsed
            self.buffer = self.buffer[used:]
            self.counts.statements += 1
            self.counts.kinds[name] += 1

    def _one(self) -> tuple[str, int] | None:
        buf = self.buffer
        if not buf.startswith(b"*"):  # an inline command
            end = buf.find(b"\r\n")
            if end < 0:
                return None
            return (buf[:end].split(b" ", 1)[0].decode("ascii", "replace").upper(), end + 2)
        end = buf.find(b"\r\n")
        if end < 0:
            return None
        count = int(buf[1:end])
        pos = end + 2
        name = "?"
        for index in range(count):
            end = buf.find(b"\r\n", pos)
            if end < 0:
                return None
            size = int(buf[pos + 1 : end])
            start = end + 2
            if len(buf) < start + size + 2:
                return None
            if index == 0:
                name = buf[start : start + size].decode("ascii", "replace").upper()
            pos = start + size + 2
        return name, pos


class CountingProxies:
    """TCP proxies in front of PostgreSQL and Redis that count what the product sends.

    They run on an event loop in a thread of this process, and are used only for the
    measurement of queries and commands per turn: the extra hop would add to the latencies.
    """

    def __init__(self, pg: tuple[str, int], redis: tuple[str, int]) -> None:
        self.pg_counts = WireCounts()
        self.redis_counts = WireCounts()
        self._targets = {"pg": pg, "redis": redis}
        self.ports: dict[str, int] = {}
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-proxies", daemon=True)
        self._servers: list[asyncio.Server] = []
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the counting proxies did not start")

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._start())
        self._ready.set()
        self._loop.run_forever()

    async def _start(self) -> None:
        for name, counts in (("pg", self.pg_counts), ("redis", self.redis_counts)):
            server = await asyncio.start_server(
                functools.partial(self._serve, name, counts), "127.0.0.1", 0
            )
            self._servers.append(server)
            self.ports[name] = server.sockets[0].getsockname()[1]

    async def _serve(
        self,
        name: str,
        counts: WireCounts,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        host, port = self._targets[name]
        try:
            up_reader, up_writer = await asyncio.open_connection(host, port)
        except OSError:
            writer.close()
            return
        counts.connections += 1
        parser: _PgParser | _RespParser = _PgParser(counts) if name == "pg" else _RespParser(counts)

        async def pump(
            source: asyncio.StreamReader, sink: asyncio.StreamWriter, count: bool
        ) -> None:
            try:
                while data := await source.read(65536):
                    if count:
                        counts.writes += 1
                        parser.feed(data)
                    sink.write(data)
                    await sink.drain()
            except (OSError, ValueError):
                pass
            finally:
                with contextlib.suppress(OSError, RuntimeError):
                    sink.close()

        await asyncio.gather(pump(reader, up_writer, True), pump(up_reader, writer, False))

    def stop(self) -> None:
        def close() -> None:
            for server in self._servers:
                server.close()
            self._loop.stop()

        self._loop.call_soon_threadsafe(close)
        self._thread.join(5)


# --- Clients -----------------------------------------------------------------------------------


class CountingConnection(ClientConnection):
    """A websockets client connection that counts the bytes the server sent, as they came
    off the TCP socket (after any compression, with WebSocket framing)."""

    wire_bytes_in = 0

    def data_received(self, data: bytes) -> None:
        self.wire_bytes_in += len(data)
        super().data_received(data)


@dataclass
class ChatResult:
    """One chat turn seen by its client."""

    ok_connect: bool = False
    connect_s: float | None = None
    accepted_s: float | None = None
    first_delta_s: float | None = None
    done_s: float | None = None
    deltas: int = 0
    gaps: int = 0
    repairs: int = 0  # subscribes sent to redraw from the stored state, as the web client does
    text: str = ""
    done: dict[str, Any] | None = None
    error: str | None = None  # "error:<code>", "closed:<code>", "timeout", "connect:<exc>"
    wire_bytes: int = 0  # server → client, on the wire, from the send to `done`
    payload_bytes: int = 0  # the same frames' text, uncompressed
    reply_id: str | None = None
    conversation: str | None = None
    complete: bool = False


def done_text(frame: dict[str, Any]) -> str:
    """The reply's text as `done.html` shows it (tags removed, entities decoded)."""
    return html.unescape(re.sub(r"<[^>]+>", "", str(frame.get("html", "")))).strip()


async def open_socket(
    base: str, cookie: str, *, timeout: float
) -> tuple[CountingConnection | None, str | None, float]:
    started = time.perf_counter()
    try:
        ws = await websockets.connect(
            base.replace("http", "ws", 1) + "/ws/chat/",
            origin=websockets.Origin(base),
            additional_headers={"Cookie": cookie},
            open_timeout=timeout,
            ping_interval=None,
            close_timeout=5,
            max_size=2**22,
            proxy=None,
            create_connection=CountingConnection,
        )
    except Exception as exc:  # refused, timed out, reset: recorded, never raised
        code = getattr(getattr(exc, "response", None), "status_code", None)
        return None, f"connect:{type(exc).__name__}{f':{code}' if code else ''}", 0.0
    return ws, None, time.perf_counter() - started  # type: ignore[return-value]


async def chat_turn(
    ws: CountingConnection,
    *,
    text: str,
    conversation: str | None,
    expected: str,
    timeout: float,
    start: asyncio.Event | None = None,
) -> ChatResult:
    """Send one message on an open socket and read until `done` (or an error, a close or the
    timeout). Times are from the send."""
    result = ChatResult(ok_connect=True)
    if start is not None:
        await start.wait()
    before = ws.wire_bytes_in
    sent = time.perf_counter()
    deadline = sent + timeout
    expected_seq = 1
    resyncing = False

    async def resubscribe() -> None:
        # What the web client does (static/js/chat.js): redraw from the stored state.
        nonlocal resyncing
        if result.conversation and not resyncing:
            resyncing = True
            result.repairs += 1
            await ws.send(json.dumps({"type": "subscribe", "conversation": result.conversation}))

    try:
        await ws.send(json.dumps({"type": "send", "conversation": conversation, "text": text}))
        while True:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                result.error = "timeout"
                break
            try:
                raw = await asyncio.wait_for(ws.recv(), min(remaining, SILENT_REPLY_SECONDS))
            except TimeoutError:
                if deadline - time.perf_counter() <= 0:
                    raise
                resyncing = False
                await resubscribe()  # silent too long: a `done` may have been dropped
                continue
            now = time.perf_counter() - sent
            result.payload_bytes += len(raw.encode("utf-8") if isinstance(raw, str) else raw)
            frame = json.loads(raw)
            kind = frame.get("type")
            if kind == "accepted":
                result.accepted_s = now
                result.reply_id = frame.get("message")
                result.conversation = frame.get("conversation")
            elif kind == "delta":
                if result.first_delta_s is None:
                    result.first_delta_s = now
                result.deltas += 1
                if resyncing or int(frame.get("seq") or 0) < expected_seq:
                    continue
                if frame.get("seq") != expected_seq:
                    result.gaps += 1
                    await resubscribe()
                    continue
                expected_seq += 1
                result.text += str(frame.get("text", ""))
            elif kind == "snapshot":
                resyncing = False
                mine = next(
                    (m for m in frame.get("messages", []) if m.get("id") == result.reply_id), None
                )
                if mine is None:
                    continue
                if mine.get("status") in {"pending", "streaming"}:
                    result.text = str(mine.get("text", ""))
                    expected_seq = int(mine.get("seq") or 0) + 1
                else:
                    result.done_s = now
                    # Finished while a frame was lost: its stored HTML is checked below.
                    result.done = {**mine, "type": "done", "from_snapshot": True}
                    break
            elif kind == "done":
                result.done_s = now
                result.done = frame
                break
            elif kind == "error":
                result.error = f"error:{frame.get('code')}"
                break
    except TimeoutError:
        result.error = "timeout"
    except websockets.ConnectionClosed as exc:
        result.error = f"closed:{exc.rcvd.code if exc.rcvd else 'none'}"
    result.wire_bytes = ws.wire_bytes_in - before
    result.complete = (
        result.error is None
        and result.done is not None
        and result.done.get("status") == "complete"
        and (result.text == expected or bool(result.done.get("from_snapshot")))
        and " ".join(done_text(result.done).split()) == " ".join(expected.split())
    )
    return result


async def direct_calls(
    base_url: str, prompts: Sequence[str], *, timeout: float
) -> list[dict[str, Any]]:
    """The same upstream called directly with the real `openai` SDK (Chat Completions,
    streaming), all calls at once; time to first text and the whole call, per call."""
    import openai

    client = openai.AsyncOpenAI(
        base_url=base_url, api_key="sk-bench", max_retries=0, timeout=timeout
    )

    async def one(prompt: str) -> dict[str, Any]:
        started = time.perf_counter()
        first: float | None = None
        text = ""
        try:
            stream = await client.chat.completions.create(
                model="bench",
                messages=[{"role": "user", "content": prompt}],
                stream=True,
                max_tokens=4096,
            )
            async for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    if first is None:
                        first = time.perf_counter() - started
                    text += chunk.choices[0].delta.content
        except Exception as exc:  # recorded, never raised
            return {"error": type(exc).__name__, "first_s": first, "text": text}
        return {"first_s": first, "total_s": time.perf_counter() - started, "text": text}

    try:
        return list(await asyncio.gather(*(one(p) for p in prompts)))
    finally:
        await client.close()


def write_results(
    results: dict[str, Any],
    *,
    stem: str,
    output_dir: Path,
    log_dir: Path,
    started: float,
    evaluate: Any,
    findings: Any,
    render_markdown: Any,
) -> None:
    """Close a benchmark run's results (targets, findings, time, load, the code at the end)
    and write `<stem>.json` and `<stem>.md` to `output_dir`, printing the Markdown."""
    from bench.audit_bench import git_state, log

    results["logs_dir"] = str(log_dir)
    results["targets"] = evaluate(results)
    results["findings"] = findings(results)
    results["total_seconds"] = round(time.monotonic() - started, 1)
    results["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    results["git_at_end"] = git_state()
    if results["git_at_end"] != results["git"]:
        log("WARNING: the code changed during the run; the figures may mix versions")
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / f"{stem}.json").write_text(
        json.dumps(results, indent=2, default=str) + "\n", "utf-8"
    )
    markdown = render_markdown(results)
    (output_dir / f"{stem}.md").write_text(markdown, "utf-8")
    print()
    print(markdown)
    log(f"results written to {output_dir}/{stem}.json and {stem}.md; process logs in {log_dir}")
