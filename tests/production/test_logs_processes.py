"""Structured logs of the production path, read from the real processes' output (issue 12).

daphne (`manage.py serve`) and a Celery worker run with LOG_FORMAT=json against PostgreSQL
and Redis, the model being the loopback OpenAI-compatible double. The issue's reproduction
(`GET /nope%0A<key>`: the key was written verbatim to Django's request log and to daphne's
access log, the newline splitting the line) and one chat turn, whose request id must appear
in the web process's lines and in the worker's.
"""

from __future__ import annotations

import json
import secrets
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from providers.testing.openai_server import OpenAIDouble
from tests.production.processes import (
    ChatSocket,
    Database,
    Process,
    Stack,
    base_env,
    own_services,
    sign_in,
    wait_until,
)

pytestmark = [pytest.mark.production, pytest.mark.timeout(150)]

PERSON = "log-tester"
PASSWORD = "Logs-Only-Passw0rd-2026!"
MODEL = "upstream"
KEY = "sk-proj-" + "Zx7Qw2Er9Ty4Ui1Op6As3Df8Gh5Jk0Lz"

SEED = """
import json
from accounts.models import User
from providers.models import AIModel
seed = json.loads({seed!r})
User.objects.create_user(username=seed["person"], password=seed["password"])
AIModel.objects.create(
    key=seed["model"], display_name=seed["model"], provider="openai-compatible",
    provider_model_id="double-model", available_to_everyone=True,
    context_window=16384, max_output_tokens=2048, options={{"base_url": seed["base_url"]}},
)
print("seeded")
"""


@pytest.fixture(scope="module")
def upstream() -> Iterator[OpenAIDouble]:
    with OpenAIDouble() as double:
        yield double


@pytest.fixture
def stack(
    upstream: OpenAIDouble, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[tuple[Stack, Database]]:
    with own_services("eai_logs") as (database, redis):
        env = base_env(
            database_url=database.url,
            redis_url=redis.url,
            key_prefix=f"eai-logs-{secrets.token_hex(3)}",
            data_dir=tmp_path / "data",
            LOG_FORMAT="json",
        )
        processes = Stack(tmp_path / "stack", env)
        try:
            processes.manage("migrate", "--noinput")
            seed = {
                "person": PERSON,
                "password": PASSWORD,
                "model": MODEL,
                "base_url": upstream.base_url,
            }
            processes.manage("shell", "-c", SEED.format(seed=json.dumps(seed)))
            yield processes, database
        finally:
            processes.close()
            report = getattr(request.node, "rep_call", None)
            if report is not None and report.failed:
                report.sections.append(("process logs", processes.report()))


def json_lines(process: Process) -> list[dict[str, Any]]:
    """Every line the process wrote, parsed; AssertionError naming a line that is not JSON.

    The harness writes the command first and gathers stdout with stderr: Celery's start-up
    banner (printed to stdout, from ` -------------- <node>` to the blank line after the
    task list) is not a log line and is left out.
    """
    lines = process.log().splitlines()[1:]
    if process.name == "worker":
        start = next(i for i, line in enumerate(lines) if line.startswith(" -------------- "))
        tasks = lines.index("[tasks]", start)
        end = lines.index("", tasks)
        lines = lines[: max(start - 1, 0)] + lines[end + 1 :]
    parsed = []
    for line in lines:
        if not line.strip():
            continue
        try:
            parsed.append(json.loads(line))
        except ValueError:
            raise AssertionError(
                f"{process.name} wrote a line that is not JSON: {line!r}"
            ) from None
    for entry in parsed:
        assert {"time", "level", "logger", "message", "request_id"} <= entry.keys(), entry
    return parsed


async def test_both_processes_write_json_lines_masked_with_one_request_id_per_turn(
    stack: tuple[Stack, Database],
) -> None:
    processes, database = stack
    web = processes.start_web()
    worker = processes.start_worker(concurrency=2)
    cookie = sign_in(web.base_url, PERSON, PASSWORD)

    # The reproduction, signed in so that Django answers (and logs) 404.
    request = urllib.request.Request(f"{web.base_url}/nope%0A{KEY}", headers={"Cookie": cookie})
    with pytest.raises(urllib.error.HTTPError) as answered:
        urllib.request.urlopen(request, timeout=20)
    assert answered.value.code == 404

    async with await ChatSocket.connect(web.base_url, cookie) as chat:
        await chat.send({"type": "send", "conversation": None, "text": "Hi", "model": MODEL})
        frames = await chat.until(lambda f: f["type"] in {"done", "error"}, timeout=60)
    assert frames[-1]["type"] == "done", frames[-1]
    reply = frames[-1]["message"]
    request_id = database.value(
        "SELECT request_id FROM conversations_message WHERE public_id = %s", reply
    )
    assert request_id

    wait_until(
        lambda: request_id in worker.log() and "reply complete" in worker.log(),
        timeout=20,
        what="the worker's line of the reply",
    )
    web_lines, worker_lines = json_lines(web), json_lines(worker)

    # Masked in the access log and in Django's request log, each one line.
    assert KEY not in web.log() and KEY not in worker.log()
    access = [e for e in web_lines if e["logger"] == "daphne.access" and "/nope" in e["message"]]
    assert len(access) == 1 and '"GET /nope%0A[TOKEN_1]" 404 ' in access[0]["message"], access
    assert access[0]["status"] == 404
    not_found = [e for e in web_lines if e["logger"] == "django.request"]
    # Django writes the path's newline as `\n` (two characters); the key after it is masked.
    assert len(not_found) == 1 and not_found[0]["message"] == r"Not Found: /nope\n[TOKEN_1]"
    assert not_found[0]["request_id"]  # the request's own id, as in X-Request-ID

    # One turn, one request id: in the web process's line and in the worker's lines.
    accepted = [e for e in web_lines if e["request_id"] == request_id]
    assert [e["message"] for e in accepted] == ["chat send accepted"], accepted
    assert (accepted[0]["conversation_id"], accepted[0]["message_id"]) == (
        frames[0]["conversation"],
        reply,
    )
    generated = [e for e in worker_lines if e["request_id"] == request_id]
    assert any(e["message"].startswith("reply complete") for e in generated), generated
    assert all(e.get("message_id") == reply for e in generated if e["logger"].startswith("conv"))
    # Celery's own lines of the task carry it too (the id travels in the task's headers).
    assert any(e["logger"].startswith("celery") for e in generated), generated
