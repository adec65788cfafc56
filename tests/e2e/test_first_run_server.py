"""`make run`'s first start for real: migrate, `ensure_admin --show-at-serve`, `serve`. The
administrator's generated password is the last thing printed, in a box, once the server
listens; after the person changes it, it is never printed again."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from tests.e2e.conftest import ROOT, _embedded_env, _free_port, _stop

pytestmark = pytest.mark.e2e


def _serve(env: dict[str, str], port: int) -> tuple[subprocess.Popen[str], list[str]]:
    process = subprocess.Popen(
        [sys.executable, "manage.py", "serve", "--host", "127.0.0.1", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line.rstrip("\n"))

    threading.Thread(target=read, daemon=True).start()
    return process, lines


def _wait_for(lines: list[str], text: str, timeout: float = 30) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for index, line in enumerate(lines):
            if text in line:
                return index
        time.sleep(0.1)
    raise AssertionError(f"{text!r} never printed:\n" + "\n".join(lines))


def test_the_generated_password_is_printed_last_in_a_box(tmp_path: Path) -> None:
    env = _embedded_env(tmp_path)
    env.pop("ADMIN_PASSWORD")
    env.pop("ADMIN_USERNAME")
    env["LOG_LEVEL"] = "INFO"
    for command in (["migrate", "--noinput"], ["ensure_admin", "--show-at-serve"]):
        done = subprocess.run(
            [sys.executable, "manage.py", *command],
            cwd=ROOT, env=env, check=True, capture_output=True, text=True,
        )  # fmt: skip
    assert "password   " not in done.stdout  # not among the set-up lines

    port = _free_port()
    process, lines = _serve(env, port)
    try:
        end = _wait_for(lines, "(Ctrl+C to stop)")
        time.sleep(1.5)  # anything the server prints on starting would come by now
        printed = list(lines)
        assert len(printed) == end + 1, "nothing is printed after the box:\n" + "\n".join(printed)
        top = max(i for i, line in enumerate(printed) if line.startswith("╔"))
        box = printed[top:end]
        assert any(line.startswith("╚") for line in box)
        assert any(f"http://127.0.0.1:{port}/" in line for line in box)
        password = next(line for line in box if "password   " in line).split()[2]
        # Whatever the server logs on start-up (the scheduler, daphne) comes before the box.
        assert any("Periodic tasks" in line for line in printed[:top])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
            assert response.status == 200
    finally:
        _stop(process)  # type: ignore[arg-type]

    # The person changes it: the next start shows no password.
    subprocess.run(
        [sys.executable, "manage.py", "shell", "-c",
         "from accounts.models import User; u = User.objects.get(username='admin'); "
         "u.set_password('chosen-by-the-person-42'); u.save()"],
        cwd=ROOT, env=env, check=True, capture_output=True,
    )  # fmt: skip
    process, lines = _serve(env, _free_port())
    try:
        _wait_for(lines, "(Ctrl+C to stop)")
        assert not any(password in line for line in lines)
        assert not any(line.startswith("╔") for line in lines)
    finally:
        _stop(process)  # type: ignore[arg-type]
