"""Warnings that an outage repeats for every batch of every reply are throttled."""

from __future__ import annotations

import logging

import pytest

from enterprise_ai.logging import Throttled


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
