"""Shared fixtures: three people (owner, colleague, outsider), a fast demo model, sockets.

Services: tests that need PostgreSQL, Redis or chromium skip with the reason when it is
missing, except under CI=true, where the run fails instead.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlparse

import pytest
from django.conf import settings

IN_CI = os.environ.get("CI", "").lower() == "true"


def service_missing(reason: str) -> None:
    """Skip the test for a missing service, or fail it under CI=true."""
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: a missing service is a failure)", pytrace=False)
    pytest.skip(reason)


def reachable(url: str, default_port: int) -> bool:
    parsed = urlparse(url)
    try:
        socket.create_connection(
            (parsed.hostname or "127.0.0.1", parsed.port or default_port), 2
        ).close()
    except OSError:
        return False
    return True


def production_problem() -> str | None:
    """Why the production-path tests cannot run here, or None when they can."""
    engine = settings.DATABASES["default"]["ENGINE"]
    if "postgresql" not in engine:
        return (
            "production tests need DATABASE_URL pointing at PostgreSQL (run `make test-production`)"
        )
    if settings.TASK_DISPATCH != "celery":
        return "production tests need REDIS_URL for the Celery broker and channel layer"
    db = settings.DATABASES["default"]
    if not reachable(f"postgres://{db.get('HOST') or '127.0.0.1'}:{db.get('PORT') or 5432}", 5432):
        return f"PostgreSQL is not reachable at {db.get('HOST')}:{db.get('PORT')}"
    if not reachable(settings.REDIS_URL, 6379):
        return f"Redis is not reachable at {settings.REDIS_URL}"
    return None


def pytest_configure(config: pytest.Config) -> None:
    # Tests connect to PostgreSQL as its superuser; the role check of the serving processes
    # (enterprise_ai/db_role.py), which in-process Celery test workers also run, would refuse
    # it. tests/production/test_database_roles.py proves the check with the documented roles.
    settings.DATABASE_PRIVILEGED_ROLE = "allow"


@pytest.hookimpl(trylast=True)  # after `-m` has deselected what this run does not include
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    production = [item for item in items if item.get_closest_marker("production")]
    if not production:
        return
    problem = production_problem()
    if problem is None:
        return
    if IN_CI:
        pytest.exit(f"CI=true and {problem}", returncode=1)
    for item in production:
        item.add_marker(pytest.mark.skip(reason=problem))


@pytest.fixture(autouse=True)
def _fresh_local_cache() -> None:
    """Each test starts with an empty in-memory cache: rate-limit counters (the login form
    allows LOGIN_RATE_LIMIT_PER_MINUTE posts per address) do not carry from test to test.
    A shared Redis is left alone: clearing it would flush the channel layer and broker."""
    from django.core.cache import caches
    from django.core.cache.backends.locmem import LocMemCache

    if isinstance(caches["default"], LocMemCache):
        caches["default"].clear()


@pytest.fixture(autouse=True)
def _fresh_data_keys() -> None:
    """Each test starts with no data key in memory: the database a previous test committed
    this month's data key to is gone, so a key it cached must not seal this test's values.
    The same holds for people's audit keys (cached by user id, and ids are reused after a
    test's rollback) and the keyring's unwrapped keys."""
    from audit import personal
    from protection import datakeys, keyring

    datakeys.clear_cache()
    personal.forget()
    keyring.clear_cache()


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup: None, django_db_blocker: Any) -> Iterator[None]:
    """The test database as pytest-django makes it; before it is dropped, the connection
    pool (production settings) closes every connection, also those other threads (socket
    database threads, the reply monitor) last used, so the drop finds no session on it.
    The audit chainer's flush at exit is cancelled too: by then the database is gone."""
    yield
    from django.db import connections

    from audit.services import chainer_stop

    chainer_stop()

    for connection in connections.all(initialized_only=True):
        close_pool = getattr(connection, "close_pool", None)  # PostgreSQL with a pool
        if close_pool is not None and getattr(connection, "pool", None) is not None:
            with django_db_blocker.unblock():
                close_pool()


# --- People -----------------------------------------------------------------------------------

PASSWORD = "correct horse battery staple"


def _make_user(username: str) -> Any:
    from accounts.models import User

    return User.objects.create_user(
        username=username, email=f"{username}@example.com", password=PASSWORD
    )


@pytest.fixture
def owner(db: None) -> Any:
    return _make_user("alice")


@pytest.fixture
def colleague(db: None) -> Any:
    return _make_user("bob")


@pytest.fixture
def outsider(db: None) -> Any:
    return _make_user("charlie")


def _make_role_member(username: str, role: str) -> Any:
    from django.contrib.auth.models import Group

    from audit.governed import governed_writes

    user = _make_user(username)
    with governed_writes(reason="test fixture"):  # set-up, not an event under test
        user.groups.add(Group.objects.get(name=role))
    return user


@pytest.fixture
def compliance_officer(db: None) -> Any:
    """dana, in the Compliance officer role (accounts/roles.py)."""
    return _make_role_member("dana", "Compliance officer")


@pytest.fixture
def administrator(db: None) -> Any:
    """erin, in the Administrator role (accounts/roles.py)."""
    return _make_role_member("erin", "Administrator")


@pytest.fixture
def staff_member(db: None) -> Any:
    """frank, in the Staff role: chats, no console."""
    return _make_role_member("frank", "Staff")


# --- The demo model ---------------------------------------------------------------------------


def set_demo_speed(settings: Any, *, first_token_delay_ms: int, tokens_per_second: float) -> None:
    settings.DEMO_FIRST_TOKEN_DELAY_MS = first_token_delay_ms
    settings.DEMO_TOKENS_PER_SECOND = tokens_per_second


@pytest.fixture
def fast_demo(settings: Any) -> None:
    set_demo_speed(settings, first_token_delay_ms=0, tokens_per_second=500)


@pytest.fixture
def slow_demo(settings: Any) -> None:
    set_demo_speed(settings, first_token_delay_ms=0, tokens_per_second=15)


# --- Sockets ----------------------------------------------------------------------------------


@pytest.fixture
def session_cookie() -> Iterator[Any]:
    """session_cookie(user) -> the Cookie header value of a logged-in session for `user`."""
    from tests.support import signed_in

    def make(user: Any) -> str:
        return signed_in(user)[1]

    yield make


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Keep each phase's report on the test item, so fixtures can react to a failure."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


@pytest.fixture(autouse=True)
def _seeded_catalogue(request: pytest.FixtureRequest) -> None:
    """Keep the migration-seeded demo model and role groups for every test with a database.

    Transactional tests empty the tables afterwards, data migrations' rows included.
    """
    marker = request.node.get_closest_marker("django_db")
    names = set(request.fixturenames)
    if marker is None and not names & {"db", "transactional_db"}:
        return
    transactional = "transactional_db" in names or bool(marker and marker.kwargs.get("transaction"))
    request.getfixturevalue("transactional_db" if transactional else "db")
    from django.apps import apps
    from django.contrib.auth.models import Group

    from accounts.roles import ROLES, roles_sync
    from providers.models import AIModel

    if Group.objects.filter(name__in=ROLES).count() != len(ROLES):
        roles_sync(apps)
    AIModel.objects.get_or_create(
        key="demo",
        defaults={
            "display_name": "Demo model (offline)",
            "provider": "demo",
            "provider_model_id": "demo-1",
            "is_default": True,
            "position": 1000,
            "available_to_everyone": True,
        },
    )


@pytest.fixture
def google(settings: Any) -> Iterator[Any]:
    """The Google Custom Search double on loopback, with search_internet pointed at it."""
    from providers.testing.google_search import GoogleSearchDouble

    with GoogleSearchDouble() as double:
        settings.GOOGLE_SEARCH_API_KEY = double.api_key
        settings.GOOGLE_SEARCH_ENGINE_ID = double.engine_id
        settings.GOOGLE_SEARCH_ENDPOINT = double.endpoint
        yield double


@pytest.fixture(scope="session", autouse=True)
def _flush_past_the_audit_truncate_trigger() -> None:
    """Between transactional tests pytest-django empties every table with one TRUNCATE, which
    the audit tables refuse on PostgreSQL (audit/0007). The test database's superuser turns
    triggers off for that one transaction (`session_replication_role = replica`, which only a
    superuser may set: the same power that could drop the trigger), so the refusal stays in
    force for everything else the tests do."""
    from django.db.backends.postgresql.operations import DatabaseOperations

    original = DatabaseOperations.execute_sql_flush

    def execute_sql_flush(self: DatabaseOperations, sql_list: list[str]) -> None:
        original(self, ["SET LOCAL session_replication_role = replica", *sql_list])

    DatabaseOperations.execute_sql_flush = execute_sql_flush  # type: ignore[method-assign,assignment]


# --- AWS doubles (moto's server on loopback; real boto3 clients talk HTTP to it) ------------


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """moto's server on a free loopback port, every AWS service it emulates (KMS, S3);
    yields its endpoint URL. Tests keep apart by creating their own keys and buckets."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Dummy AWS credentials and region, and nothing from the machine's own AWS setup."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
