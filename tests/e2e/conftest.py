"""A real embedded-mode server: daphne in a subprocess on a free loopback port.

Fresh data directory (SQLite, secret key) per test session; the demo model paced so that a
reply takes a couple of seconds (long enough to press stop in a browser).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"
ADMIN_PASSWORD = "e2e-password-for-tests-only"


@dataclass(frozen=True)
class Server:
    base_url: str
    origin: str
    username: str
    password: str
    log: Path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _embedded_env(data_dir: Path) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if key
        not in {
            "DATABASE_URL",
            "REDIS_URL",
            "CELERY_BROKER_URL",
            "SECRET_KEY",
            "ALLOWED_HOSTS",
            "AUDIT_HMAC_KEY",
            "ENCRYPTION_MASTER_KEY",
            "ENCRYPTION_KMS_KEY_ID",
            "AUDIT_ANCHOR_S3_BUCKET",
        }
    }
    env.update(
        DJANGO_SETTINGS_MODULE="enterprise_ai.settings",
        LOCAL_DATA_DIR=str(data_dir),
        ADMIN_USERNAME="e2e-admin",
        ADMIN_PASSWORD=ADMIN_PASSWORD,
        DEMO_FIRST_TOKEN_DELAY_MS="100",
        DEMO_TOKENS_PER_SECOND="50",
    )
    return env


def _prepare(env: dict[str, str]) -> None:
    """What `make run` does before serving: migrate, create the administrator."""
    for command in (["migrate", "--noinput"], ["ensure_admin"]):
        subprocess.run(
            [sys.executable, "manage.py", *command],
            cwd=ROOT,
            env=env,
            check=True,
            capture_output=True,
        )


def _start_daphne(env: dict[str, str], port: int, log_path: Path) -> subprocess.Popen[bytes]:
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            # Exactly what `make run` serves with: daphne plus the in-process scheduler.
            [sys.executable, "manage.py", "serve", "--host", "127.0.0.1", "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as response:
                if response.status == 200:
                    return process
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            _stop(process)
            raise RuntimeError(f"daphne did not start:\n{log_path.read_text()[-3000:]}")
        time.sleep(0.2)


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture(scope="session")
def embedded_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    data_dir = tmp_path_factory.mktemp("embedded")
    env = _embedded_env(data_dir)
    _prepare(env)
    port = _free_port()
    log_path = data_dir / "daphne.log"
    process = _start_daphne(env, port, log_path)
    base_url = f"http://127.0.0.1:{port}"
    try:
        yield Server(base_url, base_url, "e2e-admin", ADMIN_PASSWORD, log_path)
    finally:
        _stop(process)


class RestartableServer:
    """An embedded server of its own (own data directory) that a test may restart."""

    def __init__(self, data_dir: Path, extra_env: dict[str, str] | None = None) -> None:
        self.env = {**_embedded_env(data_dir), **(extra_env or {})}
        self.port = _free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log = data_dir / "daphne.log"
        self.process: subprocess.Popen[bytes] | None = None
        _prepare(self.env)

    def start(self) -> None:
        self.process = _start_daphne(self.env, self.port, self.log)

    def stop(self) -> None:
        if self.process is not None:
            _stop(self.process)
            self.process = None

    def manage(self, *args: str) -> str:
        """Run a management command against this server's database."""
        result = subprocess.run(
            [sys.executable, "manage.py", *args], cwd=ROOT, env=self.env, check=True,
            capture_output=True, text=True,
        )  # fmt: skip
        return result.stdout

    @property
    def server(self) -> Server:
        return Server(self.base_url, self.base_url, "e2e-admin", ADMIN_PASSWORD, self.log)


@pytest.fixture
def restartable_server(tmp_path: Path) -> Iterator[RestartableServer]:
    server = RestartableServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()
