"""The quick path an operator takes — one superuser DATABASE_URL for `migrate`, the web server
and the worker — never serves with a superuser's rights (DATABASE_PRIVILEGED_ROLE=demote, the
default): `migrate` creates the application role, and every connection of the serving
processes runs as it. With `refuse` the superuser is refused; with `demote` and no usable
application role too.

Every piece is a real process against PostgreSQL and Redis (tests/production/processes.py).
How the serving processes' own connections are seen: a trigger (added by the test, as the
superuser) on the audit table records `current_user` and `session_user` of every statement
that appends an event — the web server's sign-in and message, the worker's completed reply.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
from psycopg import sql

from tests.production.processes import (
    BIN,
    ROOT,
    ChatSocket,
    Database,
    Stack,
    base_env,
    own_services,
    sign_in,
    wait_until,
)

pytestmark = [pytest.mark.production, pytest.mark.timeout(300)]

PASSWORD = "Demote-Test-Passw0rd-2026!"
REFUSAL = re.compile(r'Refusing to start .*docs/audit\.md, "Database roles".*DATABASE_PRIVILEGED')
SERVE = [str(BIN / "python"), "manage.py", "serve", "--host", "127.0.0.1", "--port", "1"]
WORKER = [str(BIN / "celery"), "-A", "enterprise_ai", "worker", "--pool", "threads"]

# Who appends audit events: the role the statement runs as, and the login of the session.
PROBE = """
CREATE TABLE eai_role_probe (action text, who text, login text);
GRANT INSERT ON eai_role_probe TO PUBLIC;
CREATE FUNCTION eai_role_probe() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO eai_role_probe VALUES (NEW.action, current_user, session_user);
  RETURN NULL;
END $$;
CREATE TRIGGER eai_role_probe AFTER INSERT ON audit_auditevent
  FOR EACH ROW EXECUTE FUNCTION eai_role_probe();
"""

# Run in a process of the serving settings, through the function the web server, the worker
# and beat call before they serve: which role its connections run as, and what it may do.
IN_PROCESS = """
import json
from django.db import connection
from enterprise_ai import db_role
db_role.role_check(process="the test's process")
out = {}
import os, psycopg
for attempt in range(3):  # a connection given back and taken again, or opened afresh
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_user, session_user, pg_backend_pid()")
        who, login, pid = cursor.fetchone()
        out.setdefault("roles", []).append([who, login])
    connection.close()
    if attempt == 1:  # its server connection dies (a failover): the next one is a new one
        with psycopg.connect(os.environ["DATABASE_URL"], autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        out["killed"] = pid
    out.setdefault("pids", []).append(pid)
for name, statement in (
    ("truncate", "TRUNCATE audit_auditevent CASCADE"),
    ("update", "UPDATE audit_auditevent SET action = 'forged'"),
    ("delete", "DELETE FROM audit_auditevent"),
    ("disable_trigger", "ALTER TABLE audit_auditevent DISABLE TRIGGER ALL"),
):
    try:
        with connection.cursor() as cursor:
            cursor.execute(statement)
        out[name] = "done"
    except Exception as exc:
        out[name] = type(exc).__name__ + ": " + str(exc).splitlines()[0]
    connection.close()
print("RESULT " + json.dumps(out))
"""


class Site:
    def __init__(self, database: Database, stack: Stack, app_role: str) -> None:
        self.database, self.stack, self.app_role = database, stack, app_role
        self.migrated = ""

    def sql(self, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self.database._connect() as conn:
            cursor = conn.execute(query.encode() if not params else query, params or None)
            return cursor.fetchall() if cursor.description else []

    def run(self, argv: list[str], **extra_env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            argv,
            cwd=ROOT,
            env={**self.stack.env, **extra_env},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )


def _drop_role(database: Database, role: str) -> None:
    with database._connect("postgres") as admin:
        admin.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    tmp = tmp_path_factory.mktemp("demotion")
    app_role = f"eai_e_app_{secrets.token_hex(3)}"
    server: Database | None = None
    try:
        with own_services("eai_e_demote") as (database, redis):
            server = database
            env = base_env(
                database_url=database.url,  # PostgreSQL's superuser, as the quick path uses
                redis_url=redis.url,
                key_prefix=f"eai-e-{secrets.token_hex(2)}",
                data_dir=tmp / "data",
                DATABASE_APP_ROLE=app_role,
            )
            del env["DATABASE_PRIVILEGED_ROLE"]  # the default, as an operator leaves it
            with Stack(tmp / "stack", env) as stack:
                result = Site(database, stack, app_role)
                result.migrated = stack.manage("migrate", "--noinput")
                result.sql(PROBE)
                stack.manage(
                    "shell",
                    "-c",
                    "from accounts.models import User; User.objects.create_user("
                    f"username='demoted', email='demoted@example.com', password={PASSWORD!r})",
                )
                yield result
    finally:
        if server is not None:  # the database is gone: the role holds nothing any more
            _drop_role(server, app_role)


def test_migrate_as_a_superuser_creates_the_app_role_with_the_documented_grants(
    site: Site,
) -> None:
    assert f'Database role "{site.app_role}"' in site.migrated
    assert "created" in site.migrated
    [(login, superuser, createrole)] = site.sql(
        "SELECT rolcanlogin, rolsuper, rolcreaterole FROM pg_roles WHERE rolname = %s",
        (site.app_role,),
    )
    assert (login, superuser, createrole) == (False, False, False)
    privileges = dict(
        site.sql(
            "SELECT t, array_agg(p ORDER BY p) FROM unnest(%s::text[]) AS t, "
            "unnest(ARRAY['SELECT','INSERT','UPDATE','DELETE','TRUNCATE']) AS p "
            "WHERE has_table_privilege(%s, t, p) GROUP BY t",
            (
                [
                    "audit_auditevent",
                    "audit_auditcheckpoint",
                    "audit_auditanchor",
                    "audit_pendingauditevent",
                    "audit_subjectkey",
                    "conversations_message",
                    "django_migrations",
                ],
                site.app_role,
            ),
        )
    )
    assert privileges == {
        "audit_auditevent": ["INSERT", "SELECT"],
        "audit_auditcheckpoint": ["INSERT", "SELECT"],
        "audit_auditanchor": ["INSERT", "SELECT"],
        # The chainer's delete of what it has chained; erasure's destruction of a key.
        "audit_pendingauditevent": ["DELETE", "INSERT", "SELECT"],
        "audit_subjectkey": ["INSERT", "SELECT", "UPDATE"],
        "conversations_message": ["DELETE", "INSERT", "SELECT", "UPDATE"],
        "django_migrations": ["SELECT"],
    }
    owned = site.sql(
        "SELECT count(*) FROM pg_class WHERE relowner = "
        "(SELECT oid FROM pg_roles WHERE rolname = %s)",
        (site.app_role,),
    )
    assert owned == [(0,)]

    # Every migrate grants again: a table that lost them (as a new one would lack them) has them.
    site.sql(f"REVOKE ALL ON conversations_message FROM {site.app_role}")
    again = site.stack.manage("migrate", "--noinput")
    assert "created" not in again.split(f'"{site.app_role}"', 1)[-1].splitlines()[0]
    [(may_update,)] = site.sql(
        "SELECT has_table_privilege(%s, 'conversations_message', 'UPDATE')", (site.app_role,)
    )
    assert may_update is True


def test_a_superuser_started_web_server_and_worker_serve_as_the_app_role(site: Site) -> None:
    stack = site.stack
    web = stack.start_web()
    worker = stack.start_worker(concurrency=2, wait=False)
    stack.wait_ready(worker)
    for process in (web, worker):
        process.wait_for_log(rf"runs as the database role {site.app_role} \(SET ROLE\)", timeout=5)

    async def chat_turn() -> list[dict[str, Any]]:
        cookie = sign_in(web.base_url, "demoted", PASSWORD)
        async with await ChatSocket.connect(web.base_url, cookie) as chat:
            await chat.send({"type": "send", "conversation": None, "text": "Hi", "model": "demo"})
            accepted = await chat.until(lambda f: f["type"] in {"accepted", "error"}, timeout=20)
            assert accepted[-1]["type"] == "accepted", accepted[-1]
            reply = accepted[-1]["message"]
            return await chat.until(
                lambda f: f.get("message") == reply and f["type"] in {"done", "error"}, timeout=60
            )

    frames = asyncio.run(chat_turn())
    assert frames[-1]["type"] == "done", frames[-1]

    # The events the web server (sign-in, message) and the worker (reply) appended: each
    # written by a session that logged in as the superuser and ran as the app role.
    # (Chained by each process's chainer thread just after the commit: wait for it.)
    wanted = {"auth.login", "message.sent", "reply.completed"}

    def probed() -> list[tuple[Any, ...]] | None:
        rows = site.sql(
            "SELECT action, who, login FROM eai_role_probe "
            "WHERE action IN ('auth.login', 'message.sent', 'reply.completed')"
        )
        return rows if {row[0] for row in rows} >= wanted else None

    served = wait_until(probed, timeout=15, what="the turn's audit events chained")
    assert {action for action, _, _ in served} == {"auth.login", "message.sent", "reply.completed"}
    assert {(who, login) for _, who, login in served} == {(site.app_role, "postgres")}


@pytest.mark.parametrize("pool", ["true", "false"])
def test_a_demoted_process_cannot_truncate_or_rewrite_audit_rows(site: Site, pool: str) -> None:
    result = site.run(
        [str(BIN / "python"), "manage.py", "shell", "-c", IN_PROCESS], DATABASE_POOL=pool
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    [line] = [x for x in result.stdout.splitlines() if x.startswith("RESULT ")]
    out = json.loads(line.removeprefix("RESULT "))
    assert out["roles"] == [[site.app_role, "postgres"]] * 3
    assert out["pids"][2] != out["killed"]  # the third ran on a connection opened afresh
    for name in ("truncate", "update", "delete", "disable_trigger"):
        assert out[name].startswith("ProgrammingError: "), out
    assert "permission denied" in out["truncate"] and "permission denied" in out["update"]
    assert "must be owner" in out["disable_trigger"]
    [(events,)] = site.sql("SELECT count(*) FROM audit_auditevent WHERE action = 'forged'")
    assert events == 0


def _refused(site: Site, **extra_env: str) -> list[str]:
    outputs = []
    for argv in (SERVE, WORKER):
        result = site.run(argv, **extra_env)
        output = result.stdout + result.stderr
        assert result.returncode != 0, output[-2000:]
        assert REFUSAL.search(output), output[-2000:]
        assert "Traceback" not in output, output[-2000:]
        outputs.append(output)
    return outputs


def test_refuse_refuses_the_superuser(site: Site) -> None:
    for output in _refused(site, DATABASE_PRIVILEGED_ROLE="refuse"):
        assert 'the database role "postgres" is a superuser' in output, output[-2000:]


def test_demote_without_the_app_role_refuses(site: Site) -> None:
    missing = f"eai_e_missing_{secrets.token_hex(3)}"
    for output in _refused(site, DATABASE_APP_ROLE=missing):
        assert f'the application role "{missing}"' in output, output[-2000:]
        assert "that role does not exist" in output, output[-2000:]


def test_demote_to_a_role_without_the_grants_refuses(site: Site) -> None:
    bare = f"eai_e_bare_{secrets.token_hex(3)}"
    site.sql(f"CREATE ROLE {bare} NOLOGIN")
    try:
        for output in _refused(site, DATABASE_APP_ROLE=bare):
            assert "it lacks the application's grants on" in output, output[-2000:]
    finally:
        _drop_role(site.database, bare)


def test_an_app_role_holding_truncate_is_refused_as_the_demoted_role(site: Site) -> None:
    site.sql(f"GRANT TRUNCATE ON audit_auditcheckpoint TO {site.app_role}")
    try:
        for output in _refused(site):
            assert f'"{site.app_role}" may TRUNCATE audit_auditcheckpoint too' in output
    finally:
        site.sql(f"REVOKE TRUNCATE ON audit_auditcheckpoint FROM {site.app_role}")


def test_an_owner_with_createrole_migrates_and_then_serves_demoted(
    site: Site, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Not a superuser: `migrate` creates the role and makes the owner a member, so that the
    owner's own web server may assume it."""
    suffix = secrets.token_hex(3)
    owner, app, name = f"eai_e_owner_{suffix}", f"eai_e_capp_{suffix}", f"eai_e_cr_{suffix}"
    server = site.database
    with server._connect("postgres") as admin:
        admin.execute(
            sql.SQL("CREATE ROLE {} LOGIN CREATEROLE PASSWORD 'owner-password'").format(
                sql.Identifier(owner)
            )
        )
        admin.execute(
            sql.SQL("CREATE DATABASE {} OWNER {}").format(
                sql.Identifier(name), sql.Identifier(owner)
            )
        )
    try:
        url = f"postgres://{owner}:owner-password@{server.host}:{server.port}/{name}"
        env = {**site.stack.env, "DATABASE_URL": url, "DATABASE_APP_ROLE": app}
        with Stack(tmp_path_factory.mktemp("createrole"), env) as stack:
            migrated = stack.manage("migrate", "--noinput")
            assert f'Database role "{app}" (NOLOGIN' in migrated and "created" in migrated
            script = (
                "from django.db import connection; from enterprise_ai import db_role; "
                "db_role.role_check(process='the test'); c = connection.cursor(); "
                "c.execute('SELECT current_user, session_user'); print('ROLES', *c.fetchone())"
            )
            out = stack.manage("shell", "-c", script)
            assert f"ROLES {app} {owner}" in out, out[-2000:]
            web = stack.start_web()
            web.wait_for_log(rf"runs as the database role {app} \(SET ROLE\)", timeout=5)
    finally:
        with server._connect("postgres") as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
            for role in (app, owner):
                admin.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))
