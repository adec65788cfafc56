"""Session and lockout settings read from the environment, in a fresh interpreter."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROBE = """
import json
import enterprise_ai.settings as s
print(json.dumps([s.SESSION_IDLE_TIMEOUT_SECONDS, s.SESSION_ABSOLUTE_LIFETIME_SECONDS,
                  s.SESSION_COOKIE_AGE, s.AXES_LOCKOUT_PARAMETERS]))
"""
OURS = {
    "SESSION_IDLE_TIMEOUT_SECONDS",
    "SESSION_ABSOLUTE_LIFETIME_SECONDS",
    "SESSION_COOKIE_AGE",
    "AXES_LOCKOUT_PARAMETERS",
}


def run(tmp_path: Path, **variables: str) -> subprocess.CompletedProcess[str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in OURS
        and k not in {"DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL"}
        and not k.endswith("_FILE")
    }
    env.update(LOCAL_DATA_DIR=str(tmp_path), **variables)
    return subprocess.run(
        [sys.executable, "-c", PROBE], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )


def values(tmp_path: Path, **variables: str) -> list:
    result = run(tmp_path, **variables)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def error(tmp_path: Path, **variables: str) -> str:
    result = run(tmp_path, **variables)
    assert result.returncode != 0
    return result.stderr.strip().splitlines()[-1]


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
