"""/healthz and /readyz: the JSON they answer, the checks of each configuration, and failures
named without secrets.

Outside services are real loopback sockets: a closed port (refused), or a listener that
never answers (timed out). The production path, with every piece a real process, is in
tests/production/test_readiness.py.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.db.migrations.recorder import MigrationRecorder
from django.test import Client

from observability import health
from tests.settings_probe import run_python


@pytest.fixture(autouse=True)
def fresh_results(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every request runs the checks anew, and no migration verdict is remembered."""
    monkeypatch.setattr(health, "RESULT_REUSE_SECONDS", 0.0)
    monkeypatch.setattr(health, "_migrations_applied", False)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A loopback port that accepts connections and never says a word."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield int(server.getsockname()[1])
    stop.set()
    thread.join()
    for sock in accepted:
        sock.close()
    server.close()


def production_like(settings: Any, redis_url: str, **extra: Any) -> None:
    """The checks of the production path (Celery dispatch, Redis), with the given Redis."""
    settings.REDIS_URL = redis_url
    settings.CELERY_BROKER_URL = redis_url
    settings.TASK_DISPATCH = "celery"
    for name, value in extra.items():
        setattr(settings, name, value)


def get(client: Client, path: str) -> tuple[int, dict[str, Any]]:
    response = client.get(path)
    assert response["Content-Type"] == "application/json"
    assert response["Cache-Control"] == "no-store"
    return response.status_code, json.loads(response.content)


def test_healthz_answers_without_touching_the_database(client: Client) -> None:
    # No django_db mark: any query would raise here.
    assert get(client, "/healthz") == (200, {"status": "ok"})


@pytest.mark.django_db
def test_readyz_in_the_embedded_default_checks_the_database_and_migrations(
    client: Client,
) -> None:
    status, body = get(client, "/readyz")

    assert status == 200, body
    assert body["status"] == "ok"
    # No Redis, no broker: replies run on the server's own threads.
    assert list(body["checks"]) == ["database", "migrations", "workers"]
    assert all(
        check["ok"] is True and isinstance(check["ms"], int) for check in body["checks"].values()
    )
    assert body["checks"]["workers"]["dispatch"] == "in-process"


def test_probes_refuse_other_methods(client: Client) -> None:
    response = client.post("/readyz")
    assert response.status_code == 405 and response["Allow"] == "GET, HEAD"


@pytest.mark.django_db
def test_redis_down_fails_redis_broker_and_workers_by_name(client: Client, settings: Any) -> None:
    port = closed_port()
    production_like(settings, f"redis://:pr0be-s3cret@127.0.0.1:{port}/0")

    status, body = get(client, "/readyz")

    assert status == 503, body
    assert body["status"] == "unavailable"
    assert body["failed"] == ["redis", "broker", "workers"]
    assert body["checks"]["redis"]["error"] == "connection refused"
    assert body["checks"]["broker"]["error"] == "connection refused"
    assert body["checks"]["database"]["ok"] is True
    # Nothing of the URL leaks: not the password, the address or the port.
    text = json.dumps(body)
    assert "pr0be-s3cret" not in text and "127.0.0.1" not in text and str(port) not in text


@pytest.mark.django_db
def test_a_redis_that_never_answers_fails_within_the_check_timeout(
    client: Client, settings: Any, silent_port: int
) -> None:
    production_like(
        settings,
        f"redis://127.0.0.1:{silent_port}/0",
        READINESS_CHECK_TIMEOUT_SECONDS=0.5,
        READINESS_REQUIRE_WORKERS=False,
    )

    started = time.monotonic()
    status, body = get(client, "/readyz")
    elapsed = time.monotonic() - started

    assert status == 503, body
    assert body["failed"] == ["redis", "broker"]
    assert body["checks"]["redis"]["error"] == "timed out"
    assert elapsed < 2.0, f"the probe took {elapsed:.1f}s"


@pytest.mark.django_db
def test_without_required_workers_readiness_does_not_ask_for_them(
    client: Client, settings: Any
) -> None:
    production_like(
        settings, f"redis://127.0.0.1:{closed_port()}/0", READINESS_REQUIRE_WORKERS=False
    )

    status, body = get(client, "/readyz")

    assert status == 503
    assert list(body["checks"]) == ["database", "migrations", "redis", "broker"]
    assert body["failed"] == ["redis", "broker"]


def test_workers_alive_raises_when_redis_cannot_be_asked(settings: Any) -> None:
    """Unknown is not zero: the metric's caller must be able to tell them apart."""
    import redis.exceptions

    production_like(settings, f"redis://127.0.0.1:{closed_port()}/0")
    with pytest.raises(redis.exceptions.ConnectionError):
        health.workers_alive()


def test_workers_alive_is_zero_without_celery(settings: Any) -> None:
    settings.TASK_DISPATCH = "thread"
    assert health.workers_alive() == 0


@pytest.mark.django_db(transaction=True)
def test_an_unapplied_migration_is_named_and_readiness_returns_once_applied(
    client: Client,
) -> None:
    recorder = MigrationRecorder.Migration.objects
    last = recorder.filter(app="conversations").order_by("-id").first()
    assert last is not None
    recorder.filter(pk=last.pk).delete()
    try:
        status, body = get(client, "/readyz")
    finally:
        MigrationRecorder.Migration.objects.create(app=last.app, name=last.name)

    assert status == 503, body
    assert body["failed"] == ["migrations"]
    assert body["checks"]["migrations"]["error"] == f"1 unapplied: conversations.{last.name}"
    # A failure is not remembered: applied again, the process is ready again.
    assert get(client, "/readyz")[0] == 200


def test_reasons_never_quote_the_exception_text() -> None:
    import psycopg
    import redis.exceptions

    refused = redis.exceptions.ConnectionError("Error 111 connecting to db.internal:6379.")
    refused.__cause__ = ConnectionRefusedError(111, "Connection refused")
    dsn_error = psycopg.OperationalError(
        'connection to server at "db.internal" (10.0.0.5), port 5432 failed: FATAL:  '
        'password authentication failed for user "app"'
    )
    unknown = RuntimeError("postgres://app:hunter2@db.internal/eai is odd")

    assert health._reason(refused) == "connection refused"
    assert health._reason(dsn_error) == "authentication failed"
    assert health._reason(unknown) == "failed (RuntimeError)"


# --- Probes address the pod by IP -------------------------------------------------------------

#: The production path's settings, with every service on a closed loopback port.
POD_SCRIPT = """
import json
import django
django.setup()
from django.test import Client
c = Client()
pod = {"HTTP_HOST": "10.1.2.3:8000"}
out = {}
for path in ("/healthz", "/readyz", "/accounts/login/"):
    r = c.get(path, **pod)
    out[path] = [r.status_code, r.content.decode() if path != "/accounts/login/" else ""]
out["allowed host login"] = [c.get("/accounts/login/", HTTP_HOST="localhost").status_code, ""]
print(json.dumps(out))
"""


def test_probes_answer_a_pod_ip_host_on_the_production_settings(tmp_path: Path) -> None:
    """Kubernetes probes send `Host: <pod IP>:<port>` over plain HTTP. With ALLOWED_HOSTS
    naming the site only and HTTPS redirects on (the production defaults), the probes answer
    and every other page still refuses the host."""
    db_port, redis_port = closed_port(), closed_port()
    result = run_python(
        tmp_path,
        ["-c", POD_SCRIPT],
        unset=("SECURE_", "TRUSTED_PROXY_", "READINESS_", "WORKER_HEARTBEAT_"),
        DATABASE_URL=f"postgres://app:db-s3cret@127.0.0.1:{db_port}/eai",
        REDIS_URL=f"redis://:redis-s3cret@127.0.0.1:{redis_port}/0",
        SECRET_KEY="pod-ip-test-secret-key-not-for-production-0123456789",
        AUDIT_HMAC_KEY="pod-ip-test-audit-key-not-for-production-0123456789",
        ENCRYPTION_MASTER_KEY="test-only-encryption-key-not-for-production",
        ALLOWED_HOSTS="localhost",
        READINESS_CHECK_TIMEOUT_SECONDS="1",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])

    assert out["/healthz"] == [200, '{"status": "ok"}']
    status, text = out["/readyz"]
    assert status == 503
    body = json.loads(text)
    assert body["failed"] == ["database", "migrations", "redis", "broker", "workers"]
    for secret in ("db-s3cret", "redis-s3cret", str(db_port), str(redis_port), "127.0.0.1"):
        assert secret not in text
    # Any other page: the host is refused; with an allowed host, HTTPS is enforced.
    assert out["/accounts/login/"][0] == 400
    assert out["allowed host login"][0] == 301
