"""Warnings that an outage repeats for every batch of every reply are throttled; the log
format and file follow the settings (masking and the ids: observability/tests/test_logs.py)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from enterprise_ai.logging import NoTracebackFormatter, Throttled
from tests.settings_probe import run_python, settings_failure, settings_values


def test_a_repeated_warning_is_logged_once_per_interval_with_a_count(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = [1000.0]
    monkeypatch.setattr("enterprise_ai.logging.time.monotonic", lambda: clock[0])
    warn = Throttled(logging.getLogger("tests.throttled"), seconds=10)
    with caplog.at_level(logging.WARNING, logger="tests.throttled"):
        for _ in range(50):
            warn.warning("send failed: %s", "ConnectionError")
        warn.warning("another failure: %s", "TimeoutError")  # a different line is its own
        clock[0] += 10
        warn.warning("send failed: %s", "ConnectionError")
    assert [r.getMessage() for r in caplog.records] == [
        "send failed: ConnectionError",
        "another failure: TimeoutError",
        "send failed: ConnectionError (and 49 more like it)",
    ]


# --- Formats and settings (docs/operations.md, "Logs") ---------------------------------------

PRODUCTION = {
    "DATABASE_URL": "postgres://app@db.internal:5432/eai",
    "REDIS_URL": "redis://cache.internal:6379/0",
    "SECRET_KEY": "k" * 50,
    "AUDIT_HMAC_KEY": "a" * 48,
    "ENCRYPTION_MASTER_KEY": "test-only-encryption-key-not-for-production",
    "ALLOWED_HOSTS": "ai.example.com",
}
LOG_SETTINGS = ["LOG_FORMAT", "LOG_FILE", "LOG_FILE_MAX_BYTES", "LOG_FILE_BACKUP_COUNT", "LOGGING"]


def test_embedded_default_logs_plain_text_to_stderr_and_a_rotating_file(tmp_path: Path) -> None:
    values = settings_values(tmp_path, LOG_SETTINGS)
    assert values["LOG_FORMAT"] == "plain"
    assert values["LOG_FILE"] == str(tmp_path / "local" / "logs" / "enterprise-ai.log")
    handlers = values["LOGGING"]["handlers"]
    assert handlers["file"]["class"] == "logging.handlers.RotatingFileHandler"
    assert (handlers["file"]["maxBytes"], handlers["file"]["backupCount"]) == (10 * 1024**2, 5)
    assert {h["formatter"] for h in handlers.values()} == {"plain"}
    # Every handler masks secrets and stamps the ids.
    assert all(h["filters"] == ["context", "secrets"] for h in handlers.values())
    assert values["LOGGING"]["root"]["handlers"] == ["console", "file"]


def test_production_path_logs_json_lines_to_stderr_only(tmp_path: Path) -> None:
    values = settings_values(tmp_path, LOG_SETTINGS, **PRODUCTION)
    assert values["LOG_FORMAT"] == "json" and values["LOG_FILE"] == ""
    assert list(values["LOGGING"]["handlers"]) == ["console"]
    assert values["LOGGING"]["handlers"]["console"]["formatter"] == "json"


def test_log_format_and_file_are_configurable(tmp_path: Path) -> None:
    values = settings_values(
        tmp_path,
        LOG_SETTINGS,
        LOG_FORMAT="JSON",
        LOG_FILE=str(tmp_path / "app.log"),
        LOG_FILE_MAX_BYTES="2048",
        LOG_FILE_BACKUP_COUNT="2",
    )
    file = values["LOGGING"]["handlers"]["file"]
    assert (file["formatter"], file["filename"]) == ("json", str(tmp_path / "app.log"))
    assert (file["maxBytes"], file["backupCount"]) == (2048, 2)
    assert "LOG_FORMAT must be json or plain" in settings_failure(tmp_path, LOG_FORMAT="xml")


def test_the_embedded_default_writes_masked_lines_to_its_log_file(tmp_path: Path) -> None:
    key = "sk-proj-4fT9xQ2mZ8vB1nK7pL3wR6yH0aB1cD2e"
    script = (
        "import django, logging\n"
        "django.setup()\n"
        f"logging.getLogger('tests').warning('Not Found: /nope\\n%s', {key!r})\n"
    )
    result = run_python(tmp_path, ["-c", script])
    assert result.returncode == 0, result.stderr
    written = (tmp_path / "local" / "logs" / "enterprise-ai.log").read_text()
    assert written.count("\n") == 1 and written.endswith("Not Found: /nope\\n[TOKEN_1]\n")
    assert key not in written and key not in result.stderr


def test_the_plain_formatter_alone_still_masks_and_keeps_one_line() -> None:
    # Outside settings.LOGGING (a handler someone adds without the filters).
    formatter = NoTracebackFormatter("%(levelname)s %(log_context)s%(message)s")
    record = logging.LogRecord(
        "x", logging.INFO, __file__, 1, "GET %s", ("/a\r\nAKIAIOSFODNN7EXAMPLE",), None
    )
    assert formatter.format(record) == r"INFO GET /a\r\n[AWS_KEY_1]"
