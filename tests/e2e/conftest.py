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


@pytest.fixture(scope="session")
def embedded_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    data_dir = tmp_path_factory.mktemp("embedded")
    env = {
        key: value
        for key, value in os.environ.items()
        if key
        not in {"DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL", "SECRET_KEY", "ALLOWED_HOSTS"}
    }
    env.update(
        DJANGO_SETTINGS_MODULE="enterprise_ai.settings",
        LOCAL_DATA_DIR=str(data_dir),
        ADMIN_USERNAME="e2e-admin",
        ADMIN_PASSWORD=ADMIN_PASSWORD,
        DEMO_FIRST_TOKEN_DELAY_MS="100",
        DEMO_TOKENS_PER_SECOND="50",
    )
    python = sys.executable
    for command in (["migrate", "--noinput"], ["ensure_admin"]):
        subprocess.run(
            [python, "manage.py", *command], cwd=ROOT, env=env, check=True, capture_output=True
        )

    port = _free_port()
    log_path = data_dir / "daphne.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                python,
                "-m",
                "daphne",
                "-b",
                "127.0.0.1",
                "-p",
                str(port),
                "enterprise_ai.asgi:application",
            ],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{base_url}/healthz", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"daphne did not start:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.2)
        yield Server(base_url, base_url, "e2e-admin", ADMIN_PASSWORD, log_path)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
