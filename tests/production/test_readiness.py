"""/readyz on the production path, with every piece a real process (tests/production/processes.py).

daphne and Celery workers against PostgreSQL and Redis: ready with a worker; the worker's
heartbeat gone when it stops (at once) or dies (within the TTL); Redis down (a private
redis-server, killed) and PostgreSQL down (a loopback TCP proxy in front of it, cut) each
named in a 503, and ready again once the service is back. Also the heartbeat itself against
the shared Redis, and RabbitMQ as the broker when it is there.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import signal
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings

from conftest import service_missing
from observability import health, heartbeat
from tests.production.processes import (
    Database,
    RedisDatabase,
    RedisServer,
    Stack,
    WebProcess,
    base_env,
    free_port,
    launcher,
    own_services,
    rabbitmq_missing,
    redis_server_missing,
    wait_until,
)

pytestmark = [pytest.mark.production, pytest.mark.timeout(180)]

#: Beats every half second, dead after 3 s without one; a probe check waits 1 s at most.
FAST = {
    "WORKER_HEARTBEAT_SECONDS": "0.5",
    "WORKER_HEARTBEAT_TTL_SECONDS": "3",
    "READINESS_CHECK_TIMEOUT_SECONDS": "1",
}
TTL = 3.0
RABBITMQ_URL = "amqp://guest:guest@127.0.0.1:5672//"


@dataclass
class Site:
    database: Database
    redis: RedisDatabase
    env: dict[str, str]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """A fresh PostgreSQL database (migrated once) and a Redis database of its own."""
    with own_services("eai_ready") as (database, redis):
        workdir = tmp_path_factory.mktemp("readiness")
        env = base_env(
            database_url=database.url,
            redis_url=redis.url,
            key_prefix=f"eai-ready-{secrets.token_hex(3)}",
            data_dir=workdir,
            **FAST,
        )
        Stack(workdir / "setup", env).manage("migrate", "--noinput")
        yield Site(database, redis, env)


@pytest.fixture
def launch(
    request: pytest.FixtureRequest, site: Site, tmp_path: Path
) -> Iterator[Callable[..., Stack]]:
    """launch(**env) -> a Stack for this test, its processes ended (and their log tails
    reported on failure) at teardown."""
    site.redis.flush()
    with launcher(request, tmp_path, site.env) as make:
        yield make


def readyz(web: WebProcess) -> tuple[int, dict[str, Any], str]:
    """GET /readyz: (status, JSON body, raw body)."""
    try:
        with urllib.request.urlopen(f"{web.base_url}/readyz", timeout=10) as response:
            text = response.read().decode()
            return response.status, json.loads(text), text
    except urllib.error.HTTPError as error:
        text = error.read().decode()
        return error.code, json.loads(text), text


def ready_within(web: WebProcess, timeout: float) -> dict[str, Any]:
    last: list[Any] = []

    def ready() -> bool:
        status, body, _ = readyz(web)
        last[:] = [status, body]
        return status == 200

    try:
        wait_until(ready, timeout=timeout, interval=0.25, what="/readyz answers 200")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; the last answer: {last}") from None
    return dict(last[1])


def unready_within(web: WebProcess, timeout: float, failed: set[str]) -> tuple[dict[str, Any], str]:
    """Wait for a 503 naming (at least) `failed`; its body and raw text."""
    last: list[Any] = []

    def named() -> bool:
        status, body, text = readyz(web)
        last[:] = [status, body, text]
        return status == 503 and failed <= set(body["failed"])

    try:
        wait_until(named, timeout=timeout, interval=0.25, what=f"/readyz fails {sorted(failed)}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; the last answer: {last[:2]}") from None
    return last[1], last[2]


# --- Workers -----------------------------------------------------------------------------------


def test_ready_with_a_worker_and_not_once_it_stops_or_dies(launch: Callable[..., Stack]) -> None:
    stack = launch()
    web = stack.start_web(wait=False)
    # A prefork worker with a long TTL: its key must go when it stops, not expire.
    prefork = stack.start_worker(
        "prefork", pool="prefork", concurrency=2, wait=False,
        extra_env={"WORKER_HEARTBEAT_TTL_SECONDS": "60"},
    )  # fmt: skip
    stack.wait_ready(web, prefork)

    body = ready_within(web, 20)
    assert list(body["checks"]) == ["database", "migrations", "redis", "broker", "workers"]
    assert all(check["ok"] for check in body["checks"].values()), body
    assert body["checks"]["workers"]["count"] == 1

    # A warm shutdown withdraws the worker at once (well inside its 60 s TTL).
    stopped = time.monotonic()
    prefork.stop(timeout=15)
    body, _ = unready_within(web, 10, {"workers"})
    assert body["failed"] == ["workers"], body
    assert time.monotonic() - stopped < 15

    # Another worker (threads pool, 3 s TTL): ready again.
    threads = stack.start_worker("threads")
    assert ready_within(web, 20)["checks"]["workers"]["count"] == 1

    # SIGKILL: nothing deletes the key; it expires within the TTL.
    killed = time.monotonic()
    threads.kill(signal.SIGKILL)
    body, _ = unready_within(web, TTL + 5, {"workers"})
    assert body["failed"] == ["workers"], body
    assert time.monotonic() - killed < TTL + 5


# --- Redis down ------------------------------------------------------------------------------


def test_redis_down_is_named_and_readiness_returns_with_it(
    launch: Callable[..., Stack], tmp_path: Path
) -> None:
    missing = redis_server_missing()
    if missing:
        service_missing(missing)
    redis = RedisServer(tmp_path / "redis")
    redis.start()
    try:
        # The private Redis is the channel layer, the cache and the broker.
        stack = launch(REDIS_URL=redis.url(0))
        web = stack.start_web(wait=False)
        worker = stack.start_worker(wait=False)
        stack.wait_ready(web, worker)
        ready_within(web, 20)

        redis.stop()  # SIGKILL: as a crashed or unreachable server
        body, text = unready_within(web, 10, {"redis", "broker"})
        assert body["checks"]["redis"] == {"ok": False, "ms": body["checks"]["redis"]["ms"],
                                           "error": "connection refused"}  # fmt: skip
        assert body["checks"]["broker"]["error"] == "connection refused"
        assert body["checks"]["database"]["ok"] and body["checks"]["migrations"]["ok"]
        assert str(redis.port) not in text and "127.0.0.1" not in text
        assert web.alive, "the web process died with Redis"

        redis.start()
        body = ready_within(web, 30)
        assert body["checks"]["workers"]["count"] == 1
        assert web.alive and worker.alive
    finally:
        redis.stop()


# --- PostgreSQL down --------------------------------------------------------------------------


class Proxy:
    """A loopback TCP proxy to `target` that a test can cut (every connection closed, the
    port refusing) and restore on the same port: PostgreSQL unreachable, then back."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = free_port()
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._listener: socket.socket | None = None

    def start(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        with self._lock:
            listener, self._listener = self._listener, None
            sockets, self._sockets = self._sockets, []
        for sock in ([listener] if listener else []) + sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # cut
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                if self._listener is not listener:
                    client.close()
                    upstream.close()
                    return
                self._sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


def test_postgres_down_is_named_and_readiness_returns_with_it(
    site: Site, launch: Callable[..., Stack]
) -> None:
    proxy = Proxy((site.database.host, site.database.port))
    proxy.start()
    try:
        url = site.database.url.replace(
            f"@{site.database.host}:{site.database.port}/", f"@127.0.0.1:{proxy.port}/"
        )
        # A web-only deployment: no worker is asked for.
        stack = launch(DATABASE_URL=url, READINESS_REQUIRE_WORKERS="false")
        web = stack.start_web()
        body = ready_within(web, 20)
        assert list(body["checks"]) == ["database", "migrations", "redis", "broker"]

        proxy.cut()
        body, text = unready_within(web, 15, {"database"})
        # Migrations were seen applied; they do not fail with the database.
        assert body["failed"] == ["database"], body
        # The pool hands out nothing; a direct attempt says why (the proxy's port is closed).
        assert body["checks"]["database"]["error"] == "connection refused", body
        assert str(proxy.port) not in text and site.database.name not in text
        assert web.alive

        proxy.start()
        ready_within(web, 60)
    finally:
        proxy.cut()


# --- The heartbeat against the shared Redis ------------------------------------------------------


@pytest.fixture
def own_prefix(site: Site) -> Iterator[None]:
    """This process's settings on the site's Redis database, with a key prefix of its own."""
    heartbeat.stop()  # one an in-process test worker of another module may have left running
    saved = {name: getattr(settings, name) for name in ("REDIS_URL", "REDIS_KEY_PREFIX")}
    settings.REDIS_URL = site.redis.url
    settings.REDIS_KEY_PREFIX = f"eai-hb-{secrets.token_hex(3)}"
    try:
        yield
    finally:
        heartbeat.stop()
        for name, value in saved.items():
            setattr(settings, name, value)


def test_the_heartbeat_key_lives_while_beating_and_goes_when_stopped(
    site: Site, own_prefix: None
) -> None:
    client = heartbeat.redis_client()
    assert health.workers_alive() == 0

    beating = heartbeat.start(hostname="unit@host")
    assert heartbeat.start(hostname="unit@host") is beating  # idempotent
    ttl_ms = client.pttl(heartbeat.worker_key("unit@host"))
    assert 0 < ttl_ms <= settings.WORKER_HEARTBEAT_TTL_SECONDS * 1000
    assert health.workers_alive() == 1

    heartbeat.stop()
    assert client.exists(heartbeat.worker_key("unit@host")) == 0
    assert health.workers_alive() == 0

    # A key nobody refreshes (its worker died) stops counting when it expires.
    client.set(heartbeat.worker_key("dead@host"), "{}", px=300)
    assert health.workers_alive() == 1
    wait_until(lambda: health.workers_alive() == 0, timeout=3, what="the dead key expires")


# --- RabbitMQ as the broker ----------------------------------------------------------------------


def test_rabbitmq_as_the_broker_is_checked(launch: Callable[..., Stack]) -> None:
    missing = rabbitmq_missing(RABBITMQ_URL)
    if missing:
        service_missing(missing)
    stack = launch(CELERY_BROKER_URL=RABBITMQ_URL)
    web = stack.start_web(wait=False)
    worker = stack.start_worker(wait=False)
    stack.wait_ready(web, worker)
    body = ready_within(web, 20)
    assert body["checks"]["broker"]["ok"] and body["checks"]["workers"]["count"] == 1

    wrong = launch(
        CELERY_BROKER_URL="amqp://guest:not-the-password@127.0.0.1:5672//",
        READINESS_REQUIRE_WORKERS="false",
    ).start_web()
    body, text = unready_within(wrong, 15, {"broker"})
    assert body["failed"] == ["broker"]
    assert body["checks"]["broker"]["error"] == "authentication failed"
    assert "not-the-password" not in text
