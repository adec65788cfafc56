"""Session and lockout settings read from the environment, in a fresh interpreter."""

from __future__ import annotations

from pathlib import Path

from tests.settings_probe import settings_failure, settings_values

NAMES = [
    "SESSION_IDLE_TIMEOUT_SECONDS",
    "SESSION_ABSOLUTE_LIFETIME_SECONDS",
    "SESSION_COOKIE_AGE",
    "AXES_LOCKOUT_PARAMETERS",
]


def values(tmp_path: Path, **variables: str) -> list:
    found = settings_values(tmp_path, NAMES, unset=NAMES, **variables)
    return [found[name] for name in NAMES]


def error(tmp_path: Path, **variables: str) -> str:
    return settings_failure(tmp_path, unset=NAMES, **variables)


def test_defaults(tmp_path: Path) -> None:
    assert values(tmp_path) == [1800, 28800, 28800, [["username", "ip_address"]]]


def test_limits_and_lockout_policy_from_the_environment(tmp_path: Path) -> None:
    assert values(
        tmp_path,
        SESSION_IDLE_TIMEOUT_SECONDS="600",
        SESSION_ABSOLUTE_LIFETIME_SECONDS="36000",
        AXES_LOCKOUT_PARAMETERS="username+ip_address,username",
    ) == [600, 36000, 36000, [["username", "ip_address"], "username"]]


def test_the_older_cookie_age_still_sets_the_absolute_lifetime(tmp_path: Path) -> None:
    assert values(tmp_path, SESSION_COOKIE_AGE="7200")[1:3] == [7200, 7200]


def test_bad_values_fail_loudly(tmp_path: Path) -> None:
    assert "must not exceed" in error(
        tmp_path, SESSION_IDLE_TIMEOUT_SECONDS="7200", SESSION_ABSOLUTE_LIFETIME_SECONDS="3600"
    )
    assert "AXES_LOCKOUT_PARAMETERS" in error(tmp_path, AXES_LOCKOUT_PARAMETERS="password")
    assert "SESSION_IDLE_TIMEOUT_SECONDS" in error(tmp_path, SESSION_IDLE_TIMEOUT_SECONDS="10")
