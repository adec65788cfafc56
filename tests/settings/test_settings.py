"""The two shapes of configuration, read in a fresh interpreter with a controlled environment."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import stat
import subprocess
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

from enterprise_ai.env import Env
from tests.settings_probe import run_python

ROOT = Path(__file__).resolve().parents[2]
PROBE = """
import json
import enterprise_ai.settings as s
print(json.dumps({
    "engine": s.DATABASES["default"]["ENGINE"],
    "db_name": str(s.DATABASES["default"]["NAME"]),
    "layer": s.CHANNEL_LAYERS["default"]["BACKEND"],
    "layer_config": {
        k: v for k, v in s.CHANNEL_LAYERS["default"].get("CONFIG", {}).items() if k != "hosts"
    },
    "layer_host": (s.CHANNEL_LAYERS["default"].get("CONFIG", {}).get("hosts") or [{}])[0],
    "cache_options": s.CACHES["default"].get("OPTIONS", {}),
    "db_health_checks": s.DATABASES["default"].get("CONN_HEALTH_CHECKS"),
    "db_pool": {
        k: v for k, v in s.DATABASES["default"].get("OPTIONS", {}).get("pool", {}).items()
        if k != "check"
    } if isinstance(s.DATABASES["default"].get("OPTIONS", {}).get("pool"), dict) else None,
    "cache": s.CACHES["default"]["BACKEND"],
    "dispatch": s.TASK_DISPATCH,
    "broker": s.CELERY_BROKER_URL,
    "debug": s.DEBUG,
    "embedded": s.EMBEDDED,
    "secret_key": s.SECRET_KEY,
    "hashers": s.PASSWORD_HASHERS[0],
    "allowed_hosts": s.ALLOWED_HOSTS,
}))
"""
PRODUCTION_KEY = "k" * 50
AUDIT_KEY = "a" * 48
MASTER_KEY = "test-only-encryption-key-not-for-production"


def load(tmp_path: Path, **variables: str) -> subprocess.CompletedProcess[str]:
    return run_python(tmp_path, ["-c", PROBE], **variables)


def settings_of(tmp_path: Path, **variables: str) -> dict:
    result = load(tmp_path, **variables)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def failure_of(tmp_path: Path, **variables: str) -> str:
    result = load(tmp_path, **variables)
    assert result.returncode != 0
    return result.stderr.strip().splitlines()[-1]


def test_embedded_default_with_nothing_configured(tmp_path: Path) -> None:
    s = settings_of(tmp_path)
    assert s["embedded"] is True
    # Django's SQLite backend, wrapped by django-prometheus to count queries.
    assert s["engine"] == "django_prometheus.db.backends.sqlite3"
    assert s["db_name"] == str(tmp_path / "local" / "db.sqlite3")
    assert s["layer"] == "enterprise_ai.channel_layers.ThreadSafeInMemoryChannelLayer"
    assert s["dispatch"] == "thread"
    assert s["debug"] is False
    assert s["hashers"].endswith("Argon2PasswordHasher")
    assert "127.0.0.1" in s["allowed_hosts"]


def test_embedded_secret_key_is_generated_once_into_a_private_file(tmp_path: Path) -> None:
    first = settings_of(tmp_path)["secret_key"]
    key_file = tmp_path / "local" / "secret_key"
    assert key_file.read_text() == first and len(first) >= 50
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert settings_of(tmp_path)["secret_key"] == first


def test_gitignore_keeps_the_local_directory_out_of_the_repository() -> None:
    assert ".local/" in (ROOT / ".gitignore").read_text().splitlines()


def test_production_path_with_postgres_and_redis(tmp_path: Path) -> None:
    s = settings_of(
        tmp_path,
        DATABASE_URL="postgres://app@db.internal:5432/eai",
        REDIS_URL="redis://cache.internal:6379/0",
        SECRET_KEY=PRODUCTION_KEY,
        AUDIT_HMAC_KEY=AUDIT_KEY,
        ENCRYPTION_MASTER_KEY=MASTER_KEY,
        ALLOWED_HOSTS="ai.example.com",
    )
    assert s["embedded"] is False
    assert s["engine"] == "django_prometheus.db.backends.postgresql"
    assert s["layer"] == "enterprise_ai.channel_layers.RedisChannelLayer"
    # Django's Redis cache, its gets counted (observability/cache.py).
    assert s["cache"] == "observability.cache.RedisCache"
    assert s["dispatch"] == "celery"
    assert s["broker"] == "redis://cache.internal:6379/0"
    # Connections are explicit. Idle sockets died after 5 s when redis-py's socket timeout
    # equalled the channel layer's blocking read; the web process's inbox held 100 messages
    # for all its sockets; killed PostgreSQL connections were handed out by the pool.
    host = s["layer_host"]
    assert host["address"] == "redis://cache.internal:6379/0"
    # channels-redis blocks on BZPOPMIN for 5 s: every read must be allowed longer.
    assert host["socket_timeout"] > 5 and s["cache_options"]["socket_timeout"] > 5
    assert host["socket_keepalive"] is True and host["health_check_interval"] > 0
    assert s["cache_options"]["pool_class"] == "redis.BlockingConnectionPool"
    assert s["layer_config"]["capacity"] >= 1000
    assert s["db_pool"] == {"min_size": 2, "max_size": 20, "timeout": 30.0, "max_idle": 300.0}
    assert s["db_health_checks"] is True


def test_redis_timeouts_below_the_blocking_read_are_refused(tmp_path: Path) -> None:
    assert "REDIS_SOCKET_TIMEOUT must be at least 6" in failure_of(
        tmp_path,
        REDIS_URL="redis://cache.internal:6379/0",
        SECRET_KEY=PRODUCTION_KEY,
        AUDIT_HMAC_KEY=AUDIT_KEY,
        ENCRYPTION_MASTER_KEY=MASTER_KEY,
        ALLOWED_HOSTS="ai.example.com",
        REDIS_SOCKET_TIMEOUT="5",
    )


def test_rabbitmq_broker_with_redis_layer(tmp_path: Path) -> None:
    s = settings_of(
        tmp_path,
        CELERY_BROKER_URL="amqp://guest:guest@127.0.0.1:5672//",
        REDIS_URL="redis://127.0.0.1:6379/0",
        SECRET_KEY=PRODUCTION_KEY,
        AUDIT_HMAC_KEY=AUDIT_KEY,
        ENCRYPTION_MASTER_KEY=MASTER_KEY,
        ALLOWED_HOSTS="ai.example.com",
    )
    assert s["broker"].startswith("amqp://") and s["dispatch"] == "celery"


def test_production_refuses_to_start_without_a_secret_key(tmp_path: Path) -> None:
    error = failure_of(
        tmp_path, DATABASE_URL="postgres://app@db/eai", ALLOWED_HOSTS="ai.example.com"
    )
    assert "SECRET_KEY" in error and "required" in error
    assert not (tmp_path / "local" / "secret_key").exists()


def test_production_refuses_to_start_without_allowed_hosts(tmp_path: Path) -> None:
    error = failure_of(tmp_path, DATABASE_URL="postgres://app@db/eai", SECRET_KEY=PRODUCTION_KEY)
    assert "ALLOWED_HOSTS" in error


def test_a_broker_without_redis_is_refused(tmp_path: Path) -> None:
    error = failure_of(
        tmp_path,
        CELERY_BROKER_URL="amqp://127.0.0.1//",
        SECRET_KEY=PRODUCTION_KEY,
        ALLOWED_HOSTS="x",
    )
    assert "REDIS_URL is required" in error


def test_secret_key_from_a_file(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text(PRODUCTION_KEY + "\n")
    s = settings_of(
        tmp_path,
        DATABASE_URL="postgres://app@db/eai",
        SECRET_KEY_FILE=str(secret),
        AUDIT_HMAC_KEY=AUDIT_KEY,
        ENCRYPTION_MASTER_KEY=MASTER_KEY,
        ALLOWED_HOSTS="x",
    )
    assert s["secret_key"] == PRODUCTION_KEY


def test_production_refuses_to_start_without_an_audit_key(tmp_path: Path) -> None:
    error = failure_of(
        tmp_path,
        DATABASE_URL="postgres://app@db/eai",
        SECRET_KEY=PRODUCTION_KEY,
        ALLOWED_HOSTS="ai.example.com",
    )
    assert "AUDIT_HMAC_KEY" in error and "required" in error
    assert not (tmp_path / "local" / "audit_hmac_key").exists()


def test_embedded_audit_key_is_generated_once_into_a_private_file(tmp_path: Path) -> None:
    settings_of(tmp_path)
    key_file = tmp_path / "local" / "audit_hmac_key"
    first = key_file.read_text()
    assert len(first) >= 48 and stat.S_IMODE(key_file.stat().st_mode) == 0o600
    settings_of(tmp_path)
    assert key_file.read_text() == first


def test_a_short_audit_key_is_refused(tmp_path: Path) -> None:
    assert "AUDIT_HMAC_KEY must be at least 32" in failure_of(tmp_path, AUDIT_HMAC_KEY="short")


def test_a_short_secret_key_is_refused(tmp_path: Path) -> None:
    assert "at least 32" in failure_of(tmp_path, SECRET_KEY="short")


def test_debug_is_only_on_when_asked_for(tmp_path: Path) -> None:
    assert settings_of(tmp_path, DEBUG="true")["debug"] is True
    assert "DEBUG must be true or false" in failure_of(tmp_path, DEBUG="maybe")


class TestEnv:
    def test_typed_values(self) -> None:
        env = Env({"N": "42", "F": "0.5", "B": "yes", "L": "a, b,,c", "S": "  text  "})
        assert env.int("N", 0) == 42
        assert env.float("F", 0) == 0.5
        assert env.bool("B") is True
        assert env.list("L") == ["a", "b", "c"]
        assert env.str("S") == "text"
        assert env.int("MISSING", 7) == 7

    def test_bad_values_fail_loudly(self) -> None:
        with pytest.raises(ImproperlyConfigured, match="whole number"):
            Env({"N": "4x"}).int("N", 0)
        with pytest.raises(ImproperlyConfigured, match="at least 1"):
            Env({"N": "0"}).int("N", 5, min_value=1)
        with pytest.raises(ImproperlyConfigured, match="true or false"):
            Env({"B": "si"}).bool("B")

    def test_file_variant_and_conflicts(self, tmp_path: Path) -> None:
        secret = tmp_path / "token"
        secret.write_text("s3cret\r\n")
        assert Env({"TOKEN_FILE": str(secret)}).str("TOKEN") == "s3cret"
        with pytest.raises(ImproperlyConfigured, match="not both"):
            Env({"TOKEN": "a", "TOKEN_FILE": str(secret)}).str("TOKEN")
        with pytest.raises(ImproperlyConfigured, match="cannot be read"):
            Env({"TOKEN_FILE": str(tmp_path / "missing")}).str("TOKEN")


ENCRYPTION_PROBE = (
    "import json, enterprise_ai.settings as s; print(json.dumps([s.ENCRYPTION_MASTER_KEY, "
    "s.ENCRYPTION_PREVIOUS_MASTER_KEYS, s.ENCRYPTION_MASTER_KEY_DERIVED, "
    "s.ENCRYPTION_MASTER_KEY_LOCAL_FILE]))"
)


def derived(audit_key: str) -> str:
    raw = hmac.new(
        audit_key.encode(), b"enterprise-ai/encryption-master-key/v1", hashlib.sha256
    ).digest()
    return base64.urlsafe_b64encode(raw).decode()


def test_production_without_a_master_key_derives_one_from_the_audit_key(tmp_path: Path) -> None:
    production = {
        "DATABASE_URL": "postgres://app@db/eai",
        "SECRET_KEY": PRODUCTION_KEY,
        "AUDIT_HMAC_KEY": AUDIT_KEY,
        "AUDIT_HMAC_PREVIOUS_KEYS": "b" * 48,
        "ALLOWED_HOSTS": "ai.example.com",
    }
    result = run_python(tmp_path, ["-c", ENCRYPTION_PROBE], **production)
    assert result.returncode == 0, result.stderr
    key, previous, is_derived, local_file = json.loads(result.stdout.strip().splitlines()[-1])
    # Every process sharing AUDIT_HMAC_KEY derives the same key, a valid 256-bit one; the
    # retired audit key gives the retired master key; no key file is written.
    assert is_derived is True and key == derived(AUDIT_KEY) and previous == [derived("b" * 48)]
    assert len(base64.urlsafe_b64decode(key)) == 32 and AUDIT_KEY not in key
    assert local_file == "" and not (tmp_path / "local" / "encryption_master_key").exists()
    # A configured key is used as it is, and is not derived.
    result = run_python(
        tmp_path, ["-c", ENCRYPTION_PROBE], **production, ENCRYPTION_MASTER_KEY=MASTER_KEY
    )
    key, previous, is_derived, _ = json.loads(result.stdout.strip().splitlines()[-1])
    assert (key, previous, is_derived) == (MASTER_KEY, [], False)


def test_production_with_kms_needs_no_local_master_key(tmp_path: Path) -> None:
    s = settings_of(
        tmp_path,
        DATABASE_URL="postgres://app@db/eai",
        SECRET_KEY=PRODUCTION_KEY,
        AUDIT_HMAC_KEY=AUDIT_KEY,
        ENCRYPTION_KMS_KEY_ID="alias/enterprise-ai",
        ALLOWED_HOSTS="ai.example.com",
    )
    assert s["embedded"] is False


def test_a_malformed_encryption_master_key_is_refused(tmp_path: Path) -> None:
    error = failure_of(tmp_path, ENCRYPTION_MASTER_KEY="too-short")
    assert "ENCRYPTION_MASTER_KEY must be a 256-bit key" in error
    assert "too-short" not in error
    error = failure_of(tmp_path, ENCRYPTION_PREVIOUS_MASTER_KEYS=f"{MASTER_KEY},nope")
    assert "ENCRYPTION_PREVIOUS_MASTER_KEYS must be a 256-bit key" in error


ROLE_PROBE = (
    "import json, enterprise_ai.settings as s; "
    "print(json.dumps([s.DATABASE_PRIVILEGED_ROLE, s.DATABASE_APP_ROLE]))"
)
ROLE_VARIABLES = ("DATABASE_PRIVILEGED_ROLE", "DATABASE_ALLOW_PRIVILEGED_ROLE", "DATABASE_APP_ROLE")


def role_settings(tmp_path: Path, **variables: str) -> subprocess.CompletedProcess[str]:
    return run_python(tmp_path, ["-c", ROLE_PROBE], unset=ROLE_VARIABLES, **variables)


@pytest.mark.parametrize(
    ("variables", "expected"),
    [
        ({}, ["demote", "enterprise_ai_app"]),
        ({"DATABASE_PRIVILEGED_ROLE": "Refuse"}, ["refuse", "enterprise_ai_app"]),
        ({"DATABASE_PRIVILEGED_ROLE": "allow"}, ["allow", "enterprise_ai_app"]),
        # The older spelling of allow, alone or agreeing.
        ({"DATABASE_ALLOW_PRIVILEGED_ROLE": "true"}, ["allow", "enterprise_ai_app"]),
        (
            {"DATABASE_ALLOW_PRIVILEGED_ROLE": "true", "DATABASE_PRIVILEGED_ROLE": "allow"},
            ["allow", "enterprise_ai_app"],
        ),
        ({"DATABASE_ALLOW_PRIVILEGED_ROLE": "false"}, ["demote", "enterprise_ai_app"]),
        (
            {"DATABASE_ALLOW_PRIVILEGED_ROLE": "false", "DATABASE_PRIVILEGED_ROLE": "refuse"},
            ["refuse", "enterprise_ai_app"],
        ),
        ({"DATABASE_APP_ROLE": "eai_app$1"}, ["demote", "eai_app$1"]),
    ],
)
def test_the_privileged_role_modes(tmp_path: Path, variables: dict, expected: list) -> None:
    result = role_settings(tmp_path, **variables)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == expected


@pytest.mark.parametrize(
    ("variables", "message"),
    [
        ({"DATABASE_PRIVILEGED_ROLE": "drop"}, "must be demote, refuse or allow"),
        (
            {"DATABASE_ALLOW_PRIVILEGED_ROLE": "true", "DATABASE_PRIVILEGED_ROLE": "refuse"},
            "set only one of them",
        ),
        (
            {"DATABASE_ALLOW_PRIVILEGED_ROLE": "false", "DATABASE_PRIVILEGED_ROLE": "allow"},
            "set only one of them",
        ),
        ({"DATABASE_APP_ROLE": 'app"; DROP TABLE x; --'}, "plain PostgreSQL role name"),
    ],
)
def test_contradictory_or_bad_privileged_role_settings_are_refused(
    tmp_path: Path, variables: dict, message: str
) -> None:
    result = role_settings(tmp_path, **variables)
    assert result.returncode != 0
    assert message in result.stderr.strip().splitlines()[-1]
