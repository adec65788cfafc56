"""Structured logs: credentials masked in every line, one record per line, the ids of the
request, conversation and message on each, and error ids that people see (issue 12)."""

from __future__ import annotations

import io
import json
import logging
import string
import threading
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any
from unittest import mock

import pytest
from channels.db import database_sync_to_async as sync_to_async
from django.contrib.auth.decorators import login_not_required
from django.http import HttpRequest, HttpResponse
from django.test import Client
from django.urls import path
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import enterprise_ai.urls
from audit import context as audit_context
from audit.models import AuditEvent
from conversations.models import Message
from enterprise_ai.daphne_server import LoggedAccessLog
from enterprise_ai.logging import (
    JsonFormatter,
    LogContextFilter,
    NoTracebackFormatter,
    SecretsFilter,
    mask,
)
from observability import logcontext
from tests.support import connected, is_final, receive_until

PLAIN_FORMAT = "%(asctime)s %(levelname)s %(name)s %(log_context)s%(message)s"
BASE62 = string.ascii_letters + string.digits


def random_looking(value: str) -> bool:
    """Issued keys are random: digits among letters (the detectors leave `sk-learn-…`)."""
    return sum(c.isdigit() for c in value) >= 2 and sum(c.isalpha() for c in value) >= 6


def keys(alphabet: str, min_size: int, max_size: int) -> st.SearchStrategy[str]:
    return st.text(alphabet, min_size=min_size, max_size=max_size).filter(random_looking)


# Text around a secret: letters that spell none of the detectors' hints, and punctuation.
around = st.text(alphabet="abcdefghij .,;()", max_size=30)

openai_keys = st.builds(
    lambda prefix, body: prefix + body,
    st.sampled_from(["sk-", "sk-proj-", "sk-ant-", "sk-svcacct-"]),
    keys(BASE62 + "_-", 20, 90),
)
aws_access_keys = st.builds(
    lambda prefix, body: prefix + body,
    st.sampled_from(["AKIA", "ASIA"]),
    st.text(string.ascii_uppercase + string.digits, min_size=16, max_size=16),
)
aws_secret_keys = st.text(BASE62 + "/+", min_size=40, max_size=40)
bearer_tokens = keys(BASE62 + "._~+/-", 16, 120)
api_keys = keys(BASE62 + "_-", 8, 64)
url_passwords = st.text(
    st.characters(blacklist_categories=("Cs", "Zs", "Zl", "Zp", "Cc"), blacklist_characters="/?#@"),
    min_size=1,
    max_size=40,
)


def line(before: str, secret_text: str, after: str) -> str:
    return f"{before} {secret_text} {after}"


@settings(max_examples=150)
@given(openai_keys, around, around)
def test_openai_style_keys_are_masked(key: str, before: str, after: str) -> None:
    assert mask(line(before, f"key {key}", after)) == line(before, "key [TOKEN_1]", after)


@settings(max_examples=150)
@given(aws_access_keys, around, around)
def test_aws_access_key_ids_are_masked(key: str, before: str, after: str) -> None:
    assert mask(line(before, key, after)) == line(before, "[AWS_KEY_1]", after)


@settings(max_examples=150)
@given(
    aws_secret_keys,
    st.sampled_from(
        [
            "aws_secret_access_key = {}",
            "AWS_SECRET_ACCESS_KEY={}",
            '"SecretAccessKey": "{}"',
            "secretAccessKey: {}",
        ]
    ),
    around,
    around,
)
def test_aws_secret_access_keys_are_masked(key: str, form: str, before: str, after: str) -> None:
    masked = mask(line(before, form.format(key), after))
    assert masked == line(before, form.format("[AWS_KEY_1]"), after)


@settings(max_examples=150)
@given(bearer_tokens, st.sampled_from(["Bearer", "bearer", "BEARER"]), around, around)
def test_bearer_tokens_are_masked(token: str, word: str, before: str, after: str) -> None:
    text = line(before, f"Authorization: {word} {token}", after)
    assert mask(text) == line(before, f"Authorization: {word} [TOKEN_1]", after)


@settings(max_examples=150)
@given(
    api_keys,
    st.sampled_from(["?api_key={}", "&apikey={}", "X-Api-Key: {}", '"access_token": "{}"']),
    around,
    around,
)
def test_api_keys_given_by_name_are_masked(key: str, form: str, before: str, after: str) -> None:
    masked = mask(line(before, "GET /v1/models" + form.format(key), after))
    assert masked == line(before, "GET /v1/models" + form.format("[TOKEN_1]"), after)


@settings(max_examples=150)
@given(
    st.sampled_from(["postgres", "redis", "amqp", "https", "mysql+pymysql"]),
    st.text(string.ascii_lowercase + string.digits + "_.", max_size=12),
    url_passwords,
    around,
    around,
)
def test_passwords_in_urls_are_masked(
    scheme: str, user: str, password: str, before: str, after: str
) -> None:
    url = f"{scheme}://{user}:{password}@db.internal:5432/eai"
    masked = mask(line(before, url, after))
    assert masked == line(before, f"{scheme}://{user}:[PASSWORD_1]@db.internal:5432/eai", after)


@settings(max_examples=100, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(openai_keys, aws_access_keys), st.sampled_from(["%0A", "%0a", "%09", "%20"]))
def test_a_key_glued_to_a_percent_escape_is_masked(key: str, escape: str) -> None:
    # The reproduction: daphne logged `GET /nope%0A<key>` verbatim.
    masked = mask(f'"GET /nope{escape}{key}" 404')
    assert masked in {f'"GET /nope{escape}[TOKEN_1]" 404', f'"GET /nope{escape}[AWS_KEY_1]" 404'}


@settings(max_examples=100, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(openai_keys, aws_access_keys), st.sampled_from(["\\n", "\\r", "\\x0b"]))
def test_a_key_glued_to_a_backslash_escape_is_masked(key: str, escape: str) -> None:
    # Django's request log escapes the path: `Not Found: /nope\\n<key>`.
    masked = mask(f"Not Found: /nope{escape}{key}")
    assert key not in masked and masked.startswith(f"Not Found: /nope{escape}[")


def test_a_percent_encoded_secret_is_masked_in_its_decoded_form() -> None:
    assert mask("GET /v1/models?api_key%3D9f8e7d6c5b4a3928") == "GET /v1/models?api_key=[TOKEN_1]"


def test_lines_without_credentials_are_left_alone() -> None:
    for text in [
        "GET /c/3f2a9c1e-5b7d-4e8f-9a0b-1c2d3e4f5a6b/ 200",
        "reply complete: end_turn",
        "max_tokens=4096 temperature=0.2",
        "https://example.com/path?page=2",
        "swept 3 interrupted replies",
    ]:
        assert mask(text) == text


# --- Through the logging pipeline --------------------------------------------------------------


class Captured:
    """A handler as settings.LOGGING builds one (both filters) with the given formatter."""

    def __init__(self, formatter: logging.Formatter) -> None:
        self.stream = io.StringIO()
        self.handler = logging.StreamHandler(self.stream)
        self.handler.setFormatter(formatter)
        self.handler.addFilter(LogContextFilter())
        self.handler.addFilter(SecretsFilter())

    @property
    def lines(self) -> list[str]:
        return self.stream.getvalue().splitlines()


@pytest.fixture
def logs() -> Iterator[tuple[logging.Logger, Captured, Captured]]:
    logger = logging.getLogger("tests.logs")
    plain = Captured(NoTracebackFormatter(PLAIN_FORMAT))
    jsonl = Captured(JsonFormatter())
    for captured in (plain, jsonl):
        logger.addHandler(captured.handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield logger, plain, jsonl
    finally:
        for captured in (plain, jsonl):
            logger.removeHandler(captured.handler)


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    # (what is logged, the secret in it): random-looking secrets, so that finding one in
    # the output cannot be a coincidence.
    st.one_of(
        openai_keys.map(lambda k: (k, k)),
        aws_access_keys.map(lambda k: (k, k)),
        bearer_tokens.map(lambda t: (f"Bearer {t}", t)),
        api_keys.map(lambda k: (f"api_key={k}", k)),
        keys(BASE62 + "!$%*", 10, 30).map(lambda p: (f"redis://:{p}@cache:6379/0", p)),
    ),
    st.sampled_from(["message", "argument", "extra", "nested extra"]),
)
def test_every_line_is_masked_wherever_the_secret_is(
    logs: tuple[logging.Logger, Captured, Captured], logged: tuple[str, str], where: str
) -> None:
    logger, plain, jsonl = logs
    secret_text, secret = logged
    before = (len(plain.lines), len(jsonl.lines))
    if where == "message":
        logger.warning(f"upstream said {secret_text} .")
    elif where == "argument":
        logger.warning("upstream said %s .", secret_text)
    elif where == "extra":
        logger.warning("upstream failed", extra={"url": secret_text})
    else:
        logger.warning("upstream failed", extra={"data": {"args": [secret_text]}})
    for captured, start in zip((plain, jsonl), before, strict=True):
        written = "\n".join(captured.lines[start:])
        assert written and secret not in written


def test_a_newline_in_a_user_controlled_field_cannot_forge_a_line(
    logs: tuple[logging.Logger, Captured, Captured],
) -> None:
    logger, plain, jsonl = logs
    forged = "/nope\n2026-01-01 00:00:00,000 ERROR django.security forged\r\u2028line"
    logger.warning("Not Found: %s", forged)
    assert len(plain.lines) == 1
    assert plain.lines[0].endswith(
        r"Not Found: /nope\n2026-01-01 00:00:00,000 ERROR django.security forged\r\u2028line"
    )
    assert len(jsonl.lines) == 1
    assert json.loads(jsonl.lines[0])["message"] == f"Not Found: {forged}"


def test_json_lines_carry_time_level_logger_and_the_ids(
    logs: tuple[logging.Logger, Captured, Captured],
) -> None:
    logger, plain, jsonl = logs
    with logcontext.bind(request_id="req-0123456789", conversation_id="c-1", message_id="m-1"):
        logger.info("reply complete")
    logger.info("outside any request")
    inside, outside = (json.loads(text) for text in jsonl.lines)
    assert inside["time"].endswith("Z") and "T" in inside["time"]
    assert {k: inside[k] for k in ("level", "logger", "message")} == {
        "level": "INFO",
        "logger": "tests.logs",
        "message": "reply complete",
    }
    assert (inside["request_id"], inside["conversation_id"], inside["message_id"]) == (
        "req-0123456789",
        "c-1",
        "m-1",
    )
    # Every line has a request id field; the others only where known.
    assert outside["request_id"] == "" and "conversation_id" not in outside
    assert (
        "request_id=req-0123456789 conversation_id=c-1 message_id=m-1 reply complete"
        in (plain.lines[0])
    )


def test_an_exception_is_logged_by_its_type_only(
    logs: tuple[logging.Logger, Captured, Captured],
) -> None:
    logger, plain, jsonl = logs
    try:
        raise RuntimeError("upstream echoed api_key=9f8e7d6c5b4a39281706 in its error")
    except RuntimeError:
        logger.exception("provider call failed")
    record = json.loads(jsonl.lines[0])
    assert record["exception"] == "RuntimeError"
    assert "exc_info" not in record and "Traceback" not in jsonl.lines[0]
    assert plain.lines == [plain.lines[0]] and plain.lines[0].endswith(
        "provider call failed [exception: RuntimeError]"
    )
    assert "9f8e7d6c" not in plain.stream.getvalue() + jsonl.stream.getvalue()


def test_the_request_id_of_the_audit_context_is_used_when_none_is_bound(
    logs: tuple[logging.Logger, Captured, Captured],
) -> None:
    logger, _, jsonl = logs
    with audit_context.bind(audit_context.AuditContext(request_id="frame-request-1")):
        logger.info("inside a socket frame")
    assert json.loads(jsonl.lines[0])["request_id"] == "frame-request-1"


def test_daphnes_access_log_goes_through_logging_masked_on_one_line(
    logs: tuple[logging.Logger, Captured, Captured],
) -> None:
    _, plain, jsonl = logs
    access = logging.getLogger("daphne.access")
    access.addHandler(plain.handler)
    access.addHandler(jsonl.handler)
    key = "sk-proj-4fT9xQ2mZ8vB1nK7pL3wR6yH0aB1cD2e"
    try:
        LoggedAccessLog()(
            "http",
            "complete",
            {
                "path": f"/nope%0A{key}",
                "status": 404,
                "method": "GET",
                "client": "127.0.0.1:50000",
                "time_taken": 0.01,
                "size": 179,
            },
        )
    finally:
        access.removeHandler(plain.handler)
        access.removeHandler(jsonl.handler)
    assert len(plain.lines) == len(jsonl.lines) == 1
    assert key not in plain.lines[0] + jsonl.lines[0]
    assert plain.lines[0].endswith('127.0.0.1:50000 "GET /nope%0A[TOKEN_1]" 404 179')
    entry = json.loads(jsonl.lines[0])
    assert (entry["logger"], entry["status"], entry["client"]) == (
        "daphne.access",
        404,
        "127.0.0.1:50000",
    )


# --- Celery tasks carry the request id ---------------------------------------------------------


def test_a_task_is_sent_with_the_request_id_and_runs_under_it() -> None:
    headers: dict[str, Any] = {}
    with logcontext.bind(request_id="web-request-42"):
        logcontext._carry_request_id(headers=headers)
    assert headers == {"request_id": "web-request-42"}
    task = SimpleNamespace(request=SimpleNamespace(request_id="web-request-42"))
    logcontext._bind_task(task_id="task-1", task=task)
    assert logcontext.current().request_id == "web-request-42"
    logcontext._unbind_task(task_id="task-1")
    assert logcontext.current().request_id == ""
    # A task sent from no request logs under its own id.
    logcontext._bind_task(task_id="3c8e5e0a-task", task=SimpleNamespace(request=SimpleNamespace()))
    assert logcontext.current().request_id == "3c8e5e0a-task"
    logcontext._unbind_task(task_id="3c8e5e0a-task")


# --- One chat turn, embedded default: the worker thread logs under the turn's ids ---------------


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.addFilter(LogContextFilter())
        self.addFilter(SecretsFilter())
        self.records: list[logging.LogRecord] = []
        self.lock_ = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        with self.lock_:
            self.records.append(record)


@pytest.fixture
def records() -> Iterator[Records]:
    handler = Records()
    root, django = logging.getLogger(), logging.getLogger("django")  # django: not propagated
    level = root.level
    root.addHandler(handler)
    django.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        django.removeHandler(handler)
        root.setLevel(level)


@pytest.mark.django_db(transaction=True)
async def test_a_chat_turn_logs_one_request_id_in_the_socket_and_the_worker(
    owner: Any, session_cookie: Any, fast_demo: None, records: Records
) -> None:
    comm = await connected(await sync_to_async(session_cookie)(owner))
    await comm.send_json_to({"type": "send", "conversation": None, "text": "Hi", "model": "demo"})
    frames = await receive_until(comm, is_final)
    await comm.disconnect()
    assert frames[-1]["type"] == "done", frames
    reply = await sync_to_async(Message.objects.select_related("conversation").get)(
        public_id=frames[0]["message"]
    )
    ids = (reply.request_id, str(reply.conversation.public_id), str(reply.public_id))
    assert reply.request_id

    def ids_of(record: logging.LogRecord) -> tuple[str, str, str]:
        return (record.request_id, record.conversation_id, record.message_id)  # type: ignore[attr-defined]

    web = [r for r in records.records if r.name == "conversations.consumers"]
    worker = [r for r in records.records if (r.threadName or "").startswith("dispatch")]
    assert [r.getMessage() for r in web] == ["chat send accepted"]
    assert ids_of(web[0]) == ids
    assert worker and all(ids_of(r) == ids for r in worker), [
        (r.name, r.getMessage(), ids_of(r)) for r in worker
    ]
    assert "reply complete: end_turn" in [r.getMessage() for r in worker]
    # The audit trail's event of the send carries the same id.
    sent = await sync_to_async(
        lambda: list(AuditEvent.objects.filter(request_id=reply.request_id).values_list("action"))
    )()
    assert sent


# --- Error ids: what a person sees is what the log line says ------------------------------------


@pytest.mark.django_db(transaction=True)
async def test_an_unexpected_socket_error_shows_an_error_id_that_its_log_line_carries(
    owner: Any, session_cookie: Any, records: Records
) -> None:
    comm = await connected(await sync_to_async(session_cookie)(owner))
    failure = RuntimeError("database said password=hunter22 in its message")
    with mock.patch("conversations.services.message_send", side_effect=failure):
        await comm.send_json_to(
            {"type": "send", "conversation": None, "text": "Hi", "model": "demo"}
        )
        frame = await comm.receive_json_from(timeout=5)
    await comm.disconnect()
    assert frame["type"] == "error" and frame["code"] == "internal"
    error_id = frame["error_id"]
    assert len(error_id) == 12 and error_id in frame["reason"]
    assert "hunter22" not in frame["reason"] and "RuntimeError" not in frame["reason"]
    logged = [r for r in records.records if getattr(r, "error_id", "") == error_id]
    assert len(logged) == 1 and logged[0].levelno == logging.ERROR
    assert logged[0].request_id  # type: ignore[attr-defined]
    assert "hunter22" not in logged[0].getMessage()


@login_not_required
def boom(request: HttpRequest) -> HttpResponse:
    raise RuntimeError("token=abc123def456 leaked into an exception")


urlpatterns = [path("boom/", boom), *enterprise_ai.urls.urlpatterns]
handler500 = enterprise_ai.urls.handler500


@pytest.mark.urls("observability.tests.test_logs")
def test_the_500_page_shows_the_error_id_that_the_log_line_carries(
    db: None, records: Records
) -> None:
    client = Client(raise_request_exception=False)
    response = client.get("/boom/")
    assert response.status_code == 500
    page = response.content.decode()
    error_id = response["X-Error-ID"]
    assert f"Error id: {error_id}" in page
    assert "Traceback" not in page and "abc123def456" not in page and "RuntimeError" not in page
    logged = [r for r in records.records if r.name == "django.request"]
    assert len(logged) == 1
    assert logged[0].error_id == error_id  # type: ignore[attr-defined]
    assert logged[0].request_id == response["X-Request-ID"]  # type: ignore[attr-defined]
