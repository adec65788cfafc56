"""Production settings: `check --deploy` is clean, HTTPS and cookie settings, host checks.

Each case runs in a fresh interpreter with a controlled environment, as
tests/settings/test_settings.py does; no service is contacted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.settings_probe import run_python, settings_failure, settings_values

PRODUCTION = {
    "DATABASE_URL": "postgres://app@db.internal:5432/eai",
    "REDIS_URL": "redis://cache.internal:6379/0",
    "SECRET_KEY": "pR0d-7fQ2xLw9Zk4Vb1Nn8Yt3Hs6Jd5Gm0Ce2Ua7Ro4Ei9Wq1Tz3Xy8Kp6Lv5Bh",
    "AUDIT_HMAC_KEY": "aUd1t-9Kq3Zm7Xw2Vn5Bt8Yr4Hs6Jd1Gf0Ce3Ua7Ro5Ei",
    "ENCRYPTION_MASTER_KEY": "test-only-encryption-key-not-for-production",
    "ALLOWED_HOSTS": "ai.example.com",
}
NAMES = [
    "SECURE_SSL_REDIRECT", "SECURE_HSTS_SECONDS", "SECURE_HSTS_INCLUDE_SUBDOMAINS",
    "SECURE_HSTS_PRELOAD", "SECURE_PROXY_SSL_HEADER", "SECURE_REDIRECT_EXEMPT",
    "SESSION_COOKIE_SECURE", "CSRF_COOKIE_SECURE", "SESSION_COOKIE_HTTPONLY",
    "SESSION_COOKIE_SAMESITE", "TRUSTED_PROXY_COUNT", "LOGIN_RATE_LIMIT_PER_MINUTE",
    "SESSION_COOKIE_NAME", "CSRF_COOKIE_NAME", "SESSION_COOKIE_DOMAIN", "SESSION_COOKIE_PATH",
]  # fmt: skip
# The developer's own HTTPS settings stay out of these cases.
UNSET = ("SECURE_", "TRUSTED_PROXY_")


def run(tmp_path: Path, args: list[str], **variables: str) -> Any:
    return run_python(tmp_path, args, unset=UNSET, **variables)


def settings_of(tmp_path: Path, **variables: str) -> dict:
    return settings_values(tmp_path, NAMES, unset=UNSET, **variables)


def test_check_deploy_reports_nothing_in_production(tmp_path: Path) -> None:
    result = run(
        tmp_path, ["manage.py", "check", "--deploy", "--fail-level", "DEBUG"], **PRODUCTION
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout, result.stdout


def test_check_deploy_would_catch_a_weakened_setting(tmp_path: Path) -> None:
    """The check above is not vacuous: turning HSTS off makes it fail."""
    result = run(
        tmp_path,
        ["manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        **PRODUCTION,
        SECURE_HSTS_SECONDS="0",
    )
    assert result.returncode != 0
    assert "security.W004" in result.stderr + result.stdout


def test_production_defaults_are_strict(tmp_path: Path) -> None:
    s = settings_of(tmp_path, **PRODUCTION)
    assert s["SECURE_SSL_REDIRECT"] is True
    assert s["SECURE_HSTS_SECONDS"] == 31_536_000
    assert s["SECURE_HSTS_INCLUDE_SUBDOMAINS"] is True
    assert s["SECURE_HSTS_PRELOAD"] is False
    assert s["SECURE_PROXY_SSL_HEADER"] is None  # X-Forwarded-Proto is not trusted by default
    assert s["SECURE_REDIRECT_EXEMPT"] == [r"^healthz$", r"^readyz$", r"^metrics$"]
    assert s["SESSION_COOKIE_SECURE"] is True and s["CSRF_COOKIE_SECURE"] is True
    assert s["SESSION_COOKIE_HTTPONLY"] is True and s["SESSION_COOKIE_SAMESITE"] == "Lax"
    assert s["TRUSTED_PROXY_COUNT"] == 0
    assert s["LOGIN_RATE_LIMIT_PER_MINUTE"] == 20
    # __Host- cookies: Secure, no Domain, path / (browsers enforce the prefix's rules).
    assert s["SESSION_COOKIE_NAME"] == "__Host-sessionid"
    assert s["CSRF_COOKIE_NAME"] == "__Host-csrftoken"
    assert s["SESSION_COOKIE_DOMAIN"] is None and s["SESSION_COOKIE_PATH"] == "/"


def test_behind_a_trusted_proxy_its_https_header_is_believed(tmp_path: Path) -> None:
    s = settings_of(tmp_path, **PRODUCTION, TRUSTED_PROXY_COUNT="1", SECURE_HSTS_SECONDS="600")
    assert s["SECURE_PROXY_SSL_HEADER"] == ["HTTP_X_FORWARDED_PROTO", "https"]
    assert s["SECURE_HSTS_SECONDS"] == 600


def test_embedded_mode_serves_plain_http(tmp_path: Path) -> None:
    s = settings_of(tmp_path)
    assert s["SECURE_SSL_REDIRECT"] is False
    assert s["SECURE_HSTS_SECONDS"] == 0
    assert s["SESSION_COOKIE_SECURE"] is False
    assert s["SESSION_COOKIE_NAME"] == "sessionid"  # a __Host- cookie needs HTTPS


def test_production_refuses_a_wildcard_host(tmp_path: Path) -> None:
    last = settings_failure(
        tmp_path, unset=UNSET, **{**PRODUCTION, "ALLOWED_HOSTS": "ai.example.com,*"}
    )
    assert "ImproperlyConfigured" in last and "ALLOWED_HOSTS" in last and "'*'" in last


def test_health_check_is_not_redirected_to_https(tmp_path: Path) -> None:
    """Load balancers probe over plain HTTP; every other page is redirected."""
    script = """
import django
django.setup()
from django.test import Client
c = Client()
h = {"HTTP_HOST": "ai.example.com"}
print(c.get("/healthz", **h).status_code, c.get("/accounts/login/", **h).status_code)
"""
    result = run(tmp_path, ["-c", script], **PRODUCTION)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["200", "301"]
