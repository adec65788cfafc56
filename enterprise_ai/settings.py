"""Settings for Enterprise AI, read from the environment.

Two shapes, chosen by what is configured (see `.env.example` and docs/configuration.md):

* **Embedded default** (nothing configured): SQLite in `.local/`, an in-memory channel
  layer, replies generated on a background thread of the server process, the offline demo
  model, a secret key generated into `.local/secret_key` on first run.
* **Production path** (`DATABASE_URL`, `REDIS_URL` or `CELERY_BROKER_URL` set): PostgreSQL,
  the Redis channel layer and cache, Celery workers on the `llm` queue. `SECRET_KEY` and
  `ALLOWED_HOSTS` must be given; nothing is generated.
"""

from __future__ import annotations

import ipaddress
import os
import re
import secrets
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import environ
from csp.constants import NONE, SELF
from django.core.exceptions import ImproperlyConfigured

from enterprise_ai.env import Env

env = Env()

BASE_DIR = Path(__file__).resolve().parent.parent
LOCAL_DIR = Path(env.str("LOCAL_DATA_DIR", str(BASE_DIR / ".local")))

DATABASE_URL = env.str("DATABASE_URL")
REDIS_URL = env.str("REDIS_URL")
CELERY_BROKER_URL = env.str("CELERY_BROKER_URL") or REDIS_URL

# The embedded default is what you get when no outside service is configured.
EMBEDDED = not (DATABASE_URL or REDIS_URL or CELERY_BROKER_URL)

DEBUG = env.bool("DEBUG", False)


def _embedded_key(name: str, nbytes: int) -> str:
    """Read a key of the embedded mode from `.local/<name>`, generating it on first run.

    The file is private (0600) and git-ignored; nothing is generated on the production path.
    """
    key_file = LOCAL_DIR / name
    if not key_file.exists():
        LOCAL_DIR.mkdir(parents=True, exist_ok=True)
        key_file.touch(mode=0o600)
        key_file.write_text(secrets.token_urlsafe(nbytes), encoding="utf-8")
    return key_file.read_text(encoding="utf-8").strip()


if env.is_set("SECRET_KEY"):
    SECRET_KEY = env.str("SECRET_KEY")
elif EMBEDDED:
    SECRET_KEY = _embedded_key("secret_key", 50)
else:
    raise ImproperlyConfigured(
        "SECRET_KEY (or SECRET_KEY_FILE) is required when DATABASE_URL, REDIS_URL or "
        "CELERY_BROKER_URL is set. Generate one with: "
        "python -c 'import secrets; print(secrets.token_urlsafe(50))'"
    )
if len(SECRET_KEY) < 32:
    raise ImproperlyConfigured("SECRET_KEY must be at least 32 characters long.")
# Rotating SECRET_KEY: the previous keys, comma-separated (also SECRET_KEY_FALLBACKS_FILE),
# still verify sessions, signed values and API keys (which are then re-hashed under the new
# key on their next use) until they are removed. docs/security.md, "Rotating SECRET_KEY".
SECRET_KEY_FALLBACKS = env.list("SECRET_KEY_FALLBACKS")

if EMBEDDED:
    ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", ["127.0.0.1", "localhost", "[::1]"])
else:
    ALLOWED_HOSTS = env.list("ALLOWED_HOSTS")
    if not ALLOWED_HOSTS:
        raise ImproperlyConfigured("ALLOWED_HOSTS is required on the production path.")
    if "*" in ALLOWED_HOSTS:
        raise ImproperlyConfigured(
            "ALLOWED_HOSTS must name the app's hosts on the production path, not '*': a "
            "wildcard lets any Host header through (password-reset links, cache poisoning)."
        )
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS")

INSTALLED_APPS = [
    "daphne",
    # Django's admin as the compliance console: role-based access, every change audited.
    "enterprise_ai.apps.ConsoleAdminConfig",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "csp",
    "axes",
    "accounts",
    "conversations",
    "providers",
    "audit",
    "costs",
    "tools",
    "guardrails",
    # Retention policies and runs (docs/data-protection.md, "Retention").
    "retention",
    # The REST API under /api/v1/ (django-ninja), authenticated by API keys.
    "api",
    # Metrics, health and readiness, the usage dashboard (docs/operations.md).
    "observability",
    "django_prometheus",
    # Encryption at rest: master keys, data keys, encrypted fields (docs/data-protection.md).
    "protection",
    # Each person's preferences: custom instructions (the /settings/ page).
    "preferences",
]

MIDDLEWARE = [
    # Request counts and latency (django-prometheus): first and last, so they time it all.
    "django_prometheus.middleware.PrometheusBeforeMiddleware",
    # /healthz, /readyz and /metrics answer before host validation and HTTPS redirects:
    # probes and scrapers address a pod by IP, over plain HTTP (observability/middleware.py).
    "observability.middleware.ProbeMiddleware",
    "django.middleware.security.SecurityMiddleware",
    # Content-Security-Policy (CONTENT_SECURITY_POLICY below) and Permissions-Policy.
    "enterprise_ai.security.ContentSecurityPolicyMiddleware",
    "enterprise_ai.security.SecurityHeadersMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    # Request id, and who/where for every audit event the request records.
    "audit.middleware.AuditContextMiddleware",
    # Every page needs a logged-in user unless its view is marked @login_not_required.
    "django.contrib.auth.middleware.LoginRequiredMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    # Idle timeout and absolute lifetime of sessions: after authentication (who), the audit
    # context (the expiry is recorded) and messages (the sign-in page explains why).
    "accounts.middleware.SessionLifetimeMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Axes must come last among these: it turns a locked-out login attempt into the lockout
    # page. django-prometheus's closing half only measures.
    "axes.middleware.AxesMiddleware",
    "django_prometheus.middleware.PrometheusAfterMiddleware",
]

ROOT_URLCONF = "enterprise_ai.urls"
ASGI_APPLICATION = "enterprise_ai.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "audit.context_processors.audit_verification",
            ],
        },
    },
]

# --- Database -----------------------------------------------------------------------------

# Connections: one process serves many concurrent replies (a worker's threads, the web
# server's sync-to-async threads), so connections come from a bounded pool (psycopg-pool,
# Django's built-in pooling) and go back to it as soon as a task or a frame is done; reply
# generation also returns its connection while it waits on the model. DATABASE_POOL_MAX_SIZE
# caps the connections of one process: processes x max size must stay below PostgreSQL's
# max_connections (docs/performance.md has the sizing).
DATABASE_POOL_MIN_SIZE = env.int("DATABASE_POOL_MIN_SIZE", 2, min_value=0)
DATABASE_POOL_MAX_SIZE = env.int("DATABASE_POOL_MAX_SIZE", 20, min_value=1)
# Seconds a thread waits for a free pooled connection before its request fails.
DATABASE_POOL_TIMEOUT = env.float("DATABASE_POOL_TIMEOUT", 30, min_value=1)
DATABASE_POOL = env.bool("DATABASE_POOL", True)
# What the web server, the workers and beat do on PostgreSQL when their login role is a
# superuser, owns an audit table or may TRUNCATE one (enterprise_ai/db_role.py; docs/audit.md,
# "Database roles"): `demote` (every connection runs SET ROLE DATABASE_APP_ROLE, the role
# `migrate` creates when it may), `refuse` (production with the documented login roles), or
# `allow` (development and tests). DATABASE_ALLOW_PRIVILEGED_ROLE=true is the older `allow`.
DATABASE_PRIVILEGED_ROLE_MODES = ("demote", "refuse", "allow")
DATABASE_PRIVILEGED_ROLE = env.str("DATABASE_PRIVILEGED_ROLE", "").strip().lower()
if DATABASE_PRIVILEGED_ROLE and DATABASE_PRIVILEGED_ROLE not in DATABASE_PRIVILEGED_ROLE_MODES:
    raise ImproperlyConfigured(
        "DATABASE_PRIVILEGED_ROLE must be demote, refuse or allow, "
        f"not {DATABASE_PRIVILEGED_ROLE!r}."
    )
if "DATABASE_ALLOW_PRIVILEGED_ROLE" in os.environ:
    _allow = "allow" if env.bool("DATABASE_ALLOW_PRIVILEGED_ROLE", False) else ""
    if _allow and DATABASE_PRIVILEGED_ROLE not in {"", "allow"}:
        raise ImproperlyConfigured(
            "DATABASE_ALLOW_PRIVILEGED_ROLE=true means DATABASE_PRIVILEGED_ROLE=allow, but "
            f"DATABASE_PRIVILEGED_ROLE is {DATABASE_PRIVILEGED_ROLE!r}: set only one of them."
        )
    if DATABASE_PRIVILEGED_ROLE == "allow" and not _allow:
        raise ImproperlyConfigured(
            "DATABASE_PRIVILEGED_ROLE=allow contradicts DATABASE_ALLOW_PRIVILEGED_ROLE=false: "
            "set only one of them."
        )
    DATABASE_PRIVILEGED_ROLE = DATABASE_PRIVILEGED_ROLE or _allow
DATABASE_PRIVILEGED_ROLE = DATABASE_PRIVILEGED_ROLE or "demote"
# The role a demoted process runs as (SET ROLE); `migrate` creates it (NOLOGIN) and grants
# it the application's rights when it runs as a superuser or a role with CREATEROLE.
DATABASE_APP_ROLE = env.str("DATABASE_APP_ROLE", "enterprise_ai_app").strip()
if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_$]{0,62}", DATABASE_APP_ROLE):
    raise ImproperlyConfigured(
        "DATABASE_APP_ROLE must be a plain PostgreSQL role name (letters, digits, _ and $, "
        f"at most 63 characters), not {DATABASE_APP_ROLE!r}."
    )

if DATABASE_URL:
    DATABASES: dict[str, dict[str, Any]] = {"default": environ.Env.db_url_config(DATABASE_URL)}
    if DATABASE_POOL and "postgresql" in DATABASES["default"]["ENGINE"]:
        DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
            "min_size": min(DATABASE_POOL_MIN_SIZE, DATABASE_POOL_MAX_SIZE),
            "max_size": DATABASE_POOL_MAX_SIZE,
            "timeout": DATABASE_POOL_TIMEOUT,
            # Idle connections beyond min_size are closed after this long.
            "max_idle": 300.0,
        }
    # With a pool, Django checks each connection as the pool hands it out (psycopg-pool's
    # check_connection): one killed server-side (pg_terminate_backend, a failover) is replaced
    # then, not discovered by the request that uses it. Without one, before reuse.
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
    # Query counts, errors and latency by database (django-prometheus's wrapper of the backend).
    DATABASES["default"]["ENGINE"] = DATABASES["default"]["ENGINE"].replace(
        "django.db.backends.", "django_prometheus.db.backends.", 1
    )
else:
    DATABASES = {
        "default": {
            "ENGINE": "django_prometheus.db.backends.sqlite3",
            "NAME": LOCAL_DIR / "db.sqlite3",
            # Replies are written from a background thread while the server reads: WAL lets
            # readers and one writer work at once, IMMEDIATE takes the write lock up front
            # so that concurrent writers wait (timeout) instead of failing.
            "OPTIONS": {
                "timeout": 20,
                "transaction_mode": "IMMEDIATE",
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            },
            # A file, not :memory:, so that test threads share one database safely; one per
            # test process, so that two test runs never share it.
            "TEST": {"NAME": str(LOCAL_DIR / f"test-db-{os.getpid()}.sqlite3")},
        }
    }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Channels, cache, task dispatch -------------------------------------------------------

if CELERY_BROKER_URL and not REDIS_URL:
    raise ImproperlyConfigured(
        "REDIS_URL is required when CELERY_BROKER_URL is set: replies stream from the "
        "workers to the web servers over the Redis channel layer."
    )

REDIS_KEY_PREFIX = env.str("REDIS_KEY_PREFIX", "eai")

# Messages a socket's channel may have waiting before sends to it are dropped (and counted:
# docs/performance.md). channels-redis buffers every socket of a web process in one Redis
# list, so this is per process, not per socket: the library default (100) is far too small.
CHANNEL_LAYER_CAPACITY = env.int("CHANNEL_LAYER_CAPACITY", 5000, min_value=1)
# Seconds an undelivered channel-layer message lives.
CHANNEL_LAYER_EXPIRY = env.int("CHANNEL_LAYER_EXPIRY", 60, min_value=1)
# Redis connections (channel layer and cache). A socket read never times out below the
# channel layer's blocking read (5 s): that closed idle chat sockets with 1011. Dead peers
# are found by TCP keepalive and by a PING before a connection idle this long is reused.
REDIS_SOCKET_TIMEOUT = env.float("REDIS_SOCKET_TIMEOUT", 30, min_value=6)
REDIS_CONNECT_TIMEOUT = env.float("REDIS_CONNECT_TIMEOUT", 5, min_value=0.1)
REDIS_HEALTH_CHECK_SECONDS = env.int("REDIS_HEALTH_CHECK_SECONDS", 15, min_value=0)
# Connections per process and event loop; callers beyond it wait (up to the socket timeout)
# instead of failing: 1,000 sockets closing at once must not lose their audit events.
REDIS_MAX_CONNECTIONS = env.int("REDIS_MAX_CONNECTIONS", 50, min_value=2)
REDIS_CONNECTION_OPTIONS: dict[str, Any] = {
    "socket_timeout": REDIS_SOCKET_TIMEOUT,
    "socket_connect_timeout": REDIS_CONNECT_TIMEOUT,
    "socket_keepalive": True,
    "health_check_interval": REDIS_HEALTH_CHECK_SECONDS,
    "retry_on_timeout": True,
}
# The connection pools of the channel layer and of the cache: bounded, and waited for.
REDIS_POOL_OPTIONS: dict[str, Any] = {
    "max_connections": REDIS_MAX_CONNECTIONS,
    "timeout": REDIS_SOCKET_TIMEOUT,
    **REDIS_CONNECTION_OPTIONS,
}

if REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "enterprise_ai.channel_layers.RedisChannelLayer",
            "CONFIG": {
                "hosts": [{"address": REDIS_URL, **REDIS_POOL_OPTIONS}],
                "prefix": f"{REDIS_KEY_PREFIX}:asgi",
                "capacity": CHANNEL_LAYER_CAPACITY,
                "expiry": CHANNEL_LAYER_EXPIRY,
            },
        }
    }
    CACHES = {
        "default": {
            "BACKEND": "observability.cache.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": REDIS_KEY_PREFIX,
            "OPTIONS": {"pool_class": "redis.BlockingConnectionPool", **REDIS_POOL_OPTIONS},
        }
    }
else:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "enterprise_ai.channel_layers.ThreadSafeInMemoryChannelLayer",
            "CONFIG": {"capacity": CHANNEL_LAYER_CAPACITY, "expiry": CHANNEL_LAYER_EXPIRY},
        }
    }
    CACHES = {"default": {"BACKEND": "observability.cache.LocMemCache"}}

# "celery" enqueues to workers; "thread" runs the same task in this process.
TASK_DISPATCH = "celery" if CELERY_BROKER_URL else "thread"
# Upper bound on replies generated at once by the in-process dispatcher. A reply mostly
# waits on the model's network stream, so threads, not cores, bound it.
THREAD_DISPATCH_WORKERS = env.int("THREAD_DISPATCH_WORKERS", 200, min_value=1)

CELERY_BROKER_URL = CELERY_BROKER_URL or "memory://"
if CELERY_BROKER_URL.startswith(("redis://", "rediss://")):
    # kombu's Redis transport, surviving a Redis restart while a reply is being generated.
    CELERY_BROKER_TRANSPORT = "enterprise_ai.broker:Transport"
CELERY_TASK_IGNORE_RESULT = True
# A reply task is acknowledged only when it has finished, so a worker that dies mid-reply
# hands it to another worker; the task's claim on the message keeps it from running twice.
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_DEFAULT_QUEUE = "default"
CELERY_TASK_ROUTES = {"conversations.tasks.generate_reply": {"queue": "llm"}}
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_WORKER_HIJACK_ROOT_LOGGER = False

# --- Health and readiness (docs/operations.md) ---------------------------------------------

# Seconds each /readyz check (database, Redis, broker, workers) may take before it is failed.
READINESS_CHECK_TIMEOUT_SECONDS = env.float("READINESS_CHECK_TIMEOUT_SECONDS", 2, min_value=0.1)
# /readyz needs a live Celery worker on the production path; false for web processes that
# should take traffic even with every worker gone.
READINESS_REQUIRE_WORKERS = env.bool("READINESS_REQUIRE_WORKERS", True)
# Each Celery worker refreshes a Redis key this often; a worker whose key is older than the
# TTL (SIGKILL, OOM, a lost machine) no longer counts as alive.
WORKER_HEARTBEAT_SECONDS = env.float("WORKER_HEARTBEAT_SECONDS", 10, min_value=0.1)
WORKER_HEARTBEAT_TTL_SECONDS = env.float("WORKER_HEARTBEAT_TTL_SECONDS", 30, min_value=1)
if WORKER_HEARTBEAT_TTL_SECONDS <= WORKER_HEARTBEAT_SECONDS:
    raise ImproperlyConfigured(
        "WORKER_HEARTBEAT_TTL_SECONDS must be longer than WORKER_HEARTBEAT_SECONDS (three "
        "times as long lets a worker miss two beats)."
    )

# --- Users and login ----------------------------------------------------------------------

AUTH_USER_MODEL = "accounts.User"
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "login"

PASSWORD_HASHERS = [
    "django.contrib.auth.hashers.Argon2PasswordHasher",
    "django.contrib.auth.hashers.PBKDF2PasswordHasher",
    "django.contrib.auth.hashers.PBKDF2SHA1PasswordHasher",
    "django.contrib.auth.hashers.ScryptPasswordHasher",
]
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {
        "NAME": "django.contrib.auth.password_validation.MinimumLengthValidator",
        "OPTIONS": {"min_length": 12},
    },
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

AUTHENTICATION_BACKENDS = [
    # Axes first: it refuses a locked-out user before the password is even checked.
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AXES_FAILURE_LIMIT = env.int("AXES_FAILURE_LIMIT", 5, min_value=1)
AXES_COOLOFF_TIME = env.float("AXES_COOLOFF_MINUTES", 15, min_value=0) / 60  # hours


def _axes_lockout_parameters(value: str) -> list[str | list[str]]:
    """ "username+ip_address,ip_address" -> [["username", "ip_address"], "ip_address"]."""
    allowed = {"username", "ip_address", "user_agent"}
    parameters: list[str | list[str]] = []
    for entry in (part.strip() for part in value.split(",")):
        names = [name.strip() for name in entry.split("+")]
        if not entry or not set(names) <= allowed:
            raise ImproperlyConfigured(
                "AXES_LOCKOUT_PARAMETERS must be comma-separated entries of username, "
                f"ip_address or user_agent joined by '+', not {value!r}."
            )
        parameters.append(names if len(names) > 1 else names[0])
    return parameters


# What a lockout applies to. Default: one username from one address, so a stranger cannot
# lock a colleague out from elsewhere; guessing across many usernames from one address is
# slowed by LOGIN_RATE_LIMIT_PER_MINUTE instead (docs/security.md, "Lockout").
AXES_LOCKOUT_PARAMETERS = _axes_lockout_parameters(
    env.str("AXES_LOCKOUT_PARAMETERS", "username+ip_address")
)
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_CALLABLE = "accounts.views.lockout_response"
AXES_VERBOSE = False
# Axes, the audit trail and the login rate limit agree on who the client is.
AXES_CLIENT_IP_CALLABLE = "enterprise_ai.client_ip.client_ip"
# POSTs to the login page per client IP address per minute, on top of axes' per-account
# lockout: it slows down guessing across many usernames from one address.
LOGIN_RATE_LIMIT_PER_MINUTE = env.int("LOGIN_RATE_LIMIT_PER_MINUTE", 20, min_value=1)

# Server-side sessions that know their user, so all of a person's sessions can be ended.
SESSION_ENGINE = "accounts.session_store"
# A session ends after this long without a request or chat frame (accounts/middleware.py)...
SESSION_IDLE_TIMEOUT_SECONDS = env.int("SESSION_IDLE_TIMEOUT_SECONDS", 30 * 60, min_value=60)
# ...and this long after sign-in however active it is (SESSION_COOKIE_AGE: the older name).
SESSION_ABSOLUTE_LIFETIME_SECONDS = env.int(
    "SESSION_ABSOLUTE_LIFETIME_SECONDS", env.int("SESSION_COOKIE_AGE", 8 * 3600), min_value=300
)
if SESSION_IDLE_TIMEOUT_SECONDS > SESSION_ABSOLUTE_LIFETIME_SECONDS:
    raise ImproperlyConfigured(
        "SESSION_IDLE_TIMEOUT_SECONDS must not exceed SESSION_ABSOLUTE_LIFETIME_SECONDS."
    )
# The cookie and the stored session outlive the absolute limit (each save renews them), so
# the limit is always enforced, and explained, by the middleware rather than by a lost cookie.
SESSION_COOKIE_AGE = SESSION_ABSOLUTE_LIFETIME_SECONDS
SESSION_COOKIE_SECURE = env.bool("SECURE_COOKIES", not EMBEDDED)
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
if SESSION_COOKIE_SECURE:
    # The __Host- prefix makes browsers accept the cookie only when it is Secure, for this
    # exact host and path /: a sibling subdomain cannot plant or overwrite it (session
    # fixation, CSRF token injection). Browsers refuse such cookies over plain HTTP, hence
    # only with secure cookies.
    SESSION_COOKIE_NAME = "__Host-sessionid"
    CSRF_COOKIE_NAME = "__Host-csrftoken"
SESSION_COOKIE_HTTPONLY = True
# Lax, not Strict: Strict would drop the session on every link into the app from mail or
# another site (people would land on the login page while signed in). Lax still keeps the
# cookie off cross-site POSTs, frames and WebSocket handshakes; CSRF tokens and the
# socket's Origin check do the rest.
SESSION_COOKIE_SAMESITE = "Lax"
CSRF_COOKIE_HTTPONLY = True

# --- HTTPS and security headers (docs/security.md) ----------------------------------------

# How many reverse proxies stand in front of the app (0: clients connect to it directly).
# Each must append the address it received the request from to X-Forwarded-For, and the
# outermost must terminate TLS and set X-Forwarded-Proto. Never set it without such
# proxies: clients could then choose the IP address they are logged and limited under, and
# claim to be on HTTPS.
TRUSTED_PROXY_COUNT = env.int("TRUSTED_PROXY_COUNT", 0, min_value=0)
if TRUSTED_PROXY_COUNT:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", not EMBEDDED)
# Probes and scrapers use plain HTTP (they are answered before the redirect anyway).
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$", r"^metrics$"]
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", 0 if EMBEDDED else 31_536_000, min_value=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", True)
# Preloading is a commitment for the whole domain that takes months to undo: opt in.
SECURE_HSTS_PRELOAD = env.bool("SECURE_HSTS_PRELOAD", False)
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
SECURE_CROSS_ORIGIN_OPENER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
# `check --deploy` asks for preload (security.W021); it is a deliberate opt-in here.
SILENCED_SYSTEM_CHECKS = [] if SECURE_HSTS_PRELOAD else ["security.W021"]

# No inline script or style anywhere: templates load static files only. Images only from
# the app itself or data: URLs, so an image a model writes into a reply never loads (and
# cannot carry the conversation to another server in its URL).
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": [SELF],
        "script-src": [SELF],
        "style-src": [SELF],
        "img-src": [SELF, "data:"],
        "font-src": [SELF],
        "connect-src": [SELF],  # plus the page's own ws(s):// origin, per request
        "object-src": [NONE],
        "base-uri": [NONE],
        "frame-ancestors": [NONE],
        "form-action": [SELF],
    },
}

# --- Chat ---------------------------------------------------------------------------------

CHAT_MAX_MESSAGE_CHARS = env.int("CHAT_MAX_MESSAGE_CHARS", 16_000, min_value=1)
# Raw WebSocket text frames over this many bytes are refused before JSON parsing.
CHAT_MAX_FRAME_BYTES = env.int("CHAT_MAX_FRAME_BYTES", 131_072, min_value=1024)
CHAT_TEMPERATURE = env.float("CHAT_TEMPERATURE", 0.7, min_value=0)
CHAT_SYSTEM_PROMPT = env.str(
    "CHAT_SYSTEM_PROMPT",
    "You are a helpful assistant for the staff of a company. Answer in Markdown.",
)
# Custom instructions (the Preferences page, /settings/): each person's own, added to the
# system prompt of their chat replies after the organisation's CHAT_SYSTEM_PROMPT, which takes
# precedence. Chat only: API calls use the organisation's prompt alone. false: not offered
# and not used (saved ones are kept).
CHAT_CUSTOM_INSTRUCTIONS_ENABLED = env.bool("CHAT_CUSTOM_INSTRUCTIONS_ENABLED", True)
CHAT_CUSTOM_INSTRUCTIONS_MAX_CHARS = env.int(
    "CHAT_CUSTOM_INSTRUCTIONS_MAX_CHARS", 2000, min_value=1
)
CHAT_HISTORY_MAX_MESSAGES = env.int("CHAT_HISTORY_MAX_MESSAGES", 40, min_value=1)
CHAT_CONVERSATIONS_PER_PAGE = env.int("CHAT_CONVERSATIONS_PER_PAGE", 50, min_value=1)
# Rate limits per person (0: no limit): messages sent per minute, counted in the cache
# (Redis on the production path), and replies being written at once across conversations.
CHAT_MESSAGES_PER_MINUTE = env.int("CHAT_MESSAGES_PER_MINUTE", 20, min_value=0)
CHAT_MAX_REPLIES_IN_FLIGHT = env.int("CHAT_MAX_REPLIES_IN_FLIGHT", 3, min_value=0)
# Frames of any kind one person may send per minute over all their sockets (0: no limit).
CHAT_FRAMES_PER_MINUTE = env.int("CHAT_FRAMES_PER_MINUTE", 120, min_value=0)
# Searches of one's own conversations per person per minute (0: no limit).
CHAT_SEARCHES_PER_MINUTE = env.int("CHAT_SEARCHES_PER_MINUTE", 60, min_value=0)
# Requests one API key may make per minute, every endpoint counted (0: no limit); a key's
# own `rate_limit_per_minute` replaces it for that key. Messages also count against the
# owner's CHAT_MESSAGES_PER_MINUTE, whichever entry point sends them.
API_KEY_REQUESTS_PER_MINUTE = env.int("API_KEY_REQUESTS_PER_MINUTE", 600, min_value=0)
# Deltas are batched: sent when this many milliseconds passed since the last send...
CHAT_DELTA_FLUSH_MS = env.int("CHAT_DELTA_FLUSH_MS", 50, min_value=0)
# ...or when this many characters are waiting, whichever comes first.
CHAT_DELTA_FLUSH_CHARS = env.int("CHAT_DELTA_FLUSH_CHARS", 512, min_value=1)
# Sends per second one process's replies may make together: with many replies at once the
# flush interval stretches so that their total stays under this (web processes keep up).
CHAT_DELTA_SENDS_PER_SECOND = env.int("CHAT_DELTA_SENDS_PER_SECOND", 1000, min_value=1)
# A reply still "streaming" after this long is considered lost (its worker died).
CHAT_REPLY_MAX_SECONDS = env.int("CHAT_REPLY_MAX_SECONDS", 600, min_value=10)
# Every process generating replies refreshes their heartbeat this often (one query per
# process, whatever the number of replies)...
CHAT_HEARTBEAT_SECONDS = env.float("CHAT_HEARTBEAT_SECONDS", 5, min_value=0.1)
# ...and a streaming reply whose heartbeat is older than this is failed as interrupted by the
# sweeper, which runs this often in every web process, every worker and beat (a thread of
# each: it needs no worker alive, and no broker).
CHAT_HEARTBEAT_TIMEOUT_SECONDS = env.float("CHAT_HEARTBEAT_TIMEOUT_SECONDS", 30, min_value=0.5)
CHAT_SWEEP_SECONDS = env.float("CHAT_SWEEP_SECONDS", 10, min_value=0.1)
# WebSockets (manage.py serve): seconds allowed for the opening handshake; a keepalive ping
# after this many idle seconds; closed when a ping is not answered within the timeout.
WEBSOCKET_CONNECT_TIMEOUT_SECONDS = env.int("WEBSOCKET_CONNECT_TIMEOUT_SECONDS", 30, min_value=1)
WEBSOCKET_PING_SECONDS = env.int("WEBSOCKET_PING_SECONDS", 20, min_value=1)
WEBSOCKET_PING_TIMEOUT_SECONDS = env.int("WEBSOCKET_PING_TIMEOUT_SECONDS", 30, min_value=1)
# Threads a web process runs the chat sockets' database work on (sends, stops, snapshots,
# session checks, audit events), each with a pooled connection while it runs.
CHAT_DB_THREADS = env.int("CHAT_DB_THREADS", 16, min_value=1)
# How often a generating process looks for stop requests (one Redis round trip per process).
CHAT_STOP_POLL_MS = env.int("CHAT_STOP_POLL_MS", 200, min_value=10)
if CHAT_HEARTBEAT_TIMEOUT_SECONDS <= CHAT_HEARTBEAT_SECONDS:
    raise ImproperlyConfigured(
        "CHAT_HEARTBEAT_TIMEOUT_SECONDS must be longer than CHAT_HEARTBEAT_SECONDS."
    )

# --- Models -------------------------------------------------------------------------------

DEMO_FIRST_TOKEN_DELAY_MS = env.int("DEMO_FIRST_TOKEN_DELAY_MS", 400, min_value=0)
DEMO_TOKENS_PER_SECOND = env.float("DEMO_TOKENS_PER_SECOND", 30, min_value=0.1)

# The model catalogue itself is in the database (providers.AIModel, managed in the admin).

# --- Providers (docs/providers.md) -------------------------------------------------------

# AWS Bedrock. Credentials come only from the standard AWS chain (environment, profile,
# instance or task role); never from the catalogue or the UI.
BEDROCK_REGION = env.str("BEDROCK_REGION") or env.str("AWS_REGION") or env.str("AWS_DEFAULT_REGION")
BEDROCK_ENDPOINT_URL = env.str("BEDROCK_ENDPOINT_URL")  # a VPC endpoint; empty: AWS's default
# HTTP connections one process keeps to Bedrock: at least the replies it streams at once.
BEDROCK_MAX_POOL_CONNECTIONS = env.int("BEDROCK_MAX_POOL_CONNECTIONS", 200, min_value=1)

# OpenAI (Responses + Conversations). OPENAI_DRIVER=azure-openai sends `openai` models to
# Azure OpenAI instead, as the original design did.
OPENAI_API_KEY = env.str("OPENAI_API_KEY")
OPENAI_BASE_URL = env.str("OPENAI_BASE_URL")  # empty: the SDK's default
OPENAI_ORGANIZATION = env.str("OPENAI_ORGANIZATION")
OPENAI_DRIVER = env.str("OPENAI_DRIVER", "openai")
if OPENAI_DRIVER not in {"openai", "azure-openai"}:
    raise ImproperlyConfigured("OPENAI_DRIVER must be openai or azure-openai.")

# Azure OpenAI: the catalogue's provider model id is the deployment name.
AZURE_OPENAI_ENDPOINT = env.str("AZURE_OPENAI_ENDPOINT")
AZURE_OPENAI_API_KEY = env.str("AZURE_OPENAI_API_KEY")
AZURE_OPENAI_API_VERSION = env.str("AZURE_OPENAI_API_VERSION", "2025-04-01-preview")

# Any OpenAI-compatible Chat Completions server (vLLM, Ollama, LM Studio, LiteLLM). A
# catalogue model may name its own base URL in its options.
OPENAI_COMPATIBLE_BASE_URL = env.str("OPENAI_COMPATIBLE_BASE_URL")
OPENAI_COMPATIBLE_API_KEY = env.str("OPENAI_COMPATIBLE_API_KEY")

# Tools (tools/). search_internet is offered to models only when both are set.
GOOGLE_SEARCH_API_KEY = env.str("GOOGLE_SEARCH_API_KEY")
GOOGLE_SEARCH_ENGINE_ID = env.str("GOOGLE_SEARCH_ENGINE_ID")
GOOGLE_SEARCH_ENDPOINT = env.str(
    "GOOGLE_SEARCH_ENDPOINT", "https://www.googleapis.com/customsearch/v1"
)
GOOGLE_SEARCH_MAX_RESULTS = env.int("GOOGLE_SEARCH_MAX_RESULTS", 5, min_value=1)
GOOGLE_SEARCH_TIMEOUT_SECONDS = env.float("GOOGLE_SEARCH_TIMEOUT_SECONDS", 10, min_value=0.1)
# list_my_conversations and read_conversation: the model may recall the user's own chats.
TOOLS_READ_CONVERSATION_ENABLED = env.bool("TOOLS_READ_CONVERSATION_ENABLED", True)
# A reply may go back and forth with tools at most this many times.
CHAT_MAX_TOOL_ROUNDS = env.int("CHAT_MAX_TOOL_ROUNDS", 4, min_value=0)

# Resilience around every provider call (providers/resilience.py).
PROVIDER_CONNECT_TIMEOUT_SECONDS = env.float("PROVIDER_CONNECT_TIMEOUT_SECONDS", 5, min_value=0.1)
PROVIDER_FIRST_TOKEN_TIMEOUT_SECONDS = env.float(
    "PROVIDER_FIRST_TOKEN_TIMEOUT_SECONDS", 60, min_value=0.1
)
# A model may pause mid-reply for half a minute or more (thinking, a tool running).
PROVIDER_IDLE_TIMEOUT_SECONDS = env.float("PROVIDER_IDLE_TIMEOUT_SECONDS", 60, min_value=0.1)
PROVIDER_TOTAL_TIMEOUT_SECONDS = env.float("PROVIDER_TOTAL_TIMEOUT_SECONDS", 300, min_value=1)
PROVIDER_MAX_ATTEMPTS = env.int("PROVIDER_MAX_ATTEMPTS", 3, min_value=1)
PROVIDER_RETRY_BASE_SECONDS = env.float("PROVIDER_RETRY_BASE_SECONDS", 0.5, min_value=0)
PROVIDER_RETRY_MAX_SECONDS = env.float("PROVIDER_RETRY_MAX_SECONDS", 20, min_value=0)
CIRCUIT_FAILURE_THRESHOLD = env.int("CIRCUIT_FAILURE_THRESHOLD", 5, min_value=1)
CIRCUIT_RESET_SECONDS = env.float("CIRCUIT_RESET_SECONDS", 30, min_value=0.1)

# --- Audit trail (docs/audit.md) ------------------------------------------------------------


# Signs audit checkpoints. Kept out of the database on purpose: whoever can rewrite the
# audit table must not also be able to forge checkpoints.
if env.is_set("AUDIT_HMAC_KEY"):
    AUDIT_HMAC_KEY = env.str("AUDIT_HMAC_KEY")
elif EMBEDDED:
    AUDIT_HMAC_KEY = _embedded_key("audit_hmac_key", 48)  # beside the database, never in it
else:
    raise ImproperlyConfigured(
        "AUDIT_HMAC_KEY (or AUDIT_HMAC_KEY_FILE) is required when DATABASE_URL, REDIS_URL or "
        "CELERY_BROKER_URL is set. Generate one with: "
        "python -c 'import secrets; print(secrets.token_urlsafe(48))'"
    )
if len(AUDIT_HMAC_KEY) < 32:
    raise ImproperlyConfigured("AUDIT_HMAC_KEY must be at least 32 characters long.")
# Retired keys, still accepted when verifying checkpoints they signed (comma-separated).
AUDIT_HMAC_PREVIOUS_KEYS = env.list("AUDIT_HMAC_PREVIOUS_KEYS")
AUDIT_CHECKPOINT_INTERVAL_SECONDS = env.int("AUDIT_CHECKPOINT_INTERVAL_SECONDS", 300, min_value=10)
# Scheduled verification of the chain (docs/audit.md): incremental (from the last verified
# point) this often, a full walk from event #1 this often. The console banner and the
# alert rules call a verification late past two of its intervals.
AUDIT_VERIFY_INTERVAL_SECONDS = env.int("AUDIT_VERIFY_INTERVAL_SECONDS", 900, min_value=60)
AUDIT_VERIFY_FULL_INTERVAL_SECONDS = env.int(
    "AUDIT_VERIFY_FULL_INTERVAL_SECONDS", 86_400, min_value=600
)
# Optional outside anchor: checkpoints copied to an S3 bucket with Object Lock enabled.
AUDIT_ANCHOR_S3_BUCKET = env.str("AUDIT_ANCHOR_S3_BUCKET")
AUDIT_ANCHOR_S3_PREFIX = env.str("AUDIT_ANCHOR_S3_PREFIX", "audit-checkpoints/")
AUDIT_ANCHOR_S3_REGION = env.str("AUDIT_ANCHOR_S3_REGION") or env.str("AWS_REGION")
AUDIT_ANCHOR_S3_ENDPOINT_URL = env.str("AUDIT_ANCHOR_S3_ENDPOINT_URL")
AUDIT_ANCHOR_RETENTION_DAYS = env.int("AUDIT_ANCHOR_RETENTION_DAYS", 2557, min_value=1)
AUDIT_ANCHOR_LOCK_MODE = env.str("AUDIT_ANCHOR_LOCK_MODE", "COMPLIANCE")
if AUDIT_ANCHOR_LOCK_MODE not in {"COMPLIANCE", "GOVERNANCE"}:
    raise ImproperlyConfigured("AUDIT_ANCHOR_LOCK_MODE must be COMPLIANCE or GOVERNANCE.")
# --- Retention (docs/data-protection.md, "Retention") ----------------------------------------

# How often retention runs (Celery beat, or `manage.py serve` embedded), how many
# conversations one batch (one transaction) and one run handle at most, and the longest
# per-conversation expiry the REST API accepts (`retention_days`).
RETENTION_INTERVAL_SECONDS = env.int("RETENTION_INTERVAL_SECONDS", 3600, min_value=60)
RETENTION_BATCH_SIZE = env.int("RETENTION_BATCH_SIZE", 200, min_value=1)
RETENTION_MAX_PER_RUN = env.int("RETENTION_MAX_PER_RUN", 10000, min_value=1)
if RETENTION_MAX_PER_RUN < RETENTION_BATCH_SIZE:
    raise ImproperlyConfigured("RETENTION_MAX_PER_RUN must be at least RETENTION_BATCH_SIZE.")
RETENTION_API_MAX_DAYS = env.int("RETENTION_API_MAX_DAYS", 3650, min_value=1)
if RETENTION_API_MAX_DAYS > 36500:
    raise ImproperlyConfigured("RETENTION_API_MAX_DAYS must be at most 36500 (a hundred years).")

# Keep a proxy's X-Request-ID (only behind a proxy that sets or strips it).
AUDIT_TRUST_REQUEST_ID_HEADER = env.bool("AUDIT_TRUST_REQUEST_ID_HEADER", False)
# Denied events (refusals) written per action and person, or address when anonymous, per
# minute; past it, one event says further ones go unrecorded that minute (0: no cap).
AUDIT_DENIALS_PER_MINUTE = env.int("AUDIT_DENIALS_PER_MINUTE", 60, min_value=0)
# Seal the actor's IP address with their e-mail under their audit key (audit/personal.py), so
# erasure removes it too. The console then finds addresses of anonymous events only; false
# keeps addresses searchable for everyone and erasure leaves them (docs/data-protection.md).
AUDIT_SEAL_IP = env.bool("AUDIT_SEAL_IP", True)
# Rows the audit list counts before it says "more than N" instead of counting them all.
AUDIT_LIST_COUNT_LIMIT = env.int("AUDIT_LIST_COUNT_LIMIT", 10_000, min_value=100)
# How audit_record writes (docs/audit.md, "Write path"): "deferred" records the event in
# the change's transaction without the chain lock and links it into the chain right after
# the commit (concurrent writers commit side by side); "direct" chains it in the change's
# transaction under the lock (writers serialise on commit); "auto": deferred on PostgreSQL,
# direct elsewhere (SQLite has a single writer anyway).
AUDIT_WRITE_PATH = env.str("AUDIT_WRITE_PATH", "auto").lower()
if AUDIT_WRITE_PATH not in {"auto", "direct", "deferred"}:
    raise ImproperlyConfigured("AUDIT_WRITE_PATH must be auto, direct or deferred.")
# How often the scheduler chains deferred events that nobody chained after their commit
# (a writer killed between its commit and the chainer); normally there are none.
AUDIT_CHAIN_SWEEP_SECONDS = env.int("AUDIT_CHAIN_SWEEP_SECONDS", 10, min_value=1)

# --- Encryption at rest (docs/data-protection.md) --------------------------------------------

# The current master key (key-encryption key). AWS KMS when ENCRYPTION_KMS_KEY_ID is set (key
# id, ARN or alias; credentials from the standard AWS chain); otherwise a local 256-bit key,
# written as base64 or 64 hex digits (ENCRYPTION_MASTER_KEY, or ENCRYPTION_MASTER_KEY_FILE).
# The embedded default creates `.local/encryption_master_key` (0600) on first use; the
# production path with neither derives one from AUDIT_HMAC_KEY (below).
ENCRYPTION_KMS_KEY_ID = env.str("ENCRYPTION_KMS_KEY_ID")
ENCRYPTION_KMS_REGION = env.str("ENCRYPTION_KMS_REGION") or env.str("AWS_REGION")
ENCRYPTION_KMS_ENDPOINT_URL = env.str("ENCRYPTION_KMS_ENDPOINT_URL")
ENCRYPTION_MASTER_KEY = env.str("ENCRYPTION_MASTER_KEY")
# Retired local master keys, still read (comma-separated; also *_FILE) until
# `manage.py rotate_encryption_keys` has re-wrapped every data key away from them.
ENCRYPTION_PREVIOUS_MASTER_KEYS = env.list("ENCRYPTION_PREVIOUS_MASTER_KEYS")


def _check_master_keys() -> None:
    from protection.keyfile import decode_master_key

    named = [("ENCRYPTION_MASTER_KEY", ENCRYPTION_MASTER_KEY)] if ENCRYPTION_MASTER_KEY else []
    named += [("ENCRYPTION_PREVIOUS_MASTER_KEYS", key) for key in ENCRYPTION_PREVIOUS_MASTER_KEYS]
    for name, written in named:
        try:
            decode_master_key(written)
        except ValueError as exc:
            raise ImproperlyConfigured(
                f"{name} must be a 256-bit key in base64 or 64 hex digits ({exc}). Generate "
                "one with: python -c 'import base64,os; "
                "print(base64.urlsafe_b64encode(os.urandom(32)).decode())'"
            ) from None


def _derived_master_key(audit_key: str) -> str:
    """A local master key derived from an audit key (HMAC-SHA256 under a label of its own),
    written as URL-safe base64: the production path's fallback when neither KMS nor a master
    key is configured, so every process that shares AUDIT_HMAC_KEY shares it too."""
    import base64
    import hashlib
    import hmac

    raw = hmac.new(
        audit_key.encode("utf-8"), b"enterprise-ai/encryption-master-key/v1", hashlib.sha256
    ).digest()
    return base64.urlsafe_b64encode(raw).decode("ascii")


_check_master_keys()
# True when the master key is derived from AUDIT_HMAC_KEY (logged as a warning at start-up).
ENCRYPTION_MASTER_KEY_DERIVED = False
if ENCRYPTION_KMS_KEY_ID or ENCRYPTION_MASTER_KEY:
    ENCRYPTION_MASTER_KEY_LOCAL_FILE = ""
elif EMBEDDED:
    ENCRYPTION_MASTER_KEY_LOCAL_FILE = str(LOCAL_DIR / "encryption_master_key")
else:
    # The production path with neither: the master key is derived from AUDIT_HMAC_KEY, which
    # it already requires and which every process shares (one secret to provision); retired
    # audit keys give the retired master keys, so rotating AUDIT_HMAC_KEY keeps transcripts
    # readable until `rotate_encryption_keys` has run. Whoever holds the audit key can then
    # also read transcripts: set ENCRYPTION_MASTER_KEY or ENCRYPTION_KMS_KEY_ID to keep the
    # two apart (docs/data-protection.md, "Keys and KMS").
    ENCRYPTION_MASTER_KEY_LOCAL_FILE = ""
    ENCRYPTION_MASTER_KEY = _derived_master_key(AUDIT_HMAC_KEY)
    ENCRYPTION_PREVIOUS_MASTER_KEYS = [
        *ENCRYPTION_PREVIOUS_MASTER_KEYS,
        *(_derived_master_key(key) for key in AUDIT_HMAC_PREVIOUS_KEYS if key),
    ]
    ENCRYPTION_MASTER_KEY_DERIVED = True
# Unwrapped data keys kept in each process's memory (entries, seconds): a page of messages
# costs one unwrap per data key, and a retired master key stops working within the TTL.
ENCRYPTION_KEY_CACHE_SIZE = env.int("ENCRYPTION_KEY_CACHE_SIZE", 1000, min_value=0)
ENCRYPTION_KEY_CACHE_SECONDS = env.int("ENCRYPTION_KEY_CACHE_SECONDS", 300, min_value=0)

# --- Costs and budgets (docs/costs.md) -------------------------------------------------------

# The ledger's one currency: prices and budgets are in it.
COSTS_CURRENCY = env.str("COSTS_CURRENCY", "USD").upper()
if len(COSTS_CURRENCY) != 3 or not COSTS_CURRENCY.isalpha():
    raise ImproperlyConfigured("COSTS_CURRENCY must be a three-letter currency code.")
# Budget periods (days, weeks from Monday, months) are calendar periods in this time zone.
COSTS_TIME_ZONE = env.str("COSTS_TIME_ZONE") or env.str("TIME_ZONE", "UTC")
# A single call whose maximum cost exceeds this is refused (0: no per-call limit).
try:
    COSTS_MAX_REQUEST_COST = Decimal(env.str("COSTS_MAX_REQUEST_COST", "0"))
except InvalidOperation:
    raise ImproperlyConfigured("COSTS_MAX_REQUEST_COST must be an amount, e.g. 2.50.") from None
# A reservation not settled this long after its reply's deadline is released.
COSTS_RESERVATION_GRACE_SECONDS = env.int("COSTS_RESERVATION_GRACE_SECONDS", 300, min_value=0)

CELERY_BEAT_SCHEDULE = {
    "audit-checkpoint": {
        "task": "audit.tasks.audit_checkpoint",
        "schedule": float(AUDIT_CHECKPOINT_INTERVAL_SECONDS),
    },
    "audit-chain-pending": {
        "task": "audit.tasks.audit_chain_pending",
        "schedule": float(AUDIT_CHAIN_SWEEP_SECONDS),
    },
    "audit-verify-incremental": {
        "task": "audit.tasks.audit_verify_incremental",
        "schedule": float(AUDIT_VERIFY_INTERVAL_SECONDS),
    },
    "audit-verify-full": {
        "task": "audit.tasks.audit_verify_full",
        "schedule": float(AUDIT_VERIFY_FULL_INTERVAL_SECONDS),
    },
    "costs-release-expired-reservations": {
        "task": "costs.tasks.release_expired_reservations",
        "schedule": 60.0,
    },
    "accounts-clear-expired-sessions": {
        "task": "accounts.tasks.clear_expired_sessions",
        "schedule": 3600.0,
    },
    "retention-apply": {
        "task": "retention.tasks.apply_retention",
        "schedule": float(RETENTION_INTERVAL_SECONDS),
    },
}

# --- Vulnerability reports (docs/security.md) ------------------------------------------------

# Published in /.well-known/security.txt (RFC 9116), e.g. "mailto:security@example.com" or an
# https:// form; empty: no security.txt is served.
SECURITY_CONTACT = env.str("SECURITY_CONTACT")
if SECURITY_CONTACT and not SECURITY_CONTACT.startswith(("mailto:", "https://", "tel:")):
    raise ImproperlyConfigured("SECURITY_CONTACT must be a mailto:, https:// or tel: URI.")
SECURITY_POLICY_URL = env.str("SECURITY_POLICY_URL")

# --- Static files, i18n -------------------------------------------------------------------

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
# WhiteNoise serves static files. The embedded default serves them straight from the
# source tree; production serves what `manage.py collectstatic` gathered into STATIC_ROOT.
WHITENOISE_USE_FINDERS = EMBEDDED or DEBUG
STATIC_ROOT = (
    None if WHITENOISE_USE_FINDERS else Path(env.str("STATIC_ROOT", str(BASE_DIR / "staticfiles")))
)

LANGUAGE_CODE = "en"
TIME_ZONE = env.str("TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True

# --- Metrics (docs/operations.md) ------------------------------------------------------------

# /metrics is not public: a scrape must present `Authorization: Bearer <METRICS_TOKEN>` or come
# from an address in METRICS_ALLOWED_IPS (addresses or networks; the direct peer, never a
# forwarded header). With neither set, only loopback may scrape.
METRICS_TOKEN = env.str("METRICS_TOKEN")
METRICS_ALLOWED_IPS = env.list("METRICS_ALLOWED_IPS", ["127.0.0.1/32", "::1/128"])
for _network in METRICS_ALLOWED_IPS:
    try:
        ipaddress.ip_network(_network, strict=False)
    except ValueError:
        raise ImproperlyConfigured(
            f"METRICS_ALLOWED_IPS: {_network!r} is not an address or network (e.g. 10.0.0.0/8)."
        ) from None
# A Celery worker on a host without a web process serves its own metrics on this port
# (same access rules); 0: off. See docs/operations.md.
WORKER_METRICS_PORT = env.int("WORKER_METRICS_PORT", 0, min_value=0)
if WORKER_METRICS_PORT > 65535:
    raise ImproperlyConfigured("WORKER_METRICS_PORT must be a TCP port (1-65535), or 0.")
# Several processes on one host (daphne web processes, Celery workers with several pool
# processes) share their metrics through files in this directory (prometheus_client's
# multiprocess mode); one scrape of any web process then reports them all. It must be empty
# when the first process starts and writable by all (docs/operations.md). Unset: each process
# reports only its own metrics (right for the embedded default: one process).
PROMETHEUS_MULTIPROC_DIR = env.str("PROMETHEUS_MULTIPROC_DIR")
if PROMETHEUS_MULTIPROC_DIR:
    # prometheus_client reads the variable when it is first imported, which is after this.
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = PROMETHEUS_MULTIPROC_DIR
    Path(PROMETHEUS_MULTIPROC_DIR).mkdir(parents=True, exist_ok=True)
# django-prometheus: latency buckets (seconds) of HTTP requests.
PROMETHEUS_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
PROMETHEUS_METRIC_NAMESPACE = ""

# --- Logging (docs/operations.md, "Logs") ------------------------------------------------------

LOG_LEVEL = env.str("LOG_LEVEL", "INFO").upper()
# JSON lines for a log pipeline on the production path; plain text in the embedded default.
LOG_FORMAT = env.str("LOG_FORMAT", "plain" if EMBEDDED else "json").lower()
if LOG_FORMAT not in {"json", "plain"}:
    raise ImproperlyConfigured(f"LOG_FORMAT must be json or plain, not {LOG_FORMAT!r}.")
# A rotating log file besides stderr: on by default in the embedded default only (on the
# production path the process manager or the container runtime keeps stderr).
LOG_FILE = env.str("LOG_FILE", str(LOCAL_DIR / "logs" / "enterprise-ai.log") if EMBEDDED else "")
LOG_FILE_MAX_BYTES = env.int("LOG_FILE_MAX_BYTES", 10 * 1024 * 1024, min_value=1024)
LOG_FILE_BACKUP_COUNT = env.int("LOG_FILE_BACKUP_COUNT", 5, min_value=1)
_log_handlers = ["console"]
_log_filters = ["context", "secrets"]  # every handler: ids on each line, credentials masked
# Configures LOGGING and routes Python's warnings through it (enterprise_ai/logging.py).
LOGGING_CONFIG = "enterprise_ai.logging.configure"
LOGGING: dict[str, Any] = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {
        "context": {"()": "enterprise_ai.logging.LogContextFilter"},
        "secrets": {"()": "enterprise_ai.logging.SecretsFilter"},
    },
    "formatters": {
        # Tracebacks can carry request data and secrets: both formatters leave them out.
        "plain": {
            "()": "enterprise_ai.logging.NoTracebackFormatter",
            "format": "%(asctime)s %(levelname)s %(name)s %(log_context)s%(message)s",
        },
        "json": {"()": "enterprise_ai.logging.JsonFormatter"},
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": LOG_FORMAT,
            "filters": _log_filters,
        },
    },
    "root": {"handlers": _log_handlers, "level": LOG_LEVEL},
    "loggers": {
        "django": {"handlers": _log_handlers, "level": LOG_LEVEL, "propagate": False},
    },
}
if LOG_FILE:
    Path(LOG_FILE).parent.mkdir(parents=True, exist_ok=True)
    LOGGING["handlers"]["file"] = {
        "class": "logging.handlers.RotatingFileHandler",
        "filename": LOG_FILE,
        "maxBytes": LOG_FILE_MAX_BYTES,
        "backupCount": LOG_FILE_BACKUP_COUNT,
        "encoding": "utf-8",
        "delay": True,
        "formatter": LOG_FORMAT,
        "filters": _log_filters,
    }
    _log_handlers.append("file")
# Celery workers log through these handlers too: CELERY_WORKER_HIJACK_ROOT_LOGGER (above).
